#!/usr/bin/env bash
# A real single-node SLURM cluster on localhost, for tests and CI (tests/test_slurm.py).
#
#   scripts/slurm/cluster.sh install            apt-get the Debian packages when missing
#   scripts/slurm/cluster.sh start STATE_DIR    start munged, mariadbd, slurmdbd, slurmctld,
#                                               slurmd; print the SLURM_CONF to export
#                                               (and put STATE_DIR/bin first in PATH)
#   scripts/slurm/cluster.sh stop STATE_DIR     stop exactly the daemons `start` started
#
# Everything (configs, keys, databases, spool, logs, sockets, pid files) lives in
# STATE_DIR, which must be world-traversable (the munge user reads its key there):
# nothing under /etc, /run or /var is touched, and ports are picked free at start, so
# two clusters (two test runs) can live side by side. Needs root (Debian packages
# slurmctld slurmd slurm-client munge slurmdbd mariadb-server; no systemd needed).
#
# The node is this host (`hostname -s`) at 127.0.0.1 with the CPUs and memory that
# `slurmd -C` reports, plus two simulated GPUs (type "fake", device files that are
# /dev/null), so a job that asks for a GPU is scheduled as a GPU job (SLURM sets
# CUDA_VISIBLE_DEVICES and refuses requests for more GPUs than exist). Accounting runs
# through slurmdbd + MariaDB: the Snakemake SLURM executor asks sacct for job states
# and, with accounting_storage/none, would wait forever. Account "ci" holds user root.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
BINARIES=(slurmctld slurmd slurmdbd sbatch sacct sacctmgr scancel munged mariadbd mariadb-install-db)
# stop order: reverse of start order
DAEMONS_STOP=(slurmd slurmctld slurmdbd mariadbd munged)

die() { echo "cluster.sh: $*" >&2; exit 1; }

missing_binaries() {
  local b out=()
  for b in "${BINARIES[@]}"; do
    command -v "$b" >/dev/null 2>&1 || [ -x "/usr/sbin/$b" ] || out+=("$b")
  done
  echo "${out[*]}"
}

cmd_install() {
  export PATH="$PATH:/usr/sbin:/sbin"
  [ -z "$(missing_binaries)" ] && return 0
  [ "$(id -u)" = 0 ] || die "not root: cannot install ${PACKAGES[*]}"
  command -v apt-get >/dev/null || die "no apt-get: cannot install ${PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Package lists may be missing or stale on a fresh machine: update only if needed.
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}"; } \
    || die "apt-get install ${PACKAGES[*]} failed"
  local m
  m=$(missing_binaries)
  [ -z "$m" ] || die "still missing after install: $m"
}

free_port() {
  "${PYTHON:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "cluster.sh: timed out waiting for $what" >&2; return 1; }
    sleep 0.3
  done
}

