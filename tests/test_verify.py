"""Cache integrity (pipeline/core/integrity.py, pipeline/core/layout.py, pipeline/verify.py)
on a small synthetic results folder written the way the stages write (io.write_parquet
after integrity.check_inputs; grades and replays by the real stage mains): a damaged
file is named by the stage that reads it and by `verify`, with what is wrong and the
command that regenerates it; regeneration removes exactly what Snakemake needs; files
written before checksums are adopted; a write onto a full file system leaves nothing.
The same checks on the files of a real run: tests/test_faults.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import polars as pl
import pytest

from pipeline import grading, replay, verify
from pipeline.core import integrity, io, layout
from pipeline.engine import models

KEY, TRAIN_KEY, ROLL_KEY, SEARCH_KEY = "aaaaaaaaaaaa", "bbbbbbbbbbbb", "cccccccccccc", "dddddddddddd"
SHARD = "p00000-00002_s0000-0002"
SAMPLES = f"samples/arith/m/{KEY}/{SHARD}.parquet"
SCORES = f"scores/arith/m/{KEY}/vh/{SHARD}.parquet"
GRADES = f"grades/arith/m/{KEY}.parquet"
TRAIN = f"samples/vh-train/m/{TRAIN_KEY}/{SHARD}.parquet"
TRAIN_GRADES = f"grades/vh-train/m/{TRAIN_KEY}.parquet"
ROLLOUTS = f"rollouts/vh-train/m/{ROLL_KEY}/rollouts.parquet"
SEARCH = f"search/arith/m/vh/rebase/{SEARCH_KEY}/4/p00000-00002.parquet"
LEAVES = SEARCH.replace(".parquet", ".leaves.parquet")
HEAD, MODEL, INFO = "prms/m/vh", "models/m/hf", "models/m/info.json"
REPLAY, REPLAY_PRM = "replay/arith/m.parquet", "replay_prm/arith/m/vh.parquet"


def _safetensors(path: Path, values: int = 2) -> None:
    header = json.dumps({"w": {"dtype": "F32", "shape": [values], "data_offsets": [0, 4 * values]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * (4 * values))


def _samples(ids=("p0", "p1"), n=2) -> pl.DataFrame:
    rows = [(p, i, f"Step 1: {i} + 1 = {i + 1}\nThe answer is {i + 1}") for p in ids for i in range(n)]
    return pl.DataFrame({
        "problem_id": [r[0] for r in rows], "sample_idx": [r[1] for r in rows], "text": [r[2] for r in rows],
        "step_ends": [[len(r[2].split("\n")[0]), len(r[2])] for r in rows],
        "prompt_tokens": [10] * len(rows), "output_tokens": [12] * len(rows),
        "finish_reason": ["stop"] * len(rows), "cumulative_logprob": [-1.0] * len(rows),
    }, schema={"problem_id": pl.String, "sample_idx": pl.Int32, "text": pl.String, "step_ends": pl.List(pl.Int32),
               "prompt_tokens": pl.Int32, "output_tokens": pl.Int32, "finish_reason": pl.String,
               "cumulative_logprob": pl.Float64})


def _scores(samples: pl.DataFrame, prm: str = "vh") -> pl.DataFrame:
    return samples.select("problem_id", "sample_idx").with_columns(
        scores=pl.Series([[0.5, 0.7]] * samples.height, dtype=pl.List(pl.Float64)),
        prm_tokens=pl.lit(20, pl.Int32), prm=pl.lit(prm), prm_params=pl.lit(10, pl.Int64))


def build(root: Path) -> Path:
    """A results folder with one file of every kind, written in workflow order."""
    r = root / "results"
    problems = pl.DataFrame({"problem_id": ["p0", "p1"], "question": ["1 + 0?", "1 + 1?"], "answer": ["1", "2"],
                             "metadata": ["{}", "{}"]})
    io.write_parquet(problems, r / "problems/arith.parquet")
    io.write_parquet(problems, r / "problems/vh-train.parquet")
    hf = r / MODEL
    hf.mkdir(parents=True)
    (hf / "config.json").write_text("{}")
    _safetensors(hf / "model.safetensors")
    integrity.seal_dir(hf)
    io.write_json({"model": "m", "path": "embedded:smollm2-135m", "model_dir": f"results/{MODEL}",
                   "params_total": 10}, r / INFO)
    for rel in (SAMPLES, TRAIN):
        integrity.check_inputs([r / f"problems/{rel.split('/')[1]}.parquet"])
        io.write_parquet(_samples(), r / rel)
    for rel, shard in ((GRADES, SAMPLES), (TRAIN_GRADES, TRAIN)):
        grading.main(["--problems", str(r / f"problems/{shard.split('/')[1]}.parquet"), "--out", str(r / rel),
                      str(r / shard)])
    integrity.check_inputs([r / TRAIN])
    io.write_parquet(pl.DataFrame({"problem_id": ["p0"], "sample_idx": [0], "step": [0], "kind": ["rollouts"],
                                   "k": [1], "reached": [1]}), r / ROLLOUTS)
    head = r / HEAD
    head.mkdir(parents=True)
    (head / "value_head.json").write_text(json.dumps({"hidden_size": 2, "training": {}}))
    _safetensors(head / "weights.safetensors")
    integrity.seal_dir(head)
    integrity.check_inputs([r / SAMPLES, r / HEAD])
    io.write_parquet(_scores(_samples()), r / SCORES)
    integrity.check_inputs([r / "problems/arith.parquet", r / HEAD])
    io.write_parquet(pl.DataFrame({"problem_id": ["p0", "p1"], "leaf": [0, 0], "text": ["a", "b"],
                                   "scores": [[0.5], [0.5]]}), r / LEAVES)
    io.write_parquet(pl.DataFrame({"problem_id": ["p0", "p1"], "algorithm": ["rebase"] * 2, "budget": [4, 4],
                                   "selection": ["majority"] * 2, "accuracy": [1.0, 0.0]}), r / SEARCH)
    replay.main(["--grades", str(r / GRADES), "--shards", str(r / SAMPLES), "--info", str(r / INFO),
                 "--out", str(r / REPLAY)])
    replay.main(["--grades", str(r / GRADES), "--shards", str(r / SAMPLES), "--info", str(r / INFO), "--prm", "vh",
                 "--scores", str(r / SCORES), "--num-draws", "10", "--out", str(r / REPLAY_PRM)])
    import duckdb

    integrity.check_inputs([r / p for p in (SAMPLES, GRADES, SCORES, SEARCH, REPLAY, REPLAY_PRM)])
    with duckdb.connect(str(r / "inference.duckdb")) as con:
        con.execute("CREATE TABLE provenance (key VARCHAR, value VARCHAR)")
        con.execute("INSERT INTO provenance VALUES ('inputs', ?)", [json.dumps(integrity.verified_inputs())])
    return r


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template")
    cwd = os.getcwd()
    os.chdir(root)  # paths in it are relative to its workflow folder, as in a run
    try:
        build(Path("."))
        return root / "results"
    finally:
        os.chdir(cwd)


@pytest.fixture
def results(tmp_path, monkeypatch, template) -> Path:
    """A copy of the template (modification times kept), the working directory its parent."""
    shutil.copytree(template, tmp_path / "results")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results"


@pytest.fixture
def run_verify(capsys):
    """`python -m pipeline.verify RESULTS ARGS` in this process: (exit code, output)."""
    def run(results: Path, *args: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            verify.main([str(results), *args])
            rc = 0
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str):
                print(e.code)
        out = capsys.readouterr()
        return rc, out.out + out.err
    return run


def listing(out: str, states=("DAMAGED", "NO RECORD", "STALE", "LEFTOVER")) -> dict[str, tuple[str, str]]:
    """{path: (state, note)} of verify's listing."""
    rows = {}
    for line in out.splitlines():
        for state in states:
            if line.startswith(state + " "):
                rel, _, note = line[len(state):].strip().partition("  ")
                rows[rel] = (state, note)
    return rows


