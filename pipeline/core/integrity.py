"""Checksums: every output records one when it is written; every stage checks its inputs
against theirs before it reads them.

What is recorded, and what it covers:
- A Parquet file (everything `io.write_parquet` writes: sample, score, search and leaves
  shards, rollouts, grades, replays, problems) holds its record in its own footer: the
  key-value metadata entry `pipeline.sha256`, the SHA-256 of the file's bytes in which
  the 64 hex digits of that very entry are read as "0" (a checksum cannot contain
  itself, so its own digits are the one thing it leaves out, and only as a known
  constant). `seal_parquet` writes the file with "0" * 64 there, hashes it and writes
  the digest over the zeros, inside `io._atomic`'s temporary file, before the fsync and
  the rename: the record and the data appear together or not at all. It covers every
  byte of the file, so it detects a file of zero length, a truncated one (the footer is
  the file's last bytes: cut it and the record or the "PAR1" magic is gone), any changed
  byte anywhere (data pages, footer, the record itself: a changed digit no longer
  equals the recomputed digest) and a missing record (a file written otherwise).
- A directory output (a fitted value head, a dequantised embedded model) holds
  `SHA256SUMS` (the format of `sha256sum`, so `cd DIR && sha256sum -c SHA256SUMS` checks
  it too): the digest of every file in it, written into the temporary directory before
  it is renamed into place. A missing, changed, truncated or unexpected file is found;
  Snakemake's own `.snakemake_timestamp` is left out.
- Files written before checksums existed have no record. `python -m pipeline.verify
  results --adopt-legacy` records the whole-file SHA-256 of each one that passes its
  structural checks in `results/adopted.sha256` (sha256sum format, paths relative to
  the results folder); they are checked against it from then on.

`check(path)` verifies one file or directory output and returns its digest (the content
identity recorded beside a consumer's output: `verified_inputs`), or raises `Damaged`,
whose message names the file, what is wrong and the command that regenerates it.
`check_inputs` is what a stage calls first; it also makes a `Damaged` error end the
process with that one message (no traceback).
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
from collections.abc import Iterable
from pathlib import Path

from pipeline.core import layout

RECORD = "pipeline.sha256"
INPUTS = "pipeline.inputs"  # the verified inputs of a derived output: {results-relative path: digest}
PLACEHOLDER = "0" * 64
DIR_RECORD = "SHA256SUMS"
LEDGER = "adopted.sha256"
_IGNORED_IN_DIRS = {DIR_RECORD, ".snakemake_timestamp"}
_MAGIC = b"PAR1"
_RECORD_RE = re.compile(re.escape(RECORD.encode()) + rb"[\s\S]{1,4}?([0-9a-f]{64})")
_SUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](\S.*)")


class Damaged(ValueError):
    """A file that must not be read: missing, unreadable, truncated, changed, or
    without a checksum record (`unrecorded`)."""

    def __init__(self, path: str | Path, problem: str, *, unrecorded: bool = False):
        self.path, self.problem, self.unrecorded = str(path), problem, unrecorded
        super().__init__(message(self.path, problem, unrecorded=unrecorded))


def message(path: str, problem: str, *, unrecorded: bool = False) -> str:
    """One message: the file, what is wrong, the command that regenerates it."""
    found = layout.locate(path)
    root = str(found[0]) if found else "results"
    regenerate = (f"python -m pipeline.verify {root} --regenerate{' --unrecorded' if unrecorded else ''} "
                  "-- --cores all (with your run's other snakemake options, e.g. --configfile)")
    if unrecorded:
        return (f"{path}: {problem}. If this results folder was written before checksums existed, record "
                f"them once with: python -m pipeline.verify {root} --adopt-legacy (it checks each file's "
                f"structure first). Otherwise regenerate it, and only what was computed from it: {regenerate}")
    return f"{path} is damaged: {problem}. Regenerate it, and only what was computed from it: {regenerate}"


# --------------------------------------------------------------------------- Parquet files


def _footer_start(data: bytes) -> int:
    """Where a Parquet file's footer (file metadata) starts; raises ValueError naming what
    is wrong with a file that cannot be whole."""
    if not data:
        raise ValueError("empty (0 bytes)")
    if len(data) < 12 or data[-4:] != _MAGIC:
        raise ValueError(f"truncated: {len(data):,} bytes that do not end with a Parquet footer")
    if data[:4] != _MAGIC:
        raise ValueError("not a Parquet file (it does not start with PAR1)")
    (length,) = struct.unpack("<I", data[-8:-4])
    start = len(data) - 8 - length
    if start < 4:
        raise ValueError(f"damaged footer (it claims {length:,} bytes of a {len(data):,}-byte file)")
    return start


def _record_span(data: bytes) -> tuple[int, str] | None:
    """(offset, digest) of the checksum record in the footer; None without one."""
    start = _footer_start(data)
    found = list(_RECORD_RE.finditer(data, start, len(data) - 8))
    if not found:
        return None
    if len(found) > 1:
        raise ValueError(f"damaged footer ({len(found)} checksum records)")
    return found[0].start(1), found[0].group(1).decode()


def _digest_with_placeholder(data: bytes, at: int) -> str:
    h = hashlib.sha256()
    h.update(memoryview(data)[:at])
    h.update(PLACEHOLDER.encode())
    h.update(memoryview(data)[at + 64:])
    return h.hexdigest()


def seal_parquet(path: str | Path) -> str:
    """Write the digest over the placeholder record of a just-written Parquet file (see
    the module docstring); returns it."""
    with open(path, "r+b") as fh:
        data = fh.read()
        span = _record_span(data)
        if span is None or span[1] != PLACEHOLDER:
            raise RuntimeError(f"{path}: the written Parquet file has no checksum placeholder")
        digest = _digest_with_placeholder(data, span[0])
        fh.seek(span[0])
        fh.write(digest.encode())
    return digest


def parquet_digest(path: str | Path, data: bytes | None = None) -> str | None:
    """The file's checked digest; None when it has no record; ValueError naming what is
    wrong when it cannot be whole or does not match its record."""
    data = Path(path).read_bytes() if data is None else data
    span = _record_span(data)
    if span is None:
        return None
    at, stored = span
    if _digest_with_placeholder(data, at) != stored:
        raise ValueError(f"its content does not match its checksum (a changed byte; {len(data):,} bytes)")
    return stored


# --------------------------------------------------------------------------- directories


def _dir_files(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path).as_posix()) for p in path.rglob("*")
                  if p.is_file() and p.name not in _IGNORED_IN_DIRS)


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def seal_dir(path: str | Path) -> str:
    """Write SHA256SUMS (every file of the directory) into `path`; returns its digest."""
    path = Path(path)
    text = "".join(f"{file_sha256(path / name)}  {name}\n" for name in _dir_files(path))
    (path / DIR_RECORD).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _parse_sums(text: str, where: str) -> dict[str, str]:
    sums: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        m = _SUM_LINE.fullmatch(line)
        if not m:
            raise ValueError(f"{where} line {n} is not '<sha256>  <file>'")
        sums[m.group(2)] = m.group(1)
    return sums


def _check_listed(path: Path, sums: dict[str, str], where: str) -> None:
    if not sums:
        raise ValueError(f"{where} lists no file")
    for name, digest in sums.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        if file_sha256(f) != digest:
            raise ValueError(f"{name} does not match its checksum in {where} (a changed byte; "
                             f"{f.stat().st_size:,} bytes)")
    extra = [n for n in _dir_files(path) if n not in sums]
    if extra:
        raise ValueError(f"{extra[0]} is not listed in {where} ({len(extra)} unexpected file(s))")


def dir_digest(path: str | Path) -> str | None:
    """The directory's checked digest (that of its SHA256SUMS); None without a record."""
    path = Path(path)
    record = path / DIR_RECORD
    if not record.is_file():
        return None
    text = record.read_text(errors="replace")
    _check_listed(path, _parse_sums(text, DIR_RECORD), DIR_RECORD)
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- adopted legacy files


