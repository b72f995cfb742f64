"""Check a results folder without running a model: every cache against its checksum,
every derived table against its inputs; remove and regenerate what is damaged.

    python -m pipeline.verify results/                   list damaged / stale files; exit 1 if any
    python -m pipeline.verify results/ --remove-damaged  ... and remove them (what the
                                                         regeneration needs, pipeline.core.layout)
    python -m pipeline.verify results/ --regenerate -- --cores all [--configfile ...]
                                                         ... remove, regenerate exactly those
                                                         (Snakemake with them as targets),
                                                         then the normal run, then check again
    python -m pipeline.verify results/ --adopt-legacy    record checksums of files written
                                                         before checksums existed

A file is one of (the listing's first word):
    ok         its checksum matches (pipeline.core.integrity); a derived table's inputs are
               the ones it was computed from
    DAMAGED    missing its job's other output, unreadable, empty, truncated, changed (a byte
               that differs from its checksum), or without a checksum record and with a
               broken structure
    NO RECORD  without a checksum record but structurally sound: written before checksums
               existed (adopt it with --adopt-legacy) or rewritten by something else
               (regenerate it with --regenerate --unrecorded)
    STALE      a derived table or score shard computed from other inputs than those now
               in the folder: a recorded input digest that differs, an input missing from
               the record, an input newer than it (files written before input digests were
               recorded, as Snakemake judges them), or scores that do not fit their samples
    LEFTOVER   the temporary file of a killed write (never read; informational)

Structural checks (for a file without a record, before adopting it): it reads as a whole,
has its kind's columns, unique keys, and the rows its name promises (a sample or score
shard: problems x samples of its block); a directory: its JSON parses and every
safetensors file is as long as its header says.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from pipeline.core import integrity, io, layout

# The columns a file of each kind must have (a subset of its schema: the ones its
# readers join on or that say what it is).
COLUMNS = {
    "problems": ("problem_id", "question", "answer"),
    "samples": ("problem_id", "sample_idx", "text", "step_ends", "prompt_tokens", "output_tokens"),
    "grades": ("problem_id", "sample_idx", "answer", "answer_class", "correct"),
    "scores": ("problem_id", "sample_idx", "scores", "prm_tokens", "prm", "prm_params"),
    "rollouts": ("problem_id", "sample_idx", "step", "kind", "k", "reached"),
    "search": ("problem_id", "algorithm", "budget", "selection", "accuracy"),
    "leaves": ("problem_id", "leaf", "text", "scores"),
    "replay": ("problem_id", "strategy", "n", "accuracy"),
    "replay_prm": ("problem_id", "strategy", "n", "accuracy", "prm", "aggregation"),
}
KEYS = {"samples": ("problem_id", "sample_idx"), "scores": ("problem_id", "sample_idx"),
        "grades": ("problem_id", "sample_idx"), "problems": ("problem_id",),
        "rollouts": ("problem_id", "sample_idx", "step"), "leaves": ("problem_id", "leaf")}
# The inputs whose change makes a derived file stale (its rule reads them without
# ancient(); pipeline.core.layout.inputs): recorded digests of other inputs are not compared.
PLAIN_INPUTS = {"grades": {"problems", "samples"}, "scores": {"samples", "value_head"},
                "replay": {"grades", "samples"}, "replay_prm": {"grades", "samples", "scores"},
                "database": {k.name for k in layout.KINDS} - {"database", "model_dir", "info"}}
_TEMP = re.compile(r".+\.tmp(\.wal)?")  # io's .NAME.XXXXXXXX.tmp, the database's, hf.tmp, a head's


@dataclass
class Status:
    entry: layout.Entry
    state: str  # ok | DAMAGED | NO RECORD | STALE
    note: str = ""
    digest: str | None = None
    adoptable: bool = False


# --------------------------------------------------------------------------- scanning


def scan(results: Path) -> tuple[list[layout.Entry], list[str]]:
    """(the workflow's files and directory outputs, leftover temporary files), relative."""
    entries, leftovers = [], []
    for folder, dirs, files in os.walk(results):
        here = Path(folder)
        for d in list(dirs):
            rel = (here / d).relative_to(results).as_posix()
            e = layout.parse(rel)
            if e is not None and layout.KIND[e.kind].is_dir:
                entries.append(e)
                dirs.remove(d)
            elif _TEMP.fullmatch(d):
                leftovers.append(rel)
                dirs.remove(d)
        for f in files:
            rel = (here / f).relative_to(results).as_posix()
            e = layout.parse(rel)
            if e is not None:
                entries.append(e)
            elif _TEMP.fullmatch(f):
                leftovers.append(rel)
    return sorted(entries, key=lambda e: e.rel), sorted(leftovers)


# --------------------------------------------------------------------------- structure


def _safetensors_ok(f: Path) -> None:
    size = f.stat().st_size
    with open(f, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{f.name}: truncated ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{f.name}: truncated (header of {n:,} bytes in {size:,})")
        header = json.loads(fh.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{f.name}: {size:,} bytes, its header says {8 + n + end:,}")


def structure(path: Path, e: layout.Entry) -> None:
    """Raise ValueError naming what is wrong with the structure of a file of kind e."""
    if e.kind in ("model_dir", "value_head"):
        jsons = sorted(path.glob("*.json"))
        weights = sorted(path.glob("*.safetensors"))
        need = "config.json" if e.kind == "model_dir" else "value_head.json"
        if not (path / need).is_file() or not weights:
            raise ValueError(f"no {need} or no safetensors weights")
        for j in jsons:
            try:
                json.loads(j.read_text())
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"{j.name} is not valid JSON ({exc})") from None
        for w in weights:
            _safetensors_ok(w)
        return
    try:
        df = pl.read_parquet(path)
    except Exception as exc:  # polars raises several kinds for a broken file
        raise ValueError(f"does not read as Parquet ({type(exc).__name__}: {str(exc)[:200]})") from None
    missing = [c for c in COLUMNS.get(e.kind, ()) if c not in df.columns]
    if missing:
        raise ValueError(f"lacks the column(s) {missing} of a {e.kind} file")
    if df.height == 0 and e.kind not in ("leaves", "rollouts"):
        raise ValueError("has no rows")
    keys = KEYS.get(e.kind)
    if keys and df.select(keys).is_duplicated().any():
        raise ValueError(f"has duplicate {'/'.join(keys)} rows")
    if e.kind in ("samples", "scores"):
        pa, pb, sa, sb = (int(x) for x in re.findall(r"\d+", e.get("shard")))
        if df.height != (pb - pa) * (sb - sa) or df["problem_id"].n_unique() != pb - pa:
            raise ValueError(f"has {df.height} rows, its name promises {pb - pa} problems x {sb - sa} samples")
        if not df["sample_idx"].is_between(sa, sb - 1).all():
            raise ValueError(f"has sample indices outside {sa}..{sb - 1}")
        if e.kind == "scores" and (df["prm"] != e.get("prm")).any():
            raise ValueError(f"holds scores of another PRM than {e.get('prm')!r}")
    if e.kind == "search" and (df["budget"] != int(e.get("budget"))).any():
        raise ValueError(f"holds another budget than {e.get('budget')}")


# --------------------------------------------------------------------------- checking


def _check_database(path: Path) -> dict[str, str] | None:
    """Read every table of the database (DuckDB checks its blocks' checksums as it
    reads them); its recorded inputs, or None (written before they were recorded)."""
    import duckdb

    try:
        with duckdb.connect(str(path), read_only=True) as con:
            tables = [r[0] for r in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()]
            for t in tables:
                rows = con.execute(f'SELECT * FROM "{t}"')
                while rows.fetchmany(50_000):
                    pass  # reading every block is the check
            if "provenance" in tables:
                found = con.execute("SELECT value FROM provenance WHERE key = 'inputs'").fetchall()
                return json.loads(found[0][0]) if found else None
    except duckdb.Error as exc:
        raise ValueError(f"does not read as a DuckDB database ({str(exc).splitlines()[0][:200]})") from None
    return None


def check_file(results: Path, e: layout.Entry) -> tuple[Status, dict[str, str] | None]:
    """The integrity of one entry, and the inputs recorded in it (None: not recorded)."""
    path = results / e.rel
    if e.kind == "info":
        try:
            info = json.loads(path.read_text())
            if not {"model_dir", "params_total"} <= set(info):
                raise ValueError("lacks model_dir or params_total")
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            return Status(e, "DAMAGED", f"not a model info JSON ({exc})"), None
        return Status(e, "ok"), None
    if e.kind == "database":
        try:
            return Status(e, "ok"), _check_database(path)
        except ValueError as exc:
            return Status(e, "DAMAGED", str(exc)), None
    try:
        digest = integrity.digest(path)
    except integrity.Damaged as exc:
        if not exc.unrecorded:
            return Status(e, "DAMAGED", exc.problem), None
        try:
            structure(path, e)
        except (ValueError, OSError) as bad:
            return Status(e, "DAMAGED", f"{exc.problem}, and it {bad}" if not layout.KIND[e.kind].is_dir
                          else f"{exc.problem}, and {bad}"), None
        return Status(e, "NO RECORD", f"{exc.problem}; its structure is sound", adoptable=True), None
    recorded = None
    if not layout.KIND[e.kind].is_dir:
        meta = io.read_parquet_metadata(path, integrity_keys=True)
        if integrity.INPUTS in meta:
            recorded = json.loads(meta[integrity.INPUTS])
    return Status(e, "ok", digest=digest), recorded


def _mtime(results: Path, e: layout.Entry) -> float:
    """A file's modification time; a directory output's: Snakemake's timestamp file in it,
    else its newest file (the folder's own time changes when anything is removed)."""
    p = results / e.rel
    if not p.is_dir():
        return p.stat().st_mtime
    stamp = p / ".snakemake_timestamp"
    if stamp.exists():
        return stamp.stat().st_mtime
    return max((f.stat().st_mtime for f in p.rglob("*") if f.is_file()), default=p.stat().st_mtime)


def staleness(results: Path, index: layout.Index, status: dict[layout.Entry, Status],
              recorded: dict[layout.Entry, dict[str, str] | None]) -> None:
    """Mark derived files (and score shards) whose inputs changed since they were computed."""
    by_rel = {e.rel: e for e in index.entries}
    for e, st in status.items():
        plain = PLAIN_INPUTS.get(e.kind)
        if plain is None or st.state != "ok":
            continue
        rec = recorded.get(e)
        why = None
        if rec is not None:
            for rel, digest in rec.items():
                parsed = layout.parse(rel)
                if parsed is None or parsed.kind not in plain:
                    continue
                now = by_rel.get(rel)
                if now is None:
                    why = f"its input {rel} no longer exists"
                elif status[now].state == "ok" and status[now].digest != digest:
                    why = f"its input {rel} changed since it was computed (another checksum)"
                if why:
                    break
            if why is None and e.kind in ("grades", "scores"):  # inputs known exactly by name
                for x, ancient in layout.inputs(e, index):
                    if not ancient and x.rel not in rec and x.kind in plain:
                        why = f"computed without its input {x.rel}"
                        break
        else:  # written before inputs were recorded: Snakemake's rule (modification times)
            mine = _mtime(results, e)
            for x, ancient in layout.inputs(e, index):
                if not ancient and x.kind in plain and _mtime(results, x) > mine:
                    why = f"older than its input {x.rel} (written before input checksums were recorded)"
                    break
        if why is None and e.kind in ("scores", "grades"):
            why = _content_mismatch(results, e, index, status)
        if why:
            st.state, st.note = "STALE", why


def _content_mismatch(results: Path, e: layout.Entry, index: layout.Index,
                      status: dict[layout.Entry, Status]) -> str | None:
    """Scores that do not fit their sample shard, grades that do not cover their cache."""
    f = e.fields
    shards = index.find("samples", d=f["d"], m=f["m"], key=f["key"], **({"shard": f["shard"]} if "shard" in f else {}))
    if not shards or any(status[s].state != "ok" for s in shards):
        return None
    samples = pl.concat([pl.read_parquet(results / s.rel, columns=["problem_id", "sample_idx", "step_ends"])
                         for s in shards])
    mine = pl.read_parquet(results / e.rel, columns=["problem_id", "sample_idx",
                                                       *(["scores"] if e.kind == "scores" else [])])
    keys = ["problem_id", "sample_idx"]
    joined = samples.join(mine, on=keys, how="full", coalesce=True)
    if joined.height != samples.height or joined.height != mine.height:
        return f"its rows are not the samples of {shards[0].rel if len(shards) == 1 else 'its cache'}"
    if e.kind == "scores":
        bad = joined.filter((pl.col("scores").list.len() != pl.col("step_ends").list.len())
                            & (pl.col("scores").list.len() > 0))
        if bad.height:
            r = bad.row(0, named=True)
            return (f"its scores do not fit the samples of {shards[0].rel}: problem {r['problem_id']!r} sample "
                    f"{r['sample_idx']} has {len(r['step_ends'])} steps, {len(r['scores'])} scores")
    return None


def verify(results: Path) -> tuple[list[Status], list[str], layout.Index]:
    """Every entry's status (damaged, unrecorded, stale, ok) and the leftover temporary files."""
    entries, leftovers = scan(results)
    index = layout.Index(entries)
    status, recorded = {}, {}
    for e in index.entries:
        status[e], recorded[e] = check_file(results, e)
    for e in index.entries:  # a tree search writes two files: one alone is a killed job
        if e.kind in ("search", "leaves") and not layout.job_outputs(e, index) and status[e].state == "ok":
            other = (e.rel.replace(".leaves.parquet", ".parquet") if e.kind == "leaves"
                     else e.rel.replace(".parquet", ".leaves.parquet"))
            status[e] = Status(e, "DAMAGED", f"the other output of its job, {other}, is missing (a killed job)")
    staleness(results, index, status, recorded)
    return [status[e] for e in index.entries], leftovers, index


# --------------------------------------------------------------------------- actions


def adopt(results: Path, statuses: list[Status]) -> list[str]:
    """Record the whole-file digests of every sound file without a record in the ledger."""
    sums = dict(integrity.ledger(results))
    adopted = []
    for st in statuses:
        if not st.adoptable:
            continue
        path = results / st.entry.rel
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != ".snakemake_timestamp"):
                sums[f.relative_to(results).as_posix()] = integrity.file_sha256(f)
        else:
            sums[st.entry.rel] = integrity.file_sha256(path)
        adopted.append(st.entry.rel)
    # entries of files that are gone, or that now carry their own record, are dropped
    keep = {}
    for rel, d in sums.items():
        owner = _owner(rel)
        if (results / rel).is_file() and owner is not None and not _has_own_record(results / owner.rel):
            keep[rel] = d
    io.write_text("".join(f"{d}  {rel}\n" for rel, d in sorted(keep.items())), results / integrity.LEDGER)
    return adopted


def _owner(rel: str) -> layout.Entry | None:
    """The entry a ledger line belongs to: the file itself, or the directory output holding it."""
    parts = rel.split("/")
    for i in range(len(parts), 0, -1):
        e = layout.parse("/".join(parts[:i]))
        if e is not None:
            return e
    return None


def _has_own_record(path: Path) -> bool:
    if path.is_dir():
        return (path / integrity.DIR_RECORD).is_file()
    try:
        return integrity.parquet_digest(path) is not None
    except (ValueError, OSError):
        return False


def locked(workdir: Path) -> bool:
    locks = workdir / ".snakemake" / "locks"
    return locks.is_dir() and any(locks.iterdir())


def remove(results: Path, targets: list[layout.Entry], leftovers: list[str]) -> None:
    for e in targets:
        p = results / e.rel
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    for rel in leftovers:
        p = results / rel
        shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)


