"""Running untrusted Python in a sandbox made of bubblewrap (`bwrap`) and rlimits.

Code grading executes text a model wrote. Every execution gets a fresh sandbox, torn
down when it ends; nothing is ever run outside one, and there is no fallback: when
bwrap is missing or cannot start, `Sandbox.check` raises `SandboxUnavailable` with one
message saying why and what to do, before any untrusted code runs.

What a sandboxed program sees and may do (each execution, `bwrap` + the launcher):

    namespaces  new user, mount, PID, network, IPC, UTS and cgroup namespaces
                (`--unshare-all`); no further user namespaces inside
                (`--disable-userns`); no capabilities; a new session (no terminal).
    network     none: its network namespace holds only its own loopback, so nothing
                on the host (a port on 127.0.0.1, an abstract Unix socket) is reachable.
    files       read-only: /usr (with the /bin, /lib, ... links or binds of the host),
                /etc/ld.so.cache and /etc/localtime, and the interpreter's prefix when
                it lives outside /usr. Nothing else of the host: no home directory, no
                checkout, no results/, no /run, /var or /tmp of the host. The root, /dev
                and /proc are the sandbox's own (root and /dev read-only; /proc shows
                only the sandbox's processes). Writable: a private /tmp (a tmpfs of
                `tmp_mb`, the working directory and $HOME) and /dev/shm (1 MiB).
    user        uid/gid 65534 inside. Run as root, the grader starts bwrap as the
                unprivileged user nobody (65534) outside too: a sandbox mapped to the
                host's root would own root's files and escape RLIMIT_NPROC.
    environment cleared; only PATH, HOME, TMPDIR, LANG, PYTHONHASHSEED=0 (so set and
                dict orders repeat between runs) and PYTHONDONTWRITEBYTECODE.
    limits      set by the launcher inside the sandbox before any untrusted code:
                RLIMIT_CPU (`cpu_s` per process; SIGXCPU, then SIGKILL a second later),
                RLIMIT_AS (`memory_mb` per process), RLIMIT_NPROC (`processes`: the
                processes and threads of this sandbox at once, counted per user
                namespace, so concurrent sandboxes do not share the budget; the
                sandbox's own init counts as one), RLIMIT_FSIZE (`tmp_mb`),
                RLIMIT_NOFILE (256), RLIMIT_CORE (0). Measured outside: wall time
                (`timeout_s`, from the start of bwrap) and output (`output_kb` of
                stdout + stderr together): either kills the whole sandbox at once.
    memory      where the grader may create cgroups (root; pipeline/tasks/cgroups.py):
                `memory_mb` + `tmp_mb` for all the sandbox's processes and its tmpfs
                together, and `processes` tasks (pids.max), the kernel OOM-killing
                inside the sandbox beyond it (`Execution.oom_killed`). Elsewhere only
                the rlimits: at most `processes` x `memory_mb` of address space, plus
                `tmp_mb` of tmpfs and 1 MiB of /dev/shm. `describe()` says which.
    ending      when the program's main process exits, is killed or runs out of
                time, every process of the sandbox dies with it: the sandbox's init is
                PID 1 of its PID namespace, and the kernel kills a namespace's every
                process when its PID 1 exits (`--die-with-parent` ties that init to
                the bwrap process the grader kills on a limit).

The launcher (trusted, stdlib only) reads a JSON job from stdin, points stdin at
/dev/null, sets the limits, reports "started" and executes the job's `script` with
`payload` and `report` in its globals. `report(obj)` writes one JSON line to a result
pipe, prefixed by a per-execution random nonce; the grader ignores any line without it,
so a program's own output can never read as a result. (The nonce lives in the
program's process: a program written to find it could forge a result. The sandbox
bounds what a program can do to the machine; it does not make a test suite
ungameable.)

The interpreter (`Sandbox(python=...)`, config `execution.python`) defaults to the
workflow's own base interpreter when the sandbox user can read it, else /usr/bin/python3
(root's interpreters usually live under /root, which nobody cannot read). It runs with
-S (no site-packages: the standard library only), -s and -B.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import select
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.tasks import cgroups

NOBODY = 65534
SHM_BYTES = 1 << 20
NOFILE = 256
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; scripts/install.sh does it "
    "when run as root)"
)


class SandboxUnavailable(RuntimeError):
    """The isolation tool is missing or refuses to start: nothing may run."""


@dataclass(frozen=True)
class Limits:
    """Per-execution limits (config `execution` of a code dataset)."""

    timeout_s: float = 10.0  # wall clock, from the start of bwrap
    cpu_s: int = 5  # CPU seconds per process (RLIMIT_CPU)
    memory_mb: int = 512  # address space per process (RLIMIT_AS)
    processes: int = 8  # processes + threads of the sandbox at once (RLIMIT_NPROC)
    output_kb: int = 1024  # stdout + stderr, together
    tmp_mb: int = 64  # the private /tmp (and the largest file, RLIMIT_FSIZE)

    @classmethod
    def from_config(cls, cfg: dict | None, where: str = "execution") -> "Limits":
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known - {"python", "workers"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(known | {'python', 'workers'})}")
        values = {k: cfg[k] for k in known if k in cfg}
        for k, v in values.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{where}.{k} must be a positive number, got {v!r}")
        limits = cls(**values)
        if limits.processes < 2:
            raise ValueError(f"{where}.processes must be at least 2 (the sandbox's init and the program)")
        return limits

    def rlimits(self) -> dict[str, tuple[int, int]]:
        """The rlimits the launcher sets, by `resource` constant name."""
        cpu = max(1, int(self.cpu_s))
        return {
            "RLIMIT_CPU": (cpu, cpu + 1),
            "RLIMIT_AS": (self.memory_mb << 20, self.memory_mb << 20),
            "RLIMIT_NPROC": (self.processes, self.processes),
            "RLIMIT_FSIZE": (self.tmp_mb << 20, self.tmp_mb << 20),
            "RLIMIT_NOFILE": (NOFILE, NOFILE),
            "RLIMIT_CORE": (0, 0),
        }


@dataclass
class Execution:
    """What one sandboxed run did, as seen from outside."""

    started: bool  # the launcher ran (limits set) before anything else
    returncode: int | None  # bwrap's status: the program's exit code, 128 + n for signal n
    timed_out: bool  # killed at the wall-clock limit
    output_exceeded: bool  # killed for printing more than output_kb
    output: bytes  # the first bytes of stdout + stderr (bwrap's own errors land here too)
    output_bytes: int  # all bytes printed (up to the kill)
    wall_s: float
    messages: list[dict] = field(default_factory=list)  # report() calls, in order
    oom_killed: bool = False  # the kernel killed a process at the sandbox's cgroup memory cap
    peak_bytes: int | None = None  # the sandbox's peak memory (cgroup), when capped

    def killed_by(self) -> str | None:
        """The signal that ended the program (by name), from bwrap's 128 + n status."""
        if self.returncode is None or not 128 < self.returncode < 128 + 65:
            return None
        try:
            return signal.Signals(self.returncode - 128).name
        except ValueError:
            return None