def removed(out: str) -> set[str]:
    return set(listing(out, ("REMOVE",)))


# ------------------------------------------------------------------------- damage


def truncate(p: Path) -> str:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    return "truncated"


def flip(p: Path) -> str:
    data = bytearray(p.read_bytes())
    data[len(data) // 3] ^= 0x20
    p.write_bytes(bytes(data))
    return "does not match its checksum"


def empty(p: Path) -> str:
    p.write_bytes(b"")
    return "empty (0 bytes)"


def unrecord(p: Path) -> str:
    """The same rows written without a checksum record (as before checksums existed)."""
    pl.read_parquet(p).write_parquet(p)
    return "no checksum record"


DAMAGES = (truncate, flip, empty, unrecord)


def keep_mtime(p: Path, damage) -> str:
    st = p.stat()
    p.chmod(0o644)
    what = damage(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # as a failed copy keeps it
    return what


def test_every_byte_and_every_cut_of_a_parquet_file_is_detected(tmp_path):
    f = tmp_path / "x.parquet"
    io.write_parquet(pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}), f, metadata={"k": "v"})
    good = f.read_bytes()
    assert integrity.digest(f) == io.read_parquet_metadata(f, integrity_keys=True)[integrity.RECORD]
    assert pl.read_parquet(f).equals(pl.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]}))
    def caught(data: bytes) -> bool:  # an error, or no record left (a flip in its key)
        try:
            return integrity.parquet_digest(f, data) is None
        except ValueError:
            return True

    assert all(caught(good[:i] + bytes([good[i] ^ (1 << i % 8)]) + good[i + 1:]) for i in range(len(good)))
    for i in range(len(good)):
        with pytest.raises(ValueError, match="truncated|empty|not a Parquet|damaged footer"):
            integrity.parquet_digest(f, good[:i])


