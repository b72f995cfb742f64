"""Whole-sandbox caps from cgroups: memory and processes of a sandbox together.

The sandbox's rlimits (pipeline/tasks/sandbox.py) are per process: RLIMIT_AS bounds
each process's address space, so a sandbox's memory is bounded only by `processes` x
`memory_mb`. Where the grader may create cgroups, every sandbox also runs in a cgroup
of its own that caps

    memory      `memory_mb` + `tmp_mb` for all its processes and its tmpfs pages
                together (no swap where the kernel accounts it); beyond it the kernel
                OOM-kills inside that cgroup only, and the run's `oom_killed` says so
    processes   `processes` tasks (pids.max), beside RLIMIT_NPROC

Which cgroups: the cgroup v1 `memory` and `pids` hierarchies (writable by root, as in
this project's containers), else cgroup v2 where the grader's own cgroup delegates the
`memory` and `pids` controllers to children (its cgroup.subtree_control lists both).
Anything else (a non-root user without delegation): no cgroup caps, and the rlimits
alone bound the sandbox (`Sandbox.describe()` says which). The cgroups are children of
the grader's own (so its limits still hold above them), one per concurrent sandbox
(`Slots`), reused once its last sandbox's processes are all gone, and removed by
`close()`.

A sandbox enters its cgroup before it runs anything: bwrap is started with
`--block-fd` (its sandbox waits for a byte) and `--info-fd` (it reports its init's PID);
the grader writes that PID into the slot's cgroup.procs, then releases the block, so
every process of the sandbox is a child of a process already inside.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Slot:
    """One cgroup per hierarchy (v1: memory and pids; v2: one) for one sandbox at a time."""

    dirs: tuple[Path, ...]
    memory: Path  # the directory holding the memory controller's files
    version: int

    def enter(self, pid: int) -> None:
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def oom_kills(self) -> int:
        name, key = ("memory.oom_control", "oom_kill") if self.version == 1 else ("memory.events", "oom_kill")
        for line in (self.memory / name).read_text().splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == key:
                return int(parts[1])
        return 0

    def peak(self) -> int:
        """The most memory the slot's processes held since the last `reset_peak`."""
        f = self.memory / ("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
        return int(f.read_text()) if f.exists() else 0

    def reset_peak(self) -> None:
        if self.version == 1:
            (self.memory / "memory.max_usage_in_bytes").write_text("0")

    def tasks(self) -> int:
        """Tasks still charged to the slot (a sandbox's killed processes take a moment to go)."""
        return int((self.dirs[-1] / "pids.current").read_text())

    def members(self) -> list[int]:
        return [int(p) for d in self.dirs for p in (d / "cgroup.procs").read_text().split()]


def _own_paths() -> dict[str, str]:
    """controller (or "" for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def _bases() -> tuple[int, tuple[Path, ...], Path] | None:
    """(version, parent directories, the one with the memory controller) or None."""
    try:
        own = _own_paths()
    except OSError:
        return None
    if "memory" in own and "pids" in own and (ROOT / "memory").is_dir() and (ROOT / "pids").is_dir():
        mem, pids = ROOT / "memory" / own["memory"].lstrip("/"), ROOT / "pids" / own["pids"].lstrip("/")
        return 1, (mem, pids), mem
    if "" in own and (ROOT / "cgroup.controllers").is_file():
        base = ROOT / own[""].lstrip("/")
        try:
            delegated = set((base / "cgroup.subtree_control").read_text().split())
        except OSError:
            return None
        if {"memory", "pids"} <= delegated:
            return 2, (base,), base
    return None


class Slots:
    """A pool of sandbox cgroups with the caps set; None from `create` where cgroups
    cannot be made (see the module docstring)."""

    def __init__(self, version: int, bases: tuple[Path, ...], memory_base: Path, memory_bytes: int,
                 processes: int) -> None:
        self.version, self.bases, self.memory_base = version, bases, memory_base
        self.memory_bytes, self.processes = memory_bytes, processes
        self._free: list[Slot] = []
        self._made: list[Slot] = []
        self._lock = threading.Lock()

    @classmethod
    def create(cls, memory_bytes: int, processes: int) -> "Slots | None":
        found = _bases()
        if found is None:
            return None
        slots = cls(*found, memory_bytes=memory_bytes, processes=processes)
        try:
            slots.release(slots._make())  # one slot now: fails here, not mid-run
        except OSError:
            slots.close()
            return None
        return slots

    def _make(self) -> Slot:
        with self._lock:
            name = f"sandbox-{os.getpid()}-{len(self._made)}"
            dirs = tuple(b / name for b in self.bases)
            slot = Slot(dirs, self.memory_base / name, self.version)
            self._made.append(slot)
        for d in dirs:
            d.mkdir(exist_ok=True)
        m = slot.memory
        if self.version == 1:
            (m / "memory.limit_in_bytes").write_text(str(self.memory_bytes))
            if (m / "memory.memsw.limit_in_bytes").exists():  # swap accounted: no escape through it
                (m / "memory.memsw.limit_in_bytes").write_text(str(self.memory_bytes))
            (dirs[1] / "pids.max").write_text(str(self.processes))
        else:
            (m / "memory.max").write_text(str(self.memory_bytes))
            if (m / "memory.swap.max").exists():
                (m / "memory.swap.max").write_text("0")
            (m / "pids.max").write_text(str(self.processes))
        return slot

    def acquire(self) -> Slot:
        """A free slot whose last sandbox has fully gone (its killed processes no longer
        count against pids.max), else a new one."""
        with self._lock:
            for i, slot in enumerate(self._free):
                try:
                    drained = slot.tasks() == 0
                except OSError:
                    drained = False
                if drained:
                    return self._free.pop(i)
        return self._make()

    def release(self, slot: Slot) -> None:
        with self._lock:
            self._free.append(slot)

    def close(self) -> None:
        """Remove the cgroups (each empties once its sandbox's processes have gone: wait
        up to 5 s for the last ones)."""
        deadline = time.monotonic() + 5
        for slot in self._made:
            while time.monotonic() < deadline:
                try:
                    if slot.tasks() == 0:
                        break
                except OSError:
                    break
                time.sleep(0.02)
            for d in slot.dirs:
                try:
                    d.rmdir()
                except OSError:
                    pass
        self._made.clear()

    def describe(self) -> str:
        return f"cgroup v{self.version}"
