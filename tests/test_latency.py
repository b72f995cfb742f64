"""Timing records (pipeline.core.timing) and seconds per curve point (pipeline.analysis.latency), on
synthetic timings and files: no engine runs."""

from __future__ import annotations

import json

import duckdb
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.analysis import latency
from pipeline.core import io, timing

CPU, GPU = "CPU A (2 cores)", "GPU B x1"


# --------------------------------------------------------------------------- records


def test_metadata_round_trip(tmp_path):
    df = pl.DataFrame({"a": [1, 2], "s": ["x", "y"]})
    path = tmp_path / "x.parquet"
    watch = timing.Stopwatch()
    watch.seconds.update(load=1.5, work=2.25)
    rec = timing.record(watch, device=CPU, problems=2, samples=4, output_tokens=30)
    io.write_parquet(df, path, metadata=timing.as_metadata(rec))
    assert pl.read_parquet(path).equals(df)  # the data is untouched
    back = timing.read_record(path)
    assert back == rec
    assert (back["load_s"], back["work_s"], back["samples"], back["prm_tokens"]) == (1.5, 2.25, 4, 0)
    assert back["engine"] == timing.engine_versions()
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]  # atomic: no temporary left


def test_metadata_round_trip_through_pyarrow(tmp_path, monkeypatch):
    """Polars without a `metadata` argument: the pyarrow path writes the same record."""
    monkeypatch.setattr(io, "_POLARS_WRITES_METADATA", False)
    df = pl.DataFrame({"a": [1], "l": [[1.0, 2.0]]})
    path = tmp_path / "x.parquet"
    io.write_parquet(df, path, metadata={timing.KEY: json.dumps({"load_s": 1, "work_s": 2, "device": CPU})})
    assert pl.read_parquet(path).equals(df)
    assert timing.read_record(path)["work_s"] == 2


def test_unmeasured_file_reads_as_none(tmp_path):
    path = tmp_path / "old.parquet"
    io.write_parquet(pl.DataFrame({"a": [1]}), path)  # as written before timing existed
    assert io.read_parquet_metadata(path) == {}
    assert timing.read_record(path) is None


@pytest.mark.parametrize("value, message", [
    ("not json", "not JSON"), ('{"load_s": 1, "device": "x"}', "lacks"),
    ('{"load_s": -1, "work_s": 1, "device": "x"}', "non-negative"),
])
def test_malformed_record_names_the_file(tmp_path, value, message):
    path = tmp_path / "bad.parquet"
    io.write_parquet(pl.DataFrame({"a": [1]}), path, metadata={timing.KEY: value})
    with pytest.raises(ValueError, match=f"bad.parquet.*{message}"):
        timing.read_record(path)


def test_stopwatch_adds_up_phases():
    watch = timing.Stopwatch()
    for _ in range(2):
        with watch.phase("work"):
            pass
    with pytest.raises(RuntimeError), watch.phase("load"):
        raise RuntimeError("a failing load is still timed")
    assert watch["work"] > 0 and watch["load"] > 0 and watch["other"] == 0
    with pytest.raises(ValueError, match="unknown count"):
        timing.record(watch, device=CPU, tokens=3)


def test_device_description():
    assert timing.describe_device("cpu").endswith(f"({timing.usable_cores()} cores)")
    assert timing.usable_cores() >= 1
    assert timing.engine_gpus({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}) == 4
    assert timing.engine_gpus(None) == 1
    assert timing.job_device(CPU, CPU) == CPU
    assert timing.job_device(GPU, CPU) == f"{GPU}, PRM on {CPU}"


# --------------------------------------------------------------------------- arithmetic