_LEDGERS: dict[Path, tuple[int, dict[str, str]]] = {}


def ledger(root: str | Path) -> dict[str, str]:
    """The adopted records of a results folder: {results-relative path: sha256}."""
    f = Path(root) / LEDGER
    try:
        stamp = f.stat().st_mtime_ns
    except FileNotFoundError:
        return {}
    cached = _LEDGERS.get(f)
    if cached is None or cached[0] != stamp:
        cached = (stamp, _parse_sums(f.read_text(), str(f)))
        _LEDGERS[f] = cached
    return cached[1]


def _adopted_digest(path: Path) -> str | None:
    found = layout.locate(path)
    if not found:
        return None
    root, entry = found
    sums = ledger(root)
    if entry.kind in ("model_dir", "value_head"):
        prefix = entry.rel + "/"
        listed = {k[len(prefix):]: v for k, v in sums.items() if k.startswith(prefix)}
        if not listed:
            return None
        _check_listed(path, listed, f"{root / LEDGER}")
        return hashlib.sha256("".join(f"{v}  {k}\n" for k, v in sorted(listed.items())).encode()).hexdigest()
    stored = sums.get(entry.rel)
    if stored is None:
        return None
    if file_sha256(path) != stored:
        raise ValueError(f"its content does not match its adopted checksum in {root / LEDGER} (a changed byte)")
    return stored