# The launcher: first code to run inside, trusted, standard library only. argv[1] is the
# result pipe's descriptor. The job's nonce is dropped from the job before the script runs.
LAUNCHER = r"""
import json, os, resource, sys
sys.path[:] = [p for p in sys.path if p and p != os.getcwd()]
_fd = int(sys.argv[1])
_job = json.loads(sys.stdin.buffer.read())
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
def report(obj, _w=os.write, _fd=_fd, _nonce=_job.pop("nonce"), _dumps=json.dumps):
    data = (_nonce + " " + _dumps(obj, default=repr) + "\n").encode()
    while data:
        data = data[_w(_fd, data):]
for _name, (_soft, _hard) in _job["rlimits"].items():
    resource.setrlimit(getattr(resource, _name), (_soft, _hard))
report({"event": "started"})
_globals = {"__name__": "__sandbox__", "__builtins__": __builtins__, "report": report, "payload": _job["payload"]}
_script = compile(_job["script"], "<sandbox script>", "exec")
del _job, _name, _soft, _hard
exec(_script, _globals)
try:
    sys.stdout.flush()
    sys.stderr.flush()
finally:
    os._exit(0)
"""


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(f"code grading needs bubblewrap, and `bwrap` is not installed: {INSTALL_HINT}. "
                                 "Model-written code is never run outside a sandbox.")
    return path