def snakemake(workdir: Path, options: Sequence[str], targets: Sequence[str] = ()) -> int:
    cmd = [sys.executable, "-m", "snakemake", *options, *targets]
    print("$ snakemake " + " ".join([*options, *targets]), flush=True)
    return subprocess.run(cmd, cwd=workdir).returncode


# --------------------------------------------------------------------------- report


def report(results: Path, statuses: list[Status], leftovers: list[str], *, verbose: bool = False) -> int:
    """Print the listing and the summary; the number of files that are not ok."""
    counts: dict[str, int] = {}
    for st in statuses:
        counts[st.state] = counts.get(st.state, 0) + 1
        if st.state != "ok" or verbose:
            print(f"{st.state:<9} {st.entry.rel}  {st.note}".rstrip())
    for rel in leftovers:
        print(f"LEFTOVER  {rel}  temporary file of a killed write (never read)")
    bad = len(statuses) - counts.get("ok", 0)
    parts = [f"{counts[s]} {s.lower() if s != 'NO RECORD' else 'without a checksum record'}"
             for s in ("DAMAGED", "STALE", "NO RECORD") if counts.get(s)]
    print(f"{results}: {_count(len(statuses), 'file')} checked: {counts.get('ok', 0)} ok"
          + (", " + ", ".join(parts) if parts else "")
          + (f"; {_count(len(leftovers), 'leftover temporary file')}" if leftovers else "") + ".")
    return bad


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="check a results folder's caches and derived tables; remove or regenerate damaged files",
        epilog="Options after -- are passed to snakemake by --regenerate (default: --cores all).")
    ap.add_argument("results", type=Path, help="the results folder (results/ of the workflow folder)")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--remove-damaged", action="store_true",
                      help="remove damaged and stale files and what their regeneration needs removed")
    what.add_argument("--regenerate", action="store_true",
                      help="--remove-damaged, then snakemake with the removed files as targets, then the "
                           "normal run, then check again")
    what.add_argument("--adopt-legacy", action="store_true",
                      help="record checksums of files written before checksums existed (structure checked)")
    ap.add_argument("--unrecorded", action="store_true",
                    help="with --remove-damaged/--regenerate: also remove sound files without a checksum record")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every file, the intact ones too")
    argv = list(sys.argv[1:] if argv is None else argv)
    options = argv[argv.index("--") + 1:] if "--" in argv else []
    a = ap.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    results = a.results
    if not results.is_dir():
        ap.error(f"{results} is not a folder")
    statuses, leftovers, index = verify(results)
    if a.adopt_legacy:
        adopted = adopt(results, statuses)
        print(f"adopted {_count(len(adopted), 'file')} without a checksum record into {results / integrity.LEDGER}")
        statuses, leftovers, index = verify(results)
    bad = report(results, statuses, leftovers, verbose=a.verbose)
    if not (a.remove_damaged or a.regenerate):
        if bad:
            unrecorded = sum(s.state == "NO RECORD" for s in statuses)
            if unrecorded:
                print(f"{unrecorded} file{'s have' if unrecorded > 1 else ' has'} no checksum record: if this folder "
                      f"was written before checksums existed, record them with: python -m pipeline.verify {results} "
                      "--adopt-legacy")
            if bad > unrecorded:
                print(f"Regenerate the damaged and stale files, and only what was computed from them: "
                      f"python -m pipeline.verify {results} --regenerate -- --cores all "
                      "(your run's snakemake options after --)")
        sys.exit(1 if bad else 0)
    workdir = results.resolve().parent
    if locked(workdir):
        sys.exit(f"{workdir}/.snakemake/locks: a Snakemake run holds this folder (or was killed: then run "
                 "snakemake --unlock); nothing removed")
    chosen = [s.entry for s in statuses if s.state in ("DAMAGED", "STALE") or (a.unrecorded and s.adoptable)]
    targets, why = layout.regeneration(chosen, index)
    kept = [s for s in statuses if s.adoptable and s.entry not in why]
    for e in targets:
        print(f"REMOVE    {e.rel}  ({why[e]})")
    remove(results, targets, leftovers)
    if kept:
        print(f"kept {_count(len(kept), 'sound file')} without a checksum record: adopt them with --adopt-legacy, "
              "or regenerate them with --unrecorded")
    names = [f"{results.name}/{e.rel}" for e in targets]
    if a.remove_damaged:
        if targets:
            print(f"removed {_count(len(targets), 'file')}. Regenerate exactly these, then run the workflow as usual "
                  "(with your run's snakemake options):\n"
                  f"    snakemake --cores all {' '.join(names)}\n    snakemake --cores all")
        return
    options = options or ["--cores", "all"]
    if names and snakemake(workdir, options, names):
        sys.exit("regenerating the removed files failed (the snakemake output above says why)")
    if snakemake(workdir, options):
        sys.exit("the run after the regeneration failed (the snakemake output above says why)")
    statuses, leftovers, _ = verify(results)
    sys.exit(1 if report(results, statuses, leftovers) else 0)


if __name__ == "__main__":
    main()
