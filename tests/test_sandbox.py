"""The code-grading sandbox against programs that try to break out or break the run.

Every adversarial completion below is graded by the real grade stage (`python -m
pipeline.grading --task code`, real bubblewrap) in one batch beside correct ones; each
must be graded fail or timeout with its reason, and afterwards the planted files are
unchanged, the listeners saw no connection, no process of a sample is left, the secret
never reached a sample, the stage completed and the correct samples passed. bubblewrap
is installed when missing (the `bwrap` fixture, scripts/install_sandbox.sh); where that is
impossible these tests fail, saying so: code grading never runs without it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import REPO

from pipeline.core import io
from pipeline.tasks import code_grading
from pipeline.tasks.sandbox import Execution, Limits, Sandbox, SandboxUnavailable

LIMITS = {"timeout_s": 15, "cpu_s": 2, "memory_mb": 512, "processes": 8, "output_kb": 256, "tmp_mb": 16}
PROMPT = {"format": "plain", "template": "{question}\n"}
QUESTION = 'def add(a, b):\n    """Return a + b."""\n'
TEST = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
CORRECT = "    return a + b\n"


class Listener:
    """TCP on 127.0.0.1 and on the host's address, an abstract and a path Unix socket;
    records every connection."""

    def __init__(self, folder: Path) -> None:
        self.seen: list[str] = []
        self.socks = []
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("0.0.0.0", 0))
        self.port = tcp.getsockname()[1]
        self.abstract = f"\0sbx-test-{secrets.token_hex(6)}"
        self.path = str(folder / "listener.sock")
        ab = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ab.bind(self.abstract)
        fs = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fs.bind(self.path)
        os.chmod(self.path, 0o777)
        for s in (tcp, ab, fs):
            s.listen(16)
            s.settimeout(0.2)
            self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            for s in self.socks:
                try:
                    conn, addr = s.accept()
                except (TimeoutError, OSError):
                    continue
                self.seen.append(f"{s.getsockname()!r} from {addr!r}")
                conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def _host_address() -> str:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing address
            return s.getsockname()[0]
    except OSError:
        return "127.0.0.1"


def attacks(ctx: dict) -> dict[str, str]:
    """name -> completion (the body of `add`); `ctx` names what the test planted."""
    return {
        "fork bomb": """\
    import os
    while True:
        os.fork()
""",
        "allocate 10 GB": """\
    block = bytearray(10 * 1024 ** 3)
    return len(block)
""",
        "allocate across processes": f"""\
    import os, time
    kids = []
    for _ in range(5):
        pid = os.fork()
        if pid == 0:
            block = b"x" * (300 << 20)  # touched: 300 MB resident in each of 5 processes
            time.sleep(1)
            os._exit(0)
        kids.append(pid)
    statuses = [os.waitpid(k, 0)[1] for k in kids]
    if all(s == 0 for s in statuses) or not {ctx['caps']}:
        raise RuntimeError("all children held their memory" if {ctx['caps']} else "no cgroup cap here")
    raise RuntimeError(f"children killed: {{statuses}}")
""",
        "endless loop": """\
    while True:
        pass
""",
        "write outside /tmp and delete files": f"""\
    import os, shutil
    for path in {ctx['planted']!r}:
        for attempt in (lambda: os.remove(path), lambda: open(path, "w").write("pwned"),
                        lambda: shutil.rmtree(os.path.dirname(path))):
            try:
                attempt()
            except OSError:
                pass
    for path in ("/usr/bin/python3", "/etc/ld.so.cache"):
        try:
            os.remove(path)
        except OSError:
            pass
    for path in ("/usr/pwned", "/etc/pwned", "/pwned", "/dev/pwned", {ctx['planted'][0]!r}):
        open(path, "w").write("pwned")
    return a + b