def test_directory_records(tmp_path):
    d = tmp_path / "results" / HEAD
    d.mkdir(parents=True)
    (d / "value_head.json").write_text("{}")
    _safetensors(d / "weights.safetensors")
    integrity.seal_dir(d)
    integrity.digest(d)
    (d / ".snakemake_timestamp").touch()  # Snakemake's, never listed
    integrity.digest(d)
    with pytest.raises(integrity.Damaged, match="unexpected"):
        (d / "extra.bin").write_bytes(b"x")
        integrity.digest(d)
    (d / "extra.bin").unlink()
    flip(d / "weights.safetensors")
    with pytest.raises(integrity.Damaged, match="weights.safetensors does not match"):
        integrity.digest(d)
    (d / "weights.safetensors").unlink()
    with pytest.raises(integrity.Damaged, match="weights.safetensors is missing"):
        integrity.digest(d)
    (d / integrity.DIR_RECORD).unlink()
    with pytest.raises(integrity.Damaged, match="no checksum record") as e:
        integrity.digest(d)
    assert e.value.unrecorded and "--adopt-legacy" in str(e.value)


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("rel", [SAMPLES, SCORES, SEARCH])
def test_a_damaged_file_is_named_by_its_reader_and_by_verify(results, rel, damage, run_verify):
    what = keep_mtime(results / rel, damage)
    # the stage that reads it: grade (samples), replay_prm (scores), aggregate (searches)
    with pytest.raises(integrity.Damaged) as e:
        if rel == SAMPLES:
            grading.main(["--problems", str(results / "problems/arith.parquet"), "--out", "g.parquet",
                          str(results / rel)])
        elif rel == SCORES:
            replay.main(["--grades", str(results / GRADES), "--shards", str(results / SAMPLES), "--info",
                         str(results / INFO), "--prm", "vh", "--scores", str(results / rel), "--out", "r.parquet"])
        else:
            from pipeline import aggregate

            aggregate.main(["--manifest", json.dumps({"problems": {}, "replay": {}, "caches": [], "search": [
                {"files": [str(results / rel)]}]}), "--config", "{}", "--db", "x", "--plot", "x", "--plot-n", "x",
                "--summary", "x", "--tables", "x"])
    msg = str(e.value)
    assert str(results / rel) in msg and what in msg and "python -m pipeline.verify" in msg
    assert ("--adopt-legacy" in msg) == (damage is unrecord)
    assert not Path("g.parquet").exists() and not Path("r.parquet").exists()
    rc, out = run_verify(results)
    assert rc == 1
    state, note = listing(out)[rel]
    assert (state, what in note) == ("NO RECORD" if damage is unrecord else "DAMAGED", True), out
    assert {k for k, (s, _) in listing(out).items() if s in ("DAMAGED", "NO RECORD")} == {rel}, out


