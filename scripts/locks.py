"""The lock files against pyproject.toml and against an installed environment.

`requirements/cpu.lock` and `requirements/cuda.lock` (written by `scripts/lock.sh`) pin every
package of one flavour at one exact version with its sha256 hashes. Each is resolved from
pyproject.toml ([project] dependencies, every extra, [build-system] requires) plus
`requirements/<flavour>.in` and `requirements/embedded.in`.

    python scripts/locks.py check       pyproject.toml, the .in files and both locks agree
    python scripts/locks.py sync LOCK   make this interpreter's environment exactly LOCK

`check` reports, per lock: a requirement no locked pin satisfies (a new dependency, a raised
bound: run scripts/lock.sh), a top-level pin nothing requires any more (a dropped
dependency), and a pin without an exact version or a hash. `sync` uninstalls what LOCK does
not name (but pip, the installer, and this project) and fails naming every locked package
that is missing or at another version. Both exit 1 with one line per problem.
Needs `packaging` (pinned in both locks) and Python 3.11+ (tomllib).
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
FLAVOURS = ("cpu", "cuda")
# The machine both locks are resolved for (scripts/lock.sh: --python-version 3.11
# --python-platform x86_64-manylinux_2_28); requirement markers are evaluated for it.
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
# Installed but never locked: the venv's own installer.
UNLOCKED = ("pip",)

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(===?)\s*([^\s\\;]+)")


@dataclass(frozen=True)
class Pin:
    name: str  # canonical (PEP 503)
    version: str
    hashes: int
    via: tuple[str, ...]  # uv's annotations: who asked for it


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of one lock file, by canonical name (ValueError naming the line of one that
    is not pinned to a single version)."""
    pins: dict[str, Pin] = {}
    cur: dict | None = None

    def close() -> None:
        if cur is not None:
            pins[cur["name"]] = Pin(cur["name"], cur["version"], cur["hashes"], tuple(cur["via"]))

    for n, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if not line[0].isspace() and not text.startswith("#"):
            close()
            m = _PIN.match(text)
            if m is None:
                raise ValueError(f"{path}:{n}: not pinned to one version (== or ===): {text!r}")
            name = canonicalize_name(m.group(1))
            if name in pins:
                raise ValueError(f"{path}:{n}: {name} pinned twice")
            cur = {"name": name, "version": m.group(3), "via": [],
                   "hashes": text.count("--hash=sha256:")}
        elif cur is not None and text.startswith("--hash="):
            cur["hashes"] += text.count("--hash=sha256:")
        elif cur is not None and line[0].isspace() and text.startswith("# via"):
            rest = text[len("# via"):].strip()
            if rest:
                cur["via"].append(rest)
        elif cur is not None and line[0].isspace() and text.startswith("#   "):
            cur["via"].append(text[1:].strip())
        elif not line[0].isspace():
            close()  # a comment at column 0 ends the entry above it
            cur = None
    close()
    return pins


def read_in(path: Path) -> list[Requirement]:
    """The requirements of a requirements/*.in file (one per line, # comments)."""
    out = []
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            out.append(Requirement(text))
    return out


def project_requirements(pyproject: Path) -> tuple[str, list[Requirement]]:
    """The project's name and what it requires: dependencies, every extra, the build backend."""
    data = tomllib.loads(pyproject.read_text())
    project = data["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    for group in project.get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in group]
    reqs += [Requirement(r) for r in data.get("build-system", {}).get("requires", [])]
    return project["name"], reqs


def _applies(req: Requirement) -> bool:
    return req.marker is None or req.marker.evaluate({**TARGET, "extra": ""})


def disagreements(root: Path = ROOT) -> list[str]:
    """Every way pyproject.toml, the .in files and the two locks disagree (empty: they agree)."""
    name, project_reqs = project_requirements(root / "pyproject.toml")
    req_dir = root / "requirements"
    embedded = read_in(req_dir / "embedded.in")
    problems = []
    for flavour in FLAVOURS:
        lock_path = req_dir / f"{flavour}.lock"
        where = f"requirements/{flavour}.lock"
        if not lock_path.exists():
            problems.append(f"{where}: missing (run scripts/lock.sh)")
            continue
        try:
            pins = read_lock(lock_path)
        except ValueError as e:
            problems.append(str(e))
            continue
        flavour_in = read_in(req_dir / f"{flavour}.in")
        sources = [("pyproject.toml", r) for r in project_reqs]
        sources += [(f"requirements/{flavour}.in", r) for r in flavour_in]
        sources += [("requirements/embedded.in", r) for r in embedded]
        for source, req in sources:
            if not _applies(req):
                continue
            pin = pins.get(canonicalize_name(req.name))
            if pin is None:
                problems.append(f"{where}: {source} requires {req}, which the lock does not pin"
                                " (run scripts/lock.sh)")
            elif not req.specifier.contains(pin.version, prereleases=True):
                problems.append(f"{where}: {source} requires {req}, the lock pins "
                                f"{pin.name}=={pin.version} (run scripts/lock.sh)")
        required = {canonicalize_name(r.name) for _, r in sources}
        top_level = (f"{name} (pyproject.toml)", f"-r requirements/{flavour}.in",
                     "-r requirements/embedded.in")
        for pin in pins.values():
            if pin.hashes == 0:
                problems.append(f"{where}: {pin.name}=={pin.version} has no hash")
            if any(v in top_level for v in pin.via) and pin.name not in required:
                problems.append(f"{where}: {pin.name}=={pin.version} is locked as a top-level "
                                f"requirement ({', '.join(pin.via)}) that nothing requires any "
                                "more (run scripts/lock.sh)")
    return problems


def compare(installed: dict[str, str], pins: dict[str, Pin], keep: tuple[str, ...]
            ) -> tuple[list[str], list[str]]:
    """(extra, wrong): installed distributions the lock does not name (minus `keep`), and one
    line per locked package missing or installed at another version."""
    keep_names = {canonicalize_name(k) for k in keep}
    extra = sorted(n for n in installed if n not in pins and n not in keep_names)
    wrong = []
    for pin in pins.values():
        have = installed.get(pin.name)
        if have is None:
            wrong.append(f"{pin.name}=={pin.version} is locked but not installed")
        elif Version(have) != Version(pin.version):
            wrong.append(f"{pin.name}=={pin.version} is locked but {have} is installed")
    return extra, wrong


def installed_distributions() -> dict[str, str]:
    """Canonical name -> version of every distribution this interpreter sees."""
    out: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        out.setdefault(canonicalize_name(dist.metadata["Name"]), dist.version)
    return out


def sync(lock_path: Path, root: Path = ROOT) -> list[str]:
    """Uninstall what the lock does not name; the problems left (empty: exactly the lock)."""
    pins = read_lock(lock_path)
    keep = (*UNLOCKED, project_requirements(root / "pyproject.toml")[0])
    extra, _ = compare(installed_distributions(), pins, keep)
    if extra:
        print(f"removing what {lock_path.name} does not name: {' '.join(extra)}")
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", *extra], check=True)
    extra, wrong = compare(installed_distributions(), pins, keep)
    return [f"{e} is installed but not locked" for e in extra] + wrong


def main(argv: list[str]) -> int:
    if argv[:1] == ["check"] and len(argv) == 1:
        problems = disagreements()
    elif argv[:1] == ["sync"] and len(argv) == 2:
        problems = sync(Path(argv[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