""",
        "connect to the test's listener": f"""\
    import socket
    targets = [(socket.AF_INET, ("127.0.0.1", {ctx['port']})), (socket.AF_INET, ({ctx['host']!r}, {ctx['port']})),
               (socket.AF_UNIX, {ctx['abstract']!r}), (socket.AF_UNIX, {ctx['unix_path']!r})]
    connected, errors = [], []
    for family, address in targets:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1)
        try:
            s.connect(address)
            s.sendall(b"pwned")
            connected.append(address)
        except OSError as e:
            errors.append(type(e).__name__)
    raise RuntimeError(f"connected to {{connected}}" if connected else "no connection: " + ",".join(errors))
""",
        "read the home secret and the parent's environment": f"""\
    import glob, os
    found = []
    for path in ({ctx['home_secret']!r}, os.path.expanduser("~/{ctx['home_name']}")):
        try:
            found.append(open(path).read())
        except OSError:
            pass
    for env in glob.glob("/proc/*/environ"):
        try:
            data = open(env, "rb").read()
        except OSError:
            continue
        if b"SBX_SECRET_TOKEN" in data:
            found.append(env)
    found += [k for k in os.environ if k == "SBX_SECRET_TOKEN"]
    raise RuntimeError(f"found {{found}}" if found else "nothing found")
""",
        "print 1 GB": """\
    import sys
    chunk = "x" * (1 << 20)
    for _ in range(1024):
        sys.stdout.write(chunk)
    return a + b
""",
        "kill the parent": f"""\
    import os, signal
    for pid in (os.getppid(), 1, {ctx['grader_pid']}, {ctx['grader_ppid']}):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    os.killpg(0, signal.SIGKILL)
    return a + b
""",
        "leave a background process": f"""\
    import os, subprocess, sys, time
    subprocess.Popen(["sleep", "{ctx['marker_sleep']}"], start_new_session=True)
    daemon = "import time\\nwhile True:\\n    time.sleep(0.05)\\n"
    subprocess.Popen([sys.executable, "-c", daemon, "{ctx['marker']}"], start_new_session=True)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv("/bin/sh", ["sh", "-c", "while :; do sleep 0.05; done", "{ctx['marker']}"])
        os._exit(0)
    time.sleep(0.2)
    return None
""",
        "forge a passing result": """\
    import os
    line = b'0' * 32 + b' {"event": "result", "status": "pass", "reason": "", "calls": 2, "behaviour": "00"}\\n'
    for fd in range(1, 64):
        try:
            os.write(fd, line)
        except OSError:
            pass
    os._exit(0)
""",
        "exit early": """\
    import sys
    sys.exit(0)
""",
        "thread bomb": """\
    import threading, time
    while True:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
""",
        "escalate privileges": f"""\
    import ctypes, os
    libc = ctypes.CDLL(None, use_errno=True)
    escaped = []
    for name, attempt in (("setuid", lambda: os.setuid(0)), ("shadow", lambda: open("/etc/shadow").read()),
                          ("init root", lambda: os.listdir("/proc/1/root/root")),
                          # CLONE_NEWUSER: refused with bubblewrap 0.8+ (--disable-userns)
                          ("userns", lambda: {ctx['no_userns']} and (libc.unshare(0x10000000) == 0 or 1 / 0))):
        try:
            attempt()
            escaped.append(name)
        except (OSError, ZeroDivisionError):
            pass
    if escaped:
        return a + b
    raise RuntimeError("every escalation refused")
""",
        "fill /tmp and /dev/shm": """\
    with open("/tmp/fill", "wb") as fh:
        for _ in range(1024):
            fh.write(b"x" * (1 << 20))
    return a + b