def timings(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame([{**{c: None for c in latency.TIMINGS}, **r} for r in rows], schema=latency.TIMINGS)


def gen(kind, file, work, samples, load=2.0, device=CPU, problems=2):
    return {"stage": "generate", "dataset": "d", "model": "m", "kind": kind, "key": "k", "file": file,
            "work_s": work, "load_s": load, "samples": samples, "problems": problems, "device": device}


def scored(file, work, samples, load=1.0, device=CPU):
    return {"stage": "score", "dataset": "d", "model": "m", "prm": "p", "key": "k", "file": file,
            "work_s": work, "load_s": load, "samples": samples, "problems": 2, "device": device}


def searched(file, work, problems, load=5.0, device=CPU):
    return {"stage": "search", "dataset": "d", "model": "m", "prm": "p", "search": "rebase", "key": "s",
            "budget": 2, "file": file, "work_s": work, "load_s": load, "samples": 2 * problems,
            "problems": problems, "device": device}


def replay(rows: list[tuple]) -> pl.DataFrame:
    """(strategy, prm, n, problem_id) rows of dataset d, model m."""
    return pl.DataFrame(
        [{"dataset": "d", "model": "m", "prm": p, "strategy": s, "n": n, "problem_id": pid, "accuracy": 0.5}
         for s, p, n, pid in rows],
        schema={"dataset": pl.String, "model": pl.String, "prm": pl.String, "strategy": pl.String,
                "n": pl.Int32, "problem_id": pl.String, "accuracy": pl.Float64},
    )


# Two problems (a, b) x N = 8 samples in two shards: 16 samples, 6 + 10 = 16 s of
# generation = 1 s per sample = 8 s per problem; the greedy cache 3 s for 2 samples;
# the PRM 4 s for the 16 samples = 0.25 s per sample; REBASE at width 2 in two blocks,
# (a) 6 s for 1 problem and (b) 9 s for 1 problem.
TIMINGS = [
    gen("sampled", "s0.parquet", 6.0, 8, load=2.0), gen("sampled", "s1.parquet", 10.0, 8, load=4.0),
    gen("greedy", "g.parquet", 3.0, 2, load=1.0),
    scored("c0.parquet", 1.0, 8, load=1.0), scored("c1.parquet", 3.0, 8, load=3.0),
    searched("r0.parquet", 6.0, 1, load=5.0), searched("r1.parquet", 9.0, 1, load=7.0),
]
SEARCH_FILES = pl.DataFrame({"file": ["r0.parquet", "r1.parquet"], "problem_id": ["a", "b"]})
ROWS = [
    ("majority", None, 1, "a"), ("majority", None, 4, "a"), ("coverage", None, 8, "b"),
    ("greedy", None, 1, "a"), ("best_of_n", "p", 4, "a"), ("weighted_majority", "p", 8, "b"),
    ("rebase_majority", "p", 2, "a"), ("rebase_best_of_n", "p", 2, "b"), ("future_strategy", None, 2, "a"),
]


def seconds_of(df: pl.DataFrame) -> list:
    return [None if v is None else pytest.approx(v) for v in df["seconds"].to_list()]


def test_seconds_per_point():
    out = latency.replay_seconds(replay(ROWS), timings(TIMINGS), SEARCH_FILES)
    assert out.select("strategy", "n", "problem_id").equals(replay(ROWS).select("strategy", "n", "problem_id"))
    assert out["seconds"].to_list() == [
        pytest.approx(1.0),          # majority@1: 1/8 of the 8 s per problem
        pytest.approx(4.0),          # majority@4
        pytest.approx(8.0),          # coverage@8: the whole cache
        pytest.approx(1.5),          # greedy: 3 s / 2 problems
        pytest.approx(4 * 1.25),     # best-of-4: generation + scoring of 4 samples
        pytest.approx(8 * 1.25),
        pytest.approx(6.0),          # REBASE: the block's job time per problem
        pytest.approx(9.0),
        None,                        # a strategy latency does not know: not guessed
    ]
    # model load apart: mean over the jobs, policy (+ PRM), never divided by problems
    assert out["load_s"].to_list() == [3.0, 3.0, 3.0, 1.0, 5.0, 5.0, 5.0, 7.0, None]
    assert set(out["device"].to_list()[:-1]) == {CPU} and out["device"][-1] is None


def test_mixed_devices_are_named():
    rows = [dict(r) for r in TIMINGS]
    rows[3]["device"] = rows[4]["device"] = GPU  # scoring on another device
    rows[6]["device"] = GPU  # one search block on another device
    out = latency.replay_seconds(replay(ROWS), timings(rows), SEARCH_FILES)
    devices = dict(zip(zip(out["strategy"], out["n"]), out["device"]))
    assert devices[("majority", 1)] == CPU
    assert devices[("best_of_n", 4)] == f"mixed: {CPU} | {GPU}"
    assert devices[("rebase_majority", 2)] == CPU and devices[("rebase_best_of_n", 2)] == GPU


def test_partially_measured_cache_gives_null():
    rows = [dict(r) for r in TIMINGS]
    rows[1].update(work_s=None, load_s=None, device=None)  # one sampled shard unmeasured
    rows[4].update(work_s=None, load_s=None, device=None)  # one score shard unmeasured
    rows[5].update(work_s=None, load_s=None, device=None)  # one search job (problem a) unmeasured
    out = latency.replay_seconds(replay(ROWS), timings(rows), SEARCH_FILES)
    by = dict(zip(zip(out["strategy"], out["n"]), out["seconds"]))
    assert by[("majority", 1)] is None and by[("coverage", 8)] is None and by[("best_of_n", 4)] is None
    assert by[("greedy", 1)] == pytest.approx(1.5)  # its own cache is measured
    assert by[("rebase_majority", 2)] is None and by[("rebase_best_of_n", 2)] == pytest.approx(9.0)
    loads = dict(zip(zip(out["strategy"], out["n"]), out["load_s"]))
    assert loads[("majority", 1)] == 2.0  # load: the mean over the measured jobs


def test_score_unmeasured_only_nulls_prm_points():
    rows = [dict(r) for r in TIMINGS]
    for r in rows[3:5]:
        r.update(work_s=None, load_s=None, device=None)
    out = latency.replay_seconds(replay(ROWS), timings(rows), SEARCH_FILES)
    by = dict(zip(out["strategy"], out["seconds"]))
    assert by["majority"] is not None and by["best_of_n"] is None and by["weighted_majority"] is None


def test_nothing_measured():
    out = latency.replay_seconds(replay(ROWS), timings([]), None)
    assert out["seconds"].null_count() == out.height and out["device"].null_count() == out.height


# --------------------------------------------------------------------------- reading


def write(path, measured: dict | None):
    io.write_parquet(pl.DataFrame({"problem_id": ["a", "b"]}), path,
                     metadata=timing.as_metadata(measured) if measured else None)
    return str(path)


def test_read_timings(tmp_path):
    watch = timing.Stopwatch()
    watch.seconds.update(load=1.0, work=4.0)
    rec = timing.record(watch, device=CPU, problems=2, samples=8, output_tokens=80, prompt_tokens=40)
    head = tmp_path / "head"
    head.mkdir()
    (head / "value_head.json").write_text(json.dumps({"training": {"samples": 3, "timing": rec}}))
    old_head = tmp_path / "old_head"
    old_head.mkdir()
    (old_head / "value_head.json").write_text(json.dumps({"training": {"samples": 3}}))
    manifest = {
        "caches": [{"dataset": "d", "model": "m", "kind": "sampled", "key": "k",
                    "shards": [write(tmp_path / "s0.parquet", rec), write(tmp_path / "s1.parquet", None)]}],
        "training": [{"dataset": "p-train", "model": "m", "kind": "train", "key": "t",
                      "shards": [write(tmp_path / "t.parquet", rec)]}],
        "scores": [{"dataset": "d", "model": "m", "key": "k", "prm": "p", "files": [write(tmp_path / "c.parquet", rec)]}],
        "value_heads": [{"dataset": "p-train", "model": "m", "prm": "p", "dir": str(head)},
                        {"dataset": "p-train", "model": "m", "prm": "q", "dir": str(old_head)}],
        "search": [{"dataset": "d", "model": "m", "prm": "p", "search": "rebase", "key": "s", "budget": 2,
                    "files": [write(tmp_path / "r.parquet", rec)]}],
    }
    t = latency.read_timings(manifest)
    assert t.schema == pl.Schema(latency.TIMINGS)
    assert t["stage"].to_list() == ["generate", "generate", "generate", "score", "train_value_head",
                                    "train_value_head", "search"]
    assert t["work_s"].to_list() == [4.0, None, 4.0, 4.0, 4.0, None, 4.0]
    assert t["device"].to_list() == [CPU, None, CPU, CPU, CPU, None, CPU]
    assert t.filter(stage="search")["budget"].to_list() == [2]
    assert t["file"][4].endswith("head/value_head.json")
    files = latency.search_problems(manifest["search"])
    assert files["problem_id"].to_list() == ["a", "b"]
    assert latency.search_problems([]).height == 0


# --------------------------------------------------------------------------- the view


def test_accuracy_vs_flops_seconds(tmp_path):
    base = {"dataset": "d", "model": "m", "prm": None, "aggregation": None, "accuracy": 1.0,
            "accuracy_se": 0.0, "output_tokens": 1.0, "prompt_tokens": 1.0, "flops_paper": 1.0, "flops_full": 1.0}
    rows = [
        {**base, "strategy": "majority", "n": 1, "problem_id": "a", "seconds": 1.0, "load_s": 2.0, "device": CPU},
        {**base, "strategy": "majority", "n": 1, "problem_id": "b", "seconds": 3.0, "load_s": 2.0, "device": CPU},
        {**base, "strategy": "majority", "n": 2, "problem_id": "a", "seconds": 2.0, "load_s": 2.0, "device": CPU},
        {**base, "strategy": "majority", "n": 2, "problem_id": "b", "seconds": None, "load_s": None, "device": None},
        {**base, "strategy": "rebase_majority", "n": 2, "problem_id": "a", "seconds": 5.0, "load_s": 4.0, "device": CPU},
        {**base, "strategy": "rebase_majority", "n": 2, "problem_id": "b", "seconds": 7.0, "load_s": 6.0, "device": GPU},
    ]
    db = tmp_path / "r.duckdb"
    aggregate.write_duckdb({"replay": aggregate._replay_table([pl.DataFrame(rows)])}, db)
    with duckdb.connect(str(db), read_only=True) as con:
        got = con.execute("SELECT strategy, n, seconds, load_s, device FROM accuracy_vs_flops ORDER BY strategy, n").fetchall()
    assert got == [
        ("majority", 1, 2.0, 2.0, CPU),
        ("majority", 2, None, 2.0, CPU),  # one problem unmeasured: no mean over the others
        ("rebase_majority", 2, 6.0, 5.0, f"mixed: {CPU} | {GPU}"),
    ]


def test_replay_table_without_timing_columns(tmp_path):
    """Replays built without seconds (older parts, the views' unit tests) get NULLs."""
    df = pl.DataFrame({"dataset": ["d"], "model": ["m"], "problem_id": ["a"], "strategy": ["majority"], "n": [1],
                       "accuracy": [1.0], "output_tokens": [1.0], "prompt_tokens": [1.0], "flops_paper": [1.0],
                       "flops_full": [1.0]})
    table = aggregate._replay_table([df])
    assert table.select("seconds", "load_s", "device").row(0) == (None, None, None)


# --------------------------------------------------------------------------- value head


def test_value_head_training_is_timed(tmp_path):
    """score.train loads the policy once (timed as load) and hands it to the fit: the head
    equals one fitted by train_value_head loading the policy itself."""
    pytest.importorskip("transformers")
    from test_prm import TEXT, Q, make_dir

    from pipeline import prm, score
    from pipeline.core import prompts

    policy = make_dir(tmp_path / "policy")
    texts = [TEXT.replace("5 .", f"{k % 4 + 2} .") for k in range(10)]
    ids = [f"p{k // 2}" for k in range(10)]  # 5 problems x 2 samples
    samples = pl.DataFrame({"problem_id": ids, "sample_idx": [k % 2 for k in range(10)], "text": texts,
                            "step_ends": [prompts.step_ends(t) for t in texts]},
                           schema_overrides={"sample_idx": pl.Int32, "step_ends": pl.List(pl.Int32)})
    samples.write_parquet(tmp_path / "s.parquet")
    pl.DataFrame({"problem_id": ids, "sample_idx": samples["sample_idx"], "correct": [k % 3 == 0 for k in range(10)]}
                 ).write_parquet(tmp_path / "g.parquet")
    pl.DataFrame({"problem_id": sorted(set(ids)), "question": [Q] * 5}).write_parquet(tmp_path / "q.parquet")
    spec = {"format": "value-head", "options": {"device": "cpu", "epochs": 5}, "train": {"l2": 0.01}}
    out = tmp_path / "head"
    score.train(spec=spec, policy_dir=policy, problems=str(tmp_path / "q.parquet"), shards=[str(tmp_path / "s.parquet")],
                grades=str(tmp_path / "g.parquet"), out=str(out))
    rec = latency.value_head_timing(out)
    assert rec["load_s"] > 0 and rec["work_s"] > 0 and rec["device"] == timing.describe_device("cpu")
    assert rec["problems"] == 5 and rec["samples"] == 10 and rec["prm_tokens"] > 0
    fit = samples.filter(~pl.col("problem_id").is_in(["p0"]))  # score.train holds out every 5th problem
    direct = prm.train_value_head(policy, [Q] * fit.height, fit["text"].to_list(), [list(e) for e in fit["step_ends"]],
                                  [k % 3 == 0 for k in range(10) if ids[k] != "p0"], l2=0.01, device="cpu", epochs=5)
    trained = prm.load("value-head", str(out), device="cpu")
    assert trained.weight.tolist() == direct.weight.tolist() and float(trained.bias) == float(direct.bias)