def test_aggregate_checks_the_leaves_where_the_reference_protocol_reads_them(results):
    from pipeline import aggregate

    keep_mtime(results / LEAVES, truncate)
    manifest = {"problems": {}, "replay": {}, "caches": [], "search": [{"files": [str(results / SEARCH)]}]}
    assert aggregate.manifest_files(manifest) == [str(results / SEARCH)]
    with pytest.raises(integrity.Damaged, match=re.escape(f"{results / LEAVES} is damaged: truncated")):
        aggregate.main(["--manifest", json.dumps(manifest), "--config",
                        json.dumps({"analysis": {"compat": {"protocol": "reference"}}}), "--db", "x", "--plot", "x",
                        "--plot-n", "x", "--summary", "x", "--tables", "x"])


def test_the_stage_error_is_one_message(results):
    keep_mtime(results / SAMPLES, truncate)
    proc = subprocess.run([sys.executable, "-m", "pipeline.grading", "--problems", "results/problems/arith.parquet",
                           "--out", "g.parquet", f"results/{SAMPLES}"], capture_output=True, text=True,
                          cwd=results.parent)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"ERROR: results/{SAMPLES} is damaged: truncated: {(results / SAMPLES).stat().st_size:,} bytes that do not "
        "end with a Parquet footer. Regenerate it, and only what was computed from it: python -m pipeline.verify "
        "results --regenerate -- --cores all (with your run's other snakemake options, e.g. --configfile)"]


def test_model_and_value_head_are_checked_where_they_are_loaded(results):
    assert models.model_dir_of(results / INFO) == str((results / MODEL).resolve())
    flip(results / MODEL / "model.safetensors")
    with pytest.raises(integrity.Damaged, match="model.safetensors does not match its checksum"):
        models.model_dir_of(results / INFO)
    from pipeline.prm.loading import open_prm

    (results / HEAD / "value_head.json").write_text("{}")
    with pytest.raises(integrity.Damaged, match="value_head.json does not match"):
        open_prm({"format": "value-head"}, policy_dir="x", head_dir=str(results / HEAD))


# ------------------------------------------------------------------------- verify


def test_a_clean_folder_verifies(results, run_verify):
    rc, out = run_verify(results)
    assert rc == 0, out
    assert "0 ok" not in out and "damaged" not in out


@pytest.mark.parametrize("damaged, expected", [
    (SAMPLES, {SAMPLES, SCORES}),  # its score shards: protected, and would rerun
    (SCORES, {SCORES}),
    (LEAVES, {SEARCH, LEAVES}),  # one job
    (TRAIN, {TRAIN, TRAIN_GRADES}),  # the head is fitted on the grades: they must not rerun later
    (ROLLOUTS, {ROLLOUTS}),
    (HEAD + "/weights.safetensors", {HEAD, SCORES}),  # every score shard it made
    (MODEL + "/model.safetensors", {MODEL, INFO}),
    (GRADES, {GRADES}),
    ("problems/arith.parquet", {"problems/arith.parquet"}),  # caches read it through ancient()
])
def test_remove_damaged_removes_what_regeneration_needs(results, damaged, expected, run_verify):
    flip(results / damaged)
    (results / f"samples/arith/m/{KEY}/.{SHARD}.parquet.abcd1234.tmp").write_bytes(b"half")
    rc, out = run_verify(results, "--remove-damaged")
    assert rc == 0, out
    assert removed(out) == expected, out
    assert not any((results / rel).exists() for rel in expected)
    assert not (results / f"samples/arith/m/{KEY}/.{SHARD}.parquet.abcd1234.tmp").exists()
    targets = " ".join(f"results/{rel}" for rel in sorted(expected))
    assert f"snakemake --cores all {targets}" in out
    rc, out = run_verify(results)
    assert not [k for k, (s, _) in listing(out).items() if s == "DAMAGED"], out