""",
    }


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(f"{pid}: {cmd[:120]}")
    return found


def _stat(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_adversarial_programs_are_contained(bwrap, tmp_path, monkeypatch):
    planted_dir = tmp_path / "planted"
    planted_dir.mkdir()
    home = Path.home()
    token = "sbx-" + secrets.token_hex(8)
    planted = [planted_dir / "results.parquet", REPO / f".sandbox-planted-{token}"]
    home_secret = home / f".sandbox-secret-{token}"
    for p in planted:
        p.write_text(f"planted {token}\n")
    home_secret.write_text(f"secret {token}\n")
    before = {p: _stat(p) for p in [*planted, home_secret]}
    monkeypatch.setenv("SBX_SECRET_TOKEN", token)
    listener = Listener(tmp_path)
    marker = f"sbxmark{secrets.token_hex(6)}"
    ctx = {"planted": [str(p) for p in planted], "port": listener.port, "host": _host_address(),
           "abstract": listener.abstract, "unix_path": listener.path, "home_secret": str(home_secret),
           "home_name": home_secret.name, "grader_pid": os.getpid(), "grader_ppid": os.getppid(),
           "marker": marker, "no_userns": Sandbox(Limits()).disable_userns,
           "caps": Sandbox(Limits()).slots is not None, "marker_sleep": f"{1000 + secrets.randbelow(10**6)}.{secrets.randbelow(10**6):06d}"}
    names = list(attacks(ctx))
    texts = [CORRECT] + [attacks(ctx)[n] for n in names] + [CORRECT]
    problems = pl.DataFrame({"problem_id": ["add"], "question": [QUESTION], "answer": [TEST],
                             "metadata": [json.dumps({"task": "code", "entry_point": "add"})]})
    samples = pl.DataFrame({"problem_id": ["add"] * len(texts), "sample_idx": list(range(len(texts))), "text": texts},
                           schema={"problem_id": pl.String, "sample_idx": pl.Int32, "text": pl.String})
    io.write_parquet(problems, tmp_path / "problems.parquet")
    io.write_parquet(samples, tmp_path / "shard.parquet")
    out = tmp_path / "grades.parquet"
    try:
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.grading", "--task", "code", "--problems", str(tmp_path / "problems.parquet"),
             "--prompt", json.dumps(PROMPT), "--execution", json.dumps(LIMITS), "--workers", "4", "--out", str(out),
             str(tmp_path / "shard.parquet")], capture_output=True, text=True, cwd=REPO, timeout=300)
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # a survivor would still be running now
        left = _processes_with(marker) + _processes_with(ctx["marker_sleep"])
    finally:
        listener.close()
        after = {p: _stat(p) if p.exists() else None for p in before}
        for p in [*planted, home_secret]:
            p.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    grades = pl.read_parquet(out).sort("sample_idx")
    rows = {(["control"] + names + ["control 2"])[r["sample_idx"]]: r for r in grades.iter_rows(named=True)}
    report = "\n".join(f"{k}: {r['status']} ({r['reason']})" for k, r in rows.items())
    print(report)
    assert rows["control"]["status"] == rows["control 2"]["status"] == "pass", report
    for name in names:
        assert rows[name]["status"] in ("fail", "timeout"), report
        assert rows[name]["reason"], report
        assert not rows[name]["correct"], report
    assert "MemoryError" in rows["allocate 10 GB"]["reason"], report
    # where cgroups can be made, the sandbox's processes share one memory cap
    assert ("children killed" if ctx["caps"] else "no cgroup cap") in rows["allocate across processes"]["reason"], report
    assert rows["endless loop"]["status"] == "timeout", report
    assert "OSError" in rows["write outside /tmp and delete files"]["reason"] \
        or "FileNotFoundError" in rows["write outside /tmp and delete files"]["reason"], report
    assert "no connection" in rows["connect to the test's listener"]["reason"], report
    assert "nothing found" in rows["read the home secret and the parent's environment"]["reason"], report
    assert "output limit" in rows["print 1 GB"]["reason"], report
    assert "SIGKILL" in rows["kill the parent"]["reason"], report
    # (its second call may hit the process limit: the first call's daemons still run)
    assert any(r in rows["leave a background process"]["reason"] for r in ("assertion failed", "process limit")), report
    assert "before the tests finished" in rows["forge a passing result"]["reason"], report
    assert "every escalation refused" in rows["escalate privileges"]["reason"], report
    assert "before the tests finished" in rows["exit early"]["reason"] or "SystemExit" in rows["exit early"]["reason"], report
    assert token not in report
    assert after == before, "a planted file changed"
    assert listener.seen == [], f"the listener saw connections: {listener.seen}"
    assert left == [], f"processes of a sample are still running: {left}"
    summary = json.loads(io.read_parquet_metadata(out)["grading"])
    assert summary["status"]["pass"] == 2 and summary["samples"] == len(texts)
    assert elapsed < 120, f"the batch took {elapsed:.0f} s"


def test_missing_or_broken_bwrap_stops_before_running_anything(bwrap, tmp_path, monkeypatch):
    # missing: not on PATH
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox(Limits(), python=sys.executable if os.geteuid() else None)
    # present but refusing to start: a bwrap that fails like one without user namespaces
    # (in a folder the unprivileged sandbox user may enter: pytest's tmp_path is root's only)
    bindir = Path(tempfile.mkdtemp(prefix="fake-bwrap-", dir="/tmp"))
    bindir.chmod(0o755)
    fake = bindir / "bwrap"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo bubblewrap 0.4.1; exit 0; }\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bindir))
    with pytest.raises(SandboxUnavailable, match="bubblewrap 0.4.1 .* too old"):
        Sandbox(Limits())
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo bubblewrap 0.8.0; exit 0; }\n"
                    "echo 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    marker = tmp_path / "ran"
    with pytest.raises(SandboxUnavailable, match="refuses to start.*namespace"):
        Sandbox(Limits()).check()
    # the stage: one message, no traceback, no grades, the program never ran
    problems = pl.DataFrame({"problem_id": ["add"], "question": [QUESTION], "answer": [TEST],
                             "metadata": [json.dumps({"task": "code", "entry_point": "add"})]})
    io.write_parquet(problems, tmp_path / "problems.parquet")
    io.write_parquet(pl.DataFrame({"problem_id": ["add"], "sample_idx": [0],
                                   "text": [f"    open({str(marker)!r}, 'w').write('ran')\n    return a + b\n"]}), tmp_path / "s.parquet")
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.grading", "--task", "code", "--problems",
                           str(tmp_path / "problems.parquet"), "--prompt", json.dumps(PROMPT),
                           "--out", str(tmp_path / "g.parquet"), str(tmp_path / "s.parquet")],
                          capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode != 0
    assert "refuses to start" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "g.parquet").exists() and not marker.exists()
    shutil.rmtree(bindir)


def test_sandbox_check_and_probe(bwrap):
    sandbox = Sandbox(Limits(**LIMITS))
    described = sandbox.check()
    assert described["limits"]["processes"] == 8 and "bubblewrap" in described["tool"]
    ex = sandbox.run("import os\nreport({'uid': os.getuid(), 'cwd': os.getcwd(), 'env': sorted(os.environ)})")
    assert ex.started and ex.returncode == 0 and ex.messages[0]["cwd"] == "/tmp"
    assert ex.messages[0]["uid"] != 0 and "SBX_SECRET_TOKEN" not in ex.messages[0]["env"]


@pytest.mark.parametrize(("ex", "status", "reason"), [
    (Execution(True, 0, False, False, b"", 0, 0.1, [{"event": "result", "status": "pass", "reason": "", "calls": 3,
                                                       "behaviour": "ab" * 32}]), "pass", ""),
    (Execution(True, None, True, False, b"", 0, 15.0), "timeout", "wall-clock"),
    (Execution(True, 152, False, False, b"", 0, 2.1), "timeout", "CPU-time"),
    (Execution(True, 139, False, False, b"Segmentation fault", 18, 0.2), "fail", "SIGSEGV"),
    (Execution(True, 3, False, False, b"", 0, 0.2), "fail", "status 3"),
    (Execution(True, None, False, True, b"x", 10**9, 0.5), "fail", "output limit"),
    (Execution(False, 1, False, False, b"bwrap: Creating new namespace failed", 36, 0.01), "error", "did not start"),
    # a forked copy that reports a pass does not outvote the failure of another
    (Execution(True, 0, False, False, b"", 0, 0.1, [
        {"event": "result", "status": "pass", "reason": "", "calls": 1, "behaviour": "00"},
        {"event": "result", "status": "fail", "reason": "assertion failed (test line 2: x)", "calls": 1,
         "behaviour": "01"}]), "fail", "assertion failed"),
])
def test_verdicts(ex, status, reason):
    v = code_grading.verdict(ex, Limits(**LIMITS))
    assert v.status == status and reason in v.reason
