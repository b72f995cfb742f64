"""Crash safety with the real engine: SIGKILL the whole workflow inside generate, score,
tree search and replay, resume, and compare with the uninterrupted run (`baseline`,
same seed).

Checked across all kill points: (a) the final DuckDB tables equal the uninterrupted
run's, (b) no finished shard is recomputed (same inode and mtime to the end), (c) a
half-written file never appears under its final name, and none is left behind. Also:
a second Snakemake on the same folder is refused while the first runs, and the caches
(samples, scores, searches) are write-protected so Snakemake refuses to overwrite them.

The kill points are made deterministic by tests/faultinject/sitecustomize.py, which
holds chosen writes (in the middle of the write, or just after the rename) until the
test releases or kills them; the writes themselves are the real ones. The work is only
what the kill points need: a copy of `baseline` that lost its sampled shard, the two
score shards and one tree search (and what is computed from them).

What a user sees after kill -9 (and what these tests replay):
  1. the next run stops with Snakemake's "Directory cannot be locked": run
     `snakemake --unlock` (the killed Snakemake could not remove its lock);
  2. a job killed mid-write left no output (writes are temporary file + rename), so it
     simply runs again;
  3. a job killed after an output was renamed into place but before Snakemake recorded
     the job stops the next run with "The files below seem to be incomplete". Each
     such file is whole (an output only ever appears whole): `snakemake
     --cleanup-metadata <file>` keeps it, `--rerun-incomplete` recomputes the job. A
     job with several outputs (a tree search writes leaves, then results) that was
     killed between them reruns as a whole either way, because an output is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
from conftest import (
    TINY,
    copy_run,
    open_db,
    snakemake,
    snakemake_command,
    snakemake_env,
)

pytestmark = pytest.mark.integration

FAULTS = Path(__file__).resolve().parent / "faultinject"
MODEL = "smollm2-135m"
SAMPLED = "p00000-00006_s0000-0004.parquet"  # TINY: 6 problems x 4 samples, one shard
PRMS = ("logprob", "value-head")
TABLES = ("problems", "models", "caches", "samples", "grades", "scores", "replay")  # at least
# What measured wall-clock times (pipeline/analysis/latency.py) decide: a rerun job takes its own time
MEASURED = {"replay": "EXCLUDE (seconds, load_s, device)", "adaptive_problems": "EXCLUDE (seconds)"}
# choices made in measured seconds, and their nested-CV standard errors
MEASURED_ROWS = {t: "WHERE convention <> 'seconds'" for t in ("held_out_problems", "held_out_se")}


# ------------------------------------------------------------------------- helpers


def start(workdir: Path, *args: str, hold: list[dict] | None = None) -> subprocess.Popen:
    """Snakemake in the background, in its own process group (killed as a whole)."""
    env = snakemake_env()
    if hold:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FAULTS), env.get("PYTHONPATH")]))
        env["FAULT_PAUSE"] = json.dumps(hold)
    log = open(workdir / f"run-{time.monotonic_ns()}.log", "w")
    proc = subprocess.Popen(snakemake_command(workdir, TINY, *args), cwd=workdir, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = Path(log.name)
    log.close()
    return proc


def wait_for(condition, proc: subprocess.Popen, timeout: float = 480):
    """Poll `condition` until it returns something truthy; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) first:\n{describe(proc)}")
        time.sleep(0.05)
    kill(proc)
    pytest.fail(f"timed out:\n{describe(proc)}")