def test_derived_tables_are_checked_against_their_inputs(results, run_verify):
    # a sample shard re-made (the same rows, another timing record: another file)
    integrity.check_inputs([results / "problems/arith.parquet"])
    io.write_parquet(_samples(), results / SAMPLES, metadata={"timing": "rerun"})
    rc, out = run_verify(results)
    rows = listing(out)
    assert rc == 1
    assert {k for k, (s, _) in rows.items() if s == "STALE"} == {GRADES, SCORES, REPLAY, REPLAY_PRM,
                                                                   "inference.duckdb"}, out
    assert rows[GRADES][1] == f"its input {SAMPLES} changed since it was computed (another checksum)"
    # scores that do not fit their samples (another number of steps)
    integrity.check_inputs([results / SAMPLES, results / HEAD])
    bad = _scores(_samples()).with_columns(scores=pl.Series([[0.5]] * 4, dtype=pl.List(pl.Float64)))
    io.write_parquet(bad, results / SCORES)
    rc, out = run_verify(results)
    assert "has 2 steps, 1 scores" in listing(out)[SCORES][1], out


def test_files_written_before_checksums_are_adopted(results, run_verify):
    """A folder written before checksums: no records, no recorded inputs (the database's
    provenance has none), modification times as Snakemake left them."""
    legacy = [rel for rel in (e.rel for e in verify.scan(results)[0]) if rel.endswith(".parquet") and rel != TRAIN]
    for rel in legacy:
        keep_mtime(results / rel, unrecord)
    for d in (HEAD, MODEL):
        (results / d / integrity.DIR_RECORD).unlink()
    import duckdb

    with duckdb.connect(str(results / "inference.duckdb")) as con:
        con.execute("DELETE FROM provenance WHERE key = 'inputs'")
    keep_mtime(results / TRAIN, truncate)  # broken: never adopted
    rc, out = run_verify(results, "--remove-damaged")
    rows = listing(out)
    assert {k for k, (s, _) in rows.items() if s == "NO RECORD"} == {*legacy, HEAD, MODEL}, out
    assert rows[TRAIN][0] == "DAMAGED"
    assert removed(out) == {TRAIN, TRAIN_GRADES}, out  # sound legacy files are kept
    assert f"kept {len(legacy) + 1} sound files without a checksum record" in out  # the grades are gone
    rc, out = run_verify(results, "--adopt-legacy")
    assert rc == 0 and f"adopted {len(legacy) + 1} files" in out, out
    legacy = [SAMPLES, SCORES, SEARCH, GRADES]
    ledger = (results / integrity.LEDGER).read_text()
    assert f"  {SAMPLES}\n" in ledger and f"  {HEAD}/weights.safetensors\n" in ledger
    integrity.check_inputs([results / rel for rel in legacy] + [results / HEAD])  # the stages accept them
    flip(results / SAMPLES)
    with pytest.raises(integrity.Damaged, match="does not match its adopted checksum"):
        integrity.check(results / SAMPLES)
    rc, out = run_verify(results)
    assert listing(out)[SAMPLES][0] == "DAMAGED"
    # once re-made with its own record, its line leaves the ledger at the next adoption
    integrity.check_inputs([results / "problems/arith.parquet"])
    io.write_parquet(_samples(), results / SAMPLES, metadata={"timing": "rerun"})
    run_verify(results, "--adopt-legacy")
    assert f"  {SAMPLES}\n" not in (results / integrity.LEDGER).read_text()


def test_a_killed_search_job_and_a_locked_folder(results, run_verify):
    (results / SEARCH).unlink()
    rc, out = run_verify(results)
    assert listing(out)[LEAVES] == ("DAMAGED", f"the other output of its job, {SEARCH}, is missing (a killed job)")
    (results.parent / ".snakemake" / "locks").mkdir(parents=True)
    (results.parent / ".snakemake" / "locks" / "0.input.lock").touch()
    rc, out = run_verify(results, "--remove-damaged")
    assert rc != 0 and "nothing removed" in out and (results / LEAVES).exists()