def bwrap_version(bwrap: str) -> tuple[int, ...]:
    """`bwrap --version` ("bubblewrap 0.8.0") as a tuple; (0,) when it does not say."""
    try:
        said = subprocess.run([bwrap, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return (0,)
    digits = said.split()[-1].split(".") if said.split() else []
    return tuple(int(d) for d in digits if d.isdigit()) or (0,)


def _readable_by_nobody(path: Path) -> bool:
    """Every directory on the way searchable, the file readable and executable by others."""
    try:
        for parent in list(path.parents)[:-1]:
            if not parent.stat().st_mode & stat.S_IXOTH:
                return False
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & stat.S_IROTH and mode & stat.S_IXOTH)


def choose_python(configured: str | None = None, *, as_root: bool | None = None) -> Path:
    """The interpreter the sandbox runs (module docstring)."""
    as_root = os.geteuid() == 0 if as_root is None else as_root
    if configured:
        candidates = [Path(configured)]
    else:
        base = getattr(sys, "_base_executable", None) or sys.executable
        candidates = [Path(base), Path("/usr/bin/python3"), Path("/usr/local/bin/python3")]
    for c in candidates:
        real = Path(os.path.realpath(c))
        if not real.is_file():
            continue
        if (as_root and _readable_by_nobody(real)) or (not as_root and os.access(real, os.X_OK)):
            return real
    what = configured or " or ".join(map(str, candidates))
    who = "the unprivileged user nobody" if as_root else "this user"
    raise SandboxUnavailable(f"no Python interpreter for the sandbox: {what} is missing or not readable by {who} "
                             "(install python3, or set `execution.python` to an interpreter under /usr or /opt)")


def _prefix(python: Path) -> Path:
    """The installation prefix of an interpreter at PREFIX/bin/pythonX.Y."""
    return python.parent.parent


class Sandbox:
    """Runs Python scripts in fresh bwrap sandboxes under `limits` (module docstring)."""

    def __init__(self, limits: Limits | None = None, *, python: str | None = None) -> None:
        self.limits = limits or Limits()
        self.bwrap = find_bwrap()
        self.version = bwrap_version(self.bwrap)
        if self.version < (0, 6):
            raise SandboxUnavailable(f"bubblewrap {'.'.join(map(str, self.version))} at {self.bwrap} is too old: "
                                     "0.6 or later is needed (--size bounds the sandbox's /tmp)")
        # --disable-userns (0.8+): no nested user namespaces. Without it (0.6, 0.7) a
        # nested namespace stays inside this sandbox's namespaces and under its limits
        # (RLIMIT_NPROC counts every level), but exposes more of the kernel.
        self.disable_userns = self.version >= (0, 8)
        self.as_root = os.geteuid() == 0
        self.python = choose_python(python, as_root=self.as_root)
        self._argv = self._base_argv()
        # whole-sandbox memory and process caps where cgroups can be made (cgroups.py)
        self.slots = cgroups.Slots.create((self.limits.memory_mb + self.limits.tmp_mb) << 20, self.limits.processes)
        if self.slots is not None:
            atexit.register(self.slots.close)

    def close(self) -> None:
        """Remove the sandboxes' cgroups (also done at exit)."""
        if self.slots is not None:
            self.slots.close()

    def _base_argv(self) -> list[str]:
        tmp, shm = self.limits.tmp_mb << 20, SHM_BYTES
        argv = [self.bwrap, "--unshare-all", "--unshare-user", *(["--disable-userns"] if self.disable_userns else []),
                "--die-with-parent", "--new-session", "--cap-drop", "ALL", "--hostname", "sandbox",
                "--uid", str(NOBODY), "--gid", str(NOBODY), "--clearenv"]
        for k, v in (("PATH", "/usr/bin:/bin"), ("HOME", "/tmp"), ("TMPDIR", "/tmp"), ("LANG", "C.UTF-8"),
                     ("PYTHONHASHSEED", "0"), ("PYTHONDONTWRITEBYTECODE", "1")):
            argv += ["--setenv", k, v]
        argv += ["--ro-bind", "/usr", "/usr"]
        # /bin, /lib, ... are links into /usr on merged-/usr systems, directories elsewhere
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                argv += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                argv += ["--ro-bind", top, top]
        for f in ("/etc/ld.so.cache", "/etc/localtime"):
            argv += ["--ro-bind-try", f, f]
        prefix = _prefix(self.python)
        if not (prefix == Path("/usr") or Path("/usr") in prefix.parents):
            argv += ["--ro-bind", str(prefix), str(prefix)]
        argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(shm), "--tmpfs", "/dev/shm",
                 "--size", str(tmp), "--tmpfs", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/",
                 "--chdir", "/tmp"]
        return argv

    def describe(self) -> dict[str, Any]:
        """What graded with this sandbox: tool, interpreter, limits (for provenance)."""
        caps = f"per sandbox ({self.slots.describe()}) and per process" if self.slots else "per process only"
        return {"tool": f"bubblewrap {'.'.join(map(str, self.version))}", "python": str(self.python),
                "as_user": NOBODY if self.as_root else os.geteuid(), "nested_userns": not self.disable_userns,
                "memory_and_process_caps": caps, "limits": asdict(self.limits)}

    def run(self, script: str, payload: Any = None) -> Execution:
        """Execute `script` (Python source, with `payload` and `report` in its globals) in a
        fresh sandbox; never raises for anything the script does."""
        nonce = secrets.token_hex(16)
        job = json.dumps({"nonce": nonce, "rlimits": self.limits.rlimits(), "script": script,
                          "payload": payload}).encode()
        slot = self.slots.acquire() if self.slots is not None else None
        try:
            return self._run(job, nonce, slot)
        finally:
            if slot is not None:
                self.slots.release(slot)

    def _run(self, job: bytes, nonce: str, slot: cgroups.Slot | None) -> Execution:
        read_res, write_res = os.pipe()
        fds = [read_res, write_res]
        gate: list[str] = []
        if slot is not None:  # the sandbox waits on --block-fd until it is in its cgroup
            read_info, write_info = os.pipe()
            read_block, write_block = os.pipe()
            fds += [read_info, write_info, read_block, write_block]
            gate = ["--info-fd", str(write_info), "--block-fd", str(read_block)]
            oom_before = slot.oom_kills()
            slot.reset_peak()
        argv = [*self._argv, *gate, str(self.python), "-B", "-s", "-S", "-c", LAUNCHER, str(write_res)]
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(write_res,) if slot is None else (write_res, write_info, read_block),
                start_new_session=True, env={"PATH": "/usr/bin:/bin"},
                **({"user": NOBODY, "group": NOBODY, "extra_groups": []} if self.as_root else {}),
            )
        except OSError as e:
            for fd in fds:
                os.close(fd)
            return Execution(False, None, False, False, f"could not start bwrap: {e}".encode(), 0, 0.0)
        try:
            os.close(write_res)
            if slot is not None:
                os.close(write_info)
                os.close(read_block)
                failed = self._enter(proc, slot, read_info, write_block, started)
                if failed:
                    self._kill(proc)
                    self._reap(proc)
                    return Execution(False, proc.returncode, False, False, failed.encode(), 0,
                                     time.monotonic() - started)
            ex = self._communicate(proc, job, read_res, nonce, started)
            if slot is not None:
                ex.oom_killed = slot.oom_kills() > oom_before
                ex.peak_bytes = slot.peak()
                for pid in slot.members():  # none: the PID namespace ended with the sandbox
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            return ex
        finally:
            for fd in (read_res, *([read_info, write_block] if slot is not None else [])):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _enter(self, proc: subprocess.Popen, slot: cgroups.Slot, read_info: int, write_block: int,
               started: float) -> str | None:
        """Move the blocked sandbox's init into `slot`, then let it run; a message on failure.
        Without a child PID bwrap failed to start: let _communicate read its error."""
        info = b""
        deadline = started + self.limits.timeout_s
        while (m := re.search(rb'"child-pid":\s*(\d+)', info)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "the sandbox did not report its PID in time"
            if not select.select([read_info], [], [], remaining)[0]:
                continue
            chunk = os.read(read_info, 4096)
            if not chunk:
                return None
            info += chunk
        try:
            slot.enter(int(m.group(1)))
        except OSError as e:
            return f"could not put the sandbox into its cgroup: {e}"
        os.write(write_block, b"1")
        return None

    def _communicate(self, proc: subprocess.Popen, job: bytes, read_res: int, nonce: str,
                     started: float) -> Execution:
        limit = self.limits.output_kb << 10
        keep = min(limit, 8 << 10)
        deadline = started + self.limits.timeout_s
        output, result = bytearray(), bytearray()
        printed = 0
        timed_out = exceeded = False
        stdin, stdout = proc.stdin, proc.stdout
        assert stdin is not None and stdout is not None
        os.set_blocking(stdin.fileno(), False)
        sel = selectors.DefaultSelector()
        sel.register(stdin.fileno(), selectors.EVENT_WRITE, "stdin")
        sel.register(stdout.fileno(), selectors.EVENT_READ, "stdout")
        sel.register(read_res, selectors.EVENT_READ, "result")
        view = memoryview(job)
        try:
            while sel.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                for key, _ in sel.select(remaining):
                    if key.data == "stdin":
                        try:
                            view = view[os.write(key.fd, view[:1 << 16]):]
                        except (BrokenPipeError, BlockingIOError) as e:
                            if isinstance(e, BlockingIOError):
                                continue
                            view = view[len(view):]
                        if not len(view):
                            sel.unregister(key.fd)
                            stdin.close()
                        continue
                    chunk = os.read(key.fd, 1 << 16)
                    if not chunk:
                        sel.unregister(key.fd)
                    elif key.data == "stdout":
                        printed += len(chunk)
                        if len(output) < keep:
                            output += chunk[: keep - len(output)]
                        if printed > limit:
                            exceeded = True
                    elif len(result) < limit:
                        result += chunk
                if exceeded:
                    break
        finally:
            sel.close()
            if not stdin.closed:
                try:
                    stdin.close()
                except OSError:
                    pass
            if timed_out or exceeded or proc.poll() is None:
                self._kill(proc)
            returncode = self._reap(proc)
            stdout.close()
        messages = []
        for line in bytes(result).decode("utf-8", "replace").splitlines():
            head, _, body = line.partition(" ")
            if head == nonce:
                try:
                    messages.append(json.loads(body))
                except json.JSONDecodeError:
                    pass
        is_started = bool(messages) and messages[0].get("event") == "started"
        return Execution(is_started, returncode, timed_out, exceeded, bytes(output), printed,
                         time.monotonic() - started, messages[1:] if is_started else messages)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        """SIGKILL bwrap's process group (bwrap leads it: start_new_session). The sandbox's
        init follows by --die-with-parent, and with it every process of the sandbox."""
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _reap(self, proc: subprocess.Popen) -> int | None:
        # A sandbox whose main program exited ends at once (its PID 1 exits with it);
        # give bwrap a moment to collect it, then kill.
        try:
            return proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            return proc.wait()

    def check(self) -> dict[str, Any]:
        """Start one sandbox and verify it isolates (before any untrusted code runs): a
        read-only system, a private writable /tmp, no network, its own PID namespace,
        not root, the process limit, no host home, neither the grader's working
        directory nor the checkout visible, a cleared environment.

        Raises SandboxUnavailable with bwrap's own message when it cannot start, or
        naming the property that does not hold. Returns `describe()`.
        """
        # the grader's working directory (the run's, holding results/) and the checkout
        # must not be visible (they would be if they lived under /usr, say)
        hidden = sorted({os.getcwd(), str(Path(__file__).resolve().parents[2])} - {"/"})
        ex = self.run(_PROBE, {"processes": self.limits.processes, "hidden": hidden})
        found = next((m for m in ex.messages if m.get("event") == "probe"), None)
        if not ex.started or found is None:
            said = ex.output.decode("utf-8", "replace").strip() or f"exit status {ex.returncode}"
            hint = ""
            if "namespace" in said or "uid map" in said or "Operation not permitted" in said:
                hint = (" (unprivileged user namespaces seem disabled: enable them, e.g. "
                        "`sysctl -w kernel.unprivileged_userns_clone=1`, or on Ubuntu 24.04 allow bwrap "
                        "in AppArmor)")
            raise SandboxUnavailable(f"the code-grading sandbox (bubblewrap, {self.bwrap}) refuses to start: "
                                     f"{said[:600]}{hint}. Model-written code is never run outside a sandbox.")
        failed = [k for k, ok in found["checks"].items() if not ok]
        if failed:
            raise SandboxUnavailable(f"the code-grading sandbox ({self.bwrap}) starts but does not isolate: "
                                     f"{', '.join(failed)} ({found.get('details', '')}). Nothing was run.")
        if self.slots is not None and not ex.peak_bytes:
            # the probe's memory was not charged to its cgroup: the caps would not hold
            self.slots.close()
            self.slots = None
        return self.describe()


# A sandboxed self-test: what must hold before model code runs (Sandbox.check).
_PROBE = r"""
import os, resource, socket
checks, details = {}, []
def cannot_write(path):
    try:
        with open(path, "w") as fh:
            fh.write("x")
    except OSError:
        return True
    details.append("wrote " + path)
    return False
checks["read-only system"] = cannot_write("/usr/.sandbox-probe") and cannot_write("/.sandbox-probe")
try:
    with open("/tmp/probe", "w") as fh:
        fh.write("x")
    checks["private writable /tmp"] = True
except OSError as e:
    checks["private writable /tmp"] = False
    details.append(repr(e))
checks["no network"] = [n for _, n in socket.if_nameindex()] == ["lo"]
checks["own PID namespace"] = os.getpid() < 10 and sorted(int(p) for p in os.listdir("/proc") if p.isdigit())[-1] < 10
checks["not root"] = os.getuid() != 0 and os.geteuid() != 0
checks["process limit"] = resource.getrlimit(resource.RLIMIT_NPROC)[0] == payload["processes"]
checks["no host home"] = not os.path.exists("/root") and not os.path.exists("/home")
seen = [p for p in payload["hidden"] if os.path.exists(p)]
checks["no checkout or results"] = not seen
details += ["visible: " + p for p in seen]
checks["clean environment"] = "PYTHONHASHSEED" in os.environ and len(os.environ) <= 8
report({"event": "probe", "checks": checks, "details": "; ".join(details)})
"""