show_logs() {
  local f
  for f in "$S"/log/*.log; do
    [ -f "$f" ] && { echo "---- $f"; tail -n 25 "$f"; } >&2
  done
  return 0
}

cmd_start() {
  S=$1
  export PATH="$PATH:/usr/sbin:/sbin"
  [ "$(id -u)" = 0 ] || die "must run as root"
  local m
  m=$(missing_binaries)
  [ -z "$m" ] || die "missing binaries: $m (run: $0 install)"
  mkdir -p "$S"
  S=$(cd "$S" && pwd)
  chmod 755 "$S"
  local d=$S
  while [ "$d" != / ]; do  # munged (as user munge) must reach its key
    runuser -u munge -- test -x "$d" || die "$d is not traversable by user munge; use a state dir under /tmp"
    d=$(dirname "$d")
  done
  mkdir -p "$S"/{etc,munge,db,run,log,spool/ctld,spool/d,dev}
  local host cpu_line mem_mb p_db p_dbd p_ctld p_d
  host=$(hostname -s)
  cpu_line=$(slurmd -C | head -1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ RealMemory=.*//')
  mem_mb=$(slurmd -C | head -1 | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  p_db=$(free_port); p_dbd=$(free_port); p_ctld=$(free_port); p_d=$(free_port)

  # munge: own key, socket and pid file; runs as the munge user
  dd if=/dev/urandom of="$S/munge/munge.key" bs=1024 count=1 status=none
  chown -R munge:munge "$S/munge"
  chmod 755 "$S/munge"  # the socket directory must be searchable by all
  chmod 400 "$S/munge/munge.key"
  runuser -u munge -- munged --socket="$S/munge/munge.sock" --key-file="$S/munge/munge.key" \
    --pid-file="$S/munge/munged.pid" --log-file="$S/munge/munged.log" \
    --seed-file="$S/munge/munged.seed" \
    || { cat "$S/munge/munged.log" >&2 2>/dev/null; die "munged did not start"; }
  ln -sf "$S/munge/munged.pid" "$S/run/munged.pid"
  ln -sf "$S/munge/munged.log" "$S/log/munged.log"
  wait_for 20 munged test -S "$S/munge/munge.sock" || { show_logs; exit 1; }

  # MariaDB for slurmdbd: TCP on a free loopback port, no grant tables (a throwaway DB)
  mariadb-install-db --no-defaults --user=root --datadir="$S/db" --skip-test-db \
    --auth-root-authentication-method=normal >"$S/log/mariadb-install.log" 2>&1 \
    || { show_logs; die "mariadb-install-db failed"; }
  setsid mariadbd --no-defaults --user=root --datadir="$S/db" --socket="$S/run/mariadb.sock" \
    --port="$p_db" --bind-address=127.0.0.1 --pid-file="$S/run/mariadbd.pid" \
    --log-error="$S/log/mariadb.log" --skip-grant-tables --skip-name-resolve \
    --innodb-buffer-pool-size=32M --skip-log-bin </dev/null >/dev/null 2>&1 &
  wait_for 60 mariadbd mariadb-admin --no-defaults --protocol=tcp -h 127.0.0.1 -P "$p_db" ping \
    || { show_logs; exit 1; }

  cat >"$S/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.sock
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$p_dbd
SlurmUser=root
PidFile=$S/run/slurmdbd.pid
LogFile=$S/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$p_db
StorageUser=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$S/etc/slurmdbd.conf"

  cat >"$S/etc/slurm.conf" <<EOF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$p_ctld
SlurmdPort=$p_d
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$S/munge/munge.sock
StateSaveLocation=$S/spool/ctld
SlurmdSpoolDir=$S/spool/d
SlurmctldPidFile=$S/run/slurmctld.pid
SlurmdPidFile=$S/run/slurmd.pid
SlurmctldLogFile=$S/log/slurmctld.log
SlurmdLogFile=$S/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MinJobAge=600
ReturnToService=2
SchedulerType=sched/backfill
MpiDefault=none
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$p_dbd
# for accounting_storage/slurmdbd this names the munge socket for talking to slurmdbd
AccountingStoragePass=$S/munge/munge.sock
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 $cpu_line RealMemory=$mem_mb Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  # two simulated GPUs: character devices 1:3 (what /dev/null is)
  rm -f "$S/dev/gpu0" "$S/dev/gpu1"
  mknod "$S/dev/gpu0" c 1 3
  mknod "$S/dev/gpu1" c 1 3
  echo "Name=gpu Type=fake File=$S/dev/gpu[0-1]" >"$S/etc/gres.conf"

  # The SLURM executor runs each job's command through a nested `srun` with every
  # SLURM_* variable but the job's identity removed, SLURM_CONF included; on a real
  # cluster srun then reads /etc/slurm/slurm.conf. Here an `srun` first in PATH puts
  # this cluster's config back (callers prepend $S/bin to PATH).
  mkdir -p "$S/bin"
  printf '#!/bin/sh\nexport SLURM_CONF=%s\nexec %s "$@"\n' "$S/etc/slurm.conf" "$(command -v srun)" >"$S/bin/srun"
  chmod 755 "$S/bin/srun"

  export SLURM_CONF=$S/etc/slurm.conf
  slurmdbd || { show_logs; die "slurmdbd did not start"; }
  wait_for 60 slurmdbd sacctmgr -n list cluster || { show_logs; exit 1; }
  sacctmgr -i add cluster ci >/dev/null
  sacctmgr -i add account ci Description=ci Organization=ci >/dev/null
  sacctmgr -i add user root Account=ci DefaultAccount=ci >/dev/null
  slurmctld || { show_logs; die "slurmctld did not start"; }
  wait_for 60 slurmctld scontrol ping || { show_logs; exit 1; }
  slurmd -N "$host" || { show_logs; die "slurmd did not start"; }
  wait_for 60 "an idle node" sh -c 'sinfo -h -o %t | grep -qx idle' || { sinfo -N -l >&2 || true; show_logs; exit 1; }
  echo "$SLURM_CONF"
}

cmd_stop() {
  S=$1
  export PATH="$PATH:/usr/sbin:/sbin"
  [ -d "$S" ] || return 0
  if [ -f "$S/etc/slurm.conf" ] && [ -f "$S/run/slurmctld.pid" ]; then
    # this cluster's jobs only (its own slurmctld answers)
    SLURM_CONF=$S/etc/slurm.conf timeout 20 scancel --user=root --full >/dev/null 2>&1 || true
  fi
  local name pidfile pid i
  for name in "${DAEMONS_STOP[@]}"; do
    pidfile=$S/run/$name.pid
    [ -e "$pidfile" ] || continue
    pid=$(cat "$pidfile" 2>/dev/null || true)
    [[ "$pid" =~ ^[0-9]+$ ]] || continue
    # only the process we started: its pid file lives in this state dir and the
    # process still runs the daemon's binary
    if [ -r "/proc/$pid/comm" ] && grep -q "${name:0:15}" "/proc/$pid/comm"; then
      kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
      done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
  done
}

case "${1:-}" in
  install) cmd_install ;;
  start) [ $# -eq 2 ] || die "usage: $0 start STATE_DIR"; cmd_start "$2" ;;
  stop) [ $# -eq 2 ] || die "usage: $0 stop STATE_DIR"; cmd_stop "$2" ;;
  *) die "usage: $0 install | start STATE_DIR | stop STATE_DIR" ;;
esac