def test_layout_names_every_kind():
    for rel, kind in ((SAMPLES, "samples"), (SCORES, "scores"), (SEARCH, "search"), (LEAVES, "leaves"),
                      (ROLLOUTS, "rollouts"), (HEAD, "value_head"), (MODEL, "model_dir"), (INFO, "info"),
                      (GRADES, "grades"), (REPLAY, "replay"), (REPLAY_PRM, "replay_prm"),
                      ("inference.duckdb", "database"), ("problems/arith.parquet", "problems")):
        assert layout.parse(rel).kind == kind
    root, e = layout.locate(f"/data/run 1/results/{SCORES}")
    assert (str(root), e.kind, e.get("shard"), e.get("prm")) == ("/data/run 1/results", "scores", SHARD, "vh")
    assert layout.parse("plots/accuracy_vs_flops.png") is None


# ------------------------------------------------------------------------- a full disk


def _mount_namespace(scratch: Path) -> list[str]:
    """A command prefix that runs in a private mount namespace where tmpfs can be mounted
    (root: unshare --mount; otherwise a user namespace mapping us to root)."""
    scratch.mkdir(exist_ok=True)
    for prefix in (["unshare", "--mount"], ["unshare", "--user", "--map-root-user", "--mount"]):
        if shutil.which("unshare") and subprocess.run(
                [*prefix, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {scratch}"], capture_output=True).returncode == 0:
            return prefix
    pytest.skip("this machine cannot mount a small file system (no unshare, or mounts are not permitted): "
                "the full-disk checks need one")


def test_a_write_onto_a_full_disk_leaves_nothing(tmp_path):
    """ENOSPC while the data, the checksum or the rename is written: the destination never
    appears and no temporary file stays; with space the same write succeeds."""
    prefix = _mount_namespace(tmp_path / "scratch")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = textwrap.dedent(f"""
        import os, polars as pl
        from pipeline.core import integrity, io
        df = pl.DataFrame({{"a": list(range(20000)), "b": [os.urandom(8).hex() for _ in range(20000)]}})
        try:
            io.write_parquet(df, {str(disk / "out.parquet")!r})
        except OSError as e:
            print("ENOSPC" if e.errno == 28 else e)
        print(sorted(os.listdir({str(disk)!r})))
        os.remove({str(disk / "filler")!r})
        io.write_parquet(df, {str(disk / "out.parquet")!r})
        print(integrity.digest({str(disk / "out.parquet")!r}) == io.read_parquet_metadata({str(disk / "out.parquet")!r}, integrity_keys=True)[integrity.RECORD])
    """)
    (tmp_path / "write.py").write_text(script)
    cmd = (f"mount -t tmpfs -o size=512k tmpfs {disk} && head -c 450000 /dev/zero > {disk}/filler && "
           f"{sys.executable} {tmp_path / 'write.py'}")
    proc = subprocess.run([*prefix, "sh", "-c", cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["ENOSPC", "['filler']", "True"], proc.stdout + proc.stderr[-2000:]


# ------------------------------------------------------------------------- a real run


@pytest.mark.integration
def test_a_real_run_verifies_and_the_layout_mirrors_its_rules(baseline, tmp_path, run_verify):
    """Every output of the session's real run is a kind of pipeline/core/layout.py, with
    the inputs Snakemake recorded for it among those the layout names; the run verifies."""
    from conftest import TINY, copy_run, snakemake

    run = copy_run(baseline, tmp_path / "run")
    rc, out = run_verify(run / "results")
    assert rc == 0 and "damaged" not in out, out
    summary = snakemake(run, TINY, "--detailed-summary").stdout.splitlines()
    header = summary[0].split("\t")
    index = layout.Index(verify.scan(run / "results")[0])
    seen = set()
    for line in summary[1:]:
        row = dict(zip(header, line.split("\t")))
        rel = row["output_file"].removeprefix("results/")
        e = layout.parse(rel)
        if e is None:
            assert not rel.endswith((".parquet", ".duckdb")) and "/hf" not in rel, rel
            continue
        seen.add(e.kind)
        named = {x.rel for x, _ in layout.inputs(e, index)}
        recorded = {f.removeprefix("results/") for f in row["input-file(s)"].split(",") if f.startswith("results/")}
        assert {f for f in recorded if layout.parse(f)} <= named, (rel, recorded - named)
    assert seen == {k.name for k in layout.KINDS}, seen