def describe(proc: subprocess.Popen) -> str:
    """The end of the Snakemake log and of the newest job log."""
    text = proc.log_path.read_text()[-3000:]
    logs = sorted((proc.log_path.parent / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
    if logs:
        text += f"\n--- {logs[-1]}:\n" + logs[-1].read_text(errors="replace")[-3000:]
    return text


def kill(proc: subprocess.Popen) -> None:
    """kill -9 the workflow: Snakemake, its jobs and the engines they started."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail("processes of the killed workflow are still alive")


def temp_files(dest: Path) -> list[Path]:
    """Temporary files of a write of `dest` (pipeline.core.io._atomic names)."""
    return sorted(p for p in dest.parent.glob(f".{dest.name}.*.tmp")) if dest.parent.is_dir() else []


def release(tmp: Path) -> None:
    Path(f"{tmp}.go").touch()


def identity(paths) -> dict[Path, tuple[int, int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in paths}


def caches(run: Path) -> list[Path]:
    return sorted(p for d in ("samples", "scores", "search") for p in (run / "results" / d).rglob("*.parquet"))


def tables(run: Path) -> dict[str, list[tuple]]:
    """Every table of the database but provenance (which records when it was made) and
    the measured wall-clock times (a rerun job takes its own time)."""
    with open_db(run) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall()]
        assert set(TABLES) <= set(names)
        return {t: con.execute(f"SELECT * {MEASURED.get(t, '')} FROM {t} {MEASURED_ROWS.get(t, '')} ORDER BY ALL")
                .fetchall()
                for t in names if t not in ("provenance", "timings")}


def output(proc) -> str:
    return proc.stdout + proc.stderr


def replay_outputs(run: Path) -> list[Path]:
    return [run / "results" / "replay" / "arith" / f"{MODEL}.parquet"] + [
        run / "results" / "replay_prm" / "arith" / MODEL / f"{prm}.parquet" for prm in PRMS
    ]


def search_outputs(run: Path) -> list[Path]:
    """The outputs (results, leaves) of the config's quickest tree-search job by its
    Snakemake benchmark, if the config has a search."""
    bench = run / "results" / "benchmarks" / "search"
    timed = sorted((float(t.read_text().splitlines()[1].split("\t")[0]), t) for t in bench.rglob("*.tsv"))
    if not timed:
        return []
    job = run / "results" / "search" / timed[0][1].relative_to(bench).with_suffix("")
    return [job.with_suffix(".parquet"), job.with_suffix(".leaves.parquet")]


def jobs_run(log: str) -> list[str]:
    return [line.split()[-1].rstrip(":") for line in log.splitlines() if line.startswith(("rule ", "localrule "))]


# --------------------------------------------------------------------------- tests


def test_kill_and_resume(baseline, tmp_path):
    run = copy_run(baseline, tmp_path / "run")
    (sampled,) = (run / "results" / "samples" / "arith" / MODEL).glob(f"*/{SAMPLED}")
    key = sampled.parent.name
    scores = [run / "results" / "scores" / "arith" / MODEL / key / prm / SAMPLED for prm in PRMS]
    searched = search_outputs(run)
    reference = pl.read_parquet(sampled)
    # Lost: the sampled shard, its scores, one tree search, everything computed from
    # them (Snakemake does not remake a missing intermediate file while the outputs
    # made from it are in place) and the database.
    for f in (sampled, *scores, *searched, run / "results" / "grades" / "arith" / MODEL / f"{key}.parquet",
              *replay_outputs(run), run / "results" / "inference.duckdb"):
        f.unlink()
    finished = identity(caches(run))  # what survives from the uninterrupted run

    # 1. generate, killed in the middle of writing the shard
    proc = start(run, "--until", "generate", hold=[{"match": "results/samples/*.parquet"}])
    (half,) = wait_for(lambda: temp_files(sampled), proc)
    kill(proc)
    assert half.exists() and not sampled.exists(), "a half-written shard appeared under its name"

    # 2. the killed Snakemake left its lock: the next run says so, --unlock clears it
    refused = snakemake(run, TINY, check=False)
    assert refused.returncode != 0 and "Directory cannot be locked" in output(refused)
    snakemake(run, TINY, "--unlock")

    # 3. generate again, killed after the shard is in place, before the job ends
    proc = start(run, "--until", "generate", hold=[{"match": "results/samples/*.parquet", "when": "after_rename"}])
    wait_for(sampled.exists, proc)
    kill(proc)
    assert not half.exists(), "the stale temporary file of the killed write is still there"
    # the rerun shard reproduces the uninterrupted run's samples bit for bit (engine
    # seeded from (key, shard)); a finished shard is never regenerated from here on
    assert pl.read_parquet(sampled).equals(reference), "a regenerated shard differs from the first one"
    finished |= identity([sampled])

    # 4. Snakemake had not recorded the job: it calls the shard incomplete rather than
    #    trusting it; the file is whole (atomic writes), so the user keeps it
    snakemake(run, TINY, "--unlock")
    incomplete = snakemake(run, TINY, "-n", check=False)
    assert incomplete.returncode != 0 and "seem to be incomplete" in output(incomplete)
    assert str(sampled.relative_to(run)) in output(incomplete)
    snakemake(run, TINY, "--cleanup-metadata", str(sampled.relative_to(run)))

    # 5. score: the first score shard finishes, the second is killed mid-write
    proc = start(run, "--until", "score", hold=[{"match": "results/scores/*.parquet"}])
    (first,) = wait_for(lambda: [p for f in scores for p in temp_files(f)], proc)
    release(first)
    done = next(f for f in scores if f.parent == first.parent)
    (other,) = [f for f in scores if f != done]
    wait_for(lambda: done.exists() and temp_files(other), proc)
    kill(proc)
    assert not other.exists()
    finished |= identity([done])

    # 6. tree search, killed mid-write of its second output: the first (the leaves) is
    #    in place, yet Snakemake does not take the job as done
    snakemake(run, TINY, "--unlock")
    rerun = []
    if searched:
        results, leaves = searched
        proc = start(run, "--until", "search", hold=[{"match": str(results.relative_to(run))}])
        wait_for(lambda: temp_files(results), proc)
        kill(proc)
        assert leaves.exists() and not results.exists()
        snakemake(run, TINY, "--unlock")
        incomplete = snakemake(run, TINY, "-n", check=False)
        assert incomplete.returncode != 0 and str(leaves.relative_to(run)) in output(incomplete)
        rerun = ["--rerun-incomplete"]  # as the message says: the job reruns as a whole

    # 7. replay, killed mid-write (the other score shard and the search may or may not
    #    have been redone by then: both fine)
    replays = replay_outputs(run)
    proc = start(run, *rerun, hold=[{"match": "results/replay*/*.parquet"}])
    wait_for(lambda: [p for f in replays for p in temp_files(f)], proc)
    kill(proc)
    finished |= identity([other] if other.exists() else [])
    if all(f.exists() for f in searched):  # a search job writes two files
        finished |= identity(searched)

    # 8. the resumed run finishes; nothing finished was redone
    snakemake(run, TINY, "--unlock")
    final = jobs_run(output(snakemake(run, TINY, *rerun)))
    assert "generate" not in final
    assert final.count("score") == (0 if other in finished else 1)
    assert final.count("search") == (0 if set(searched) <= set(finished) else 1)

    assert identity(finished) == finished, "a finished cache file was rewritten"
    assert set(caches(run)) == set(finished) | {other, *searched}
    assert not list((run / "results").rglob("*.tmp")), "a temporary file was left behind"
    assert not list((run / "results").rglob("*.go"))
    assert tables(run) == tables(baseline)


def test_second_run_on_the_same_folder_is_refused(baseline, tmp_path):
    run = copy_run(baseline, tmp_path / "run")
    replay = run / "results" / "replay" / "arith" / f"{MODEL}.parquet"
    for f in (replay, run / "results" / "inference.duckdb"):
        f.unlink()
    first = start(run, hold=[{"match": "results/replay/*.parquet"}])
    (tmp,) = wait_for(lambda: temp_files(replay), first)  # the first run holds the lock
    second = snakemake(run, TINY, check=False)
    assert second.returncode != 0 and "Directory cannot be locked" in output(second), output(second)[-3000:]
    release(tmp)
    assert first.wait(timeout=300) == 0, first.log_path.read_text()[-4000:]
    assert tables(run) == tables(baseline)


def _as_file_owner() -> list[str]:
    """A command prefix under which write permission bits count: root ignores them (so
    does Snakemake's protection); `unshare --user` drops that privilege."""
    if os.geteuid() != 0:
        return []
    if shutil.which("unshare") and subprocess.run(["unshare", "--user", "true"]).returncode == 0:
        return ["unshare", "--user"]
    pytest.skip("running as root without user namespaces: write protection cannot apply")


def test_caches_are_write_protected(baseline, tmp_path):
    run = copy_run(baseline, tmp_path / "run")
    files = caches(run)
    assert files and all(p.stat().st_mode & 0o222 == 0 for p in files), "samples/scores must be read-only"
    before = identity(files)
    # forcing the expensive rules to rerun fails before any engine starts
    proc = subprocess.run([*_as_file_owner(), *snakemake_command(run, TINY, "--forcerun", "generate", "score")],
                          capture_output=True, text=True, env=snakemake_env(), cwd=run, timeout=300)
    assert proc.returncode != 0 and "Write-protected output files" in output(proc), output(proc)[-3000:]
    assert identity(files) == before