# --------------------------------------------------------------------------- checking


def digest(path: str | Path) -> str:
    """The checked digest of a Parquet file or directory output; raises Damaged."""
    p = Path(path)
    try:
        if p.is_dir():
            found = dir_digest(p)
        elif not p.exists():
            raise Damaged(path, "missing")
        else:
            try:
                data = p.read_bytes()
            except OSError as e:
                raise Damaged(path, f"unreadable ({e.strerror or e})") from None
            found = parquet_digest(p, data)
        if found is None:
            found = _adopted_digest(p)
        if found is None:
            what = f"no {DIR_RECORD}" if p.is_dir() else f"no {RECORD!r} entry in its footer"
            raise Damaged(path, f"it has no checksum record ({what})", unrecorded=True)
        return found
    except ValueError as e:
        if isinstance(e, Damaged):
            raise
        raise Damaged(path, str(e)) from None


_VERIFIED: dict[str, str] = {}


def check(path: str | Path) -> str:
    """`digest`, remembered as an input of what this process writes next (`verified_inputs`)."""
    d = digest(path)
    found = layout.locate(Path(path))
    _VERIFIED[found[1].rel if found else str(path)] = d
    return d


def check_inputs(paths: Iterable[str | Path]) -> None:
    """What a stage calls before it reads anything: every Parquet file and directory
    output among `paths` (the job's inputs) is checked (other files, e.g. JSON, are
    skipped); the first damaged one ends the process with its one-line message."""
    _install_hook()
    _VERIFIED.clear()
    for p in paths:
        if Path(p).is_dir() or str(p).endswith(".parquet"):
            check(p)


def verified_inputs() -> dict[str, str]:
    """{results-relative path: digest} of what this process checked since check_inputs."""
    return dict(sorted(_VERIFIED.items()))


def _install_hook() -> None:
    if getattr(sys.excepthook, "_pipeline_damaged", False):
        return
    previous = sys.excepthook

    def hook(kind, value, tb):
        if isinstance(value, Damaged):
            print(f"ERROR: {value}", file=sys.stderr)
        else:
            previous(kind, value, tb)

    hook._pipeline_damaged = True
    sys.excepthook = hook
