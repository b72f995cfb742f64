"""PRM quality measures (pipeline/analysis/prm_quality.py) on hand-made scores."""

from __future__ import annotations

import json
import random

import polars as pl
import pytest

from pipeline import prm
from pipeline.analysis import prm_quality, report
from pipeline.analysis.prm_quality import (
    auc,
    auc_difference,
    bootstrap_se,
    within_problem_auc,
)


def test_auc_matches_the_mann_whitney_definition():
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(2, 40)
        scores = [rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(n)]  # with ties
        labels = [rng.random() < 0.4 for _ in range(n)]
        if 0 < sum(labels) < n:
            assert auc(scores, labels) == pytest.approx(prm.auc(scores, labels))
        else:
            assert auc(scores, labels) is None
    assert auc([0.9, 0.1], [1, 0]) == 1.0 and auc([0.1, 0.9], [1, 0]) == 0.0 and auc([0.5, 0.5], [1, 0]) == 0.5
    with pytest.raises(ValueError, match="finite"):
        auc([float("nan"), 0.1], [1, 0])


def test_bootstrap_over_problems_and_within_problem_auc():
    # problem a: scores rank its samples perfectly; problem b: backwards
    scores = [0.9, 0.1, 0.2, 0.8, 0.5]
    labels = [1, 0, 1, 0, 0]
    groups = ["a", "a", "b", "b", "c"]
    within, n = within_problem_auc(scores, labels, groups)
    assert (within, n) == (0.5, 2)  # c has one class only
    se = bootstrap_se(scores, labels, groups, draws=100)
    assert se is not None and se > 0
    assert bootstrap_se([0.9, 0.1], [1, 0], ["a", "a"]) is None  # one problem: no spread to estimate


def test_prm_quality_table_from_aggregate_tables(tmp_path):
    shard = tmp_path / "s.parquet"
    texts = {("a", 0): "3 + 4 = 7\nThe answer is 7.", ("a", 1): "3 + 4 = 8\nThe answer is 8.",
             ("b", 0): "5 - 1 = 4\nThe answer is 4.", ("b", 1): "", ("b", 2): "The answer is 6."}
    pl.DataFrame({"problem_id": [k[0] for k in texts], "sample_idx": [k[1] for k in texts],
                  "text": list(texts.values()),
                  "step_ends": [[9, 26], [9, 26], [9, 26], [], [16]]}).write_parquet(shard)
    keys = {"dataset": "arith", "model": "m", "key": "k"}
    correct = [True, False, True, False, False]
    tables = {
        "problems": pl.DataFrame({"dataset": ["arith"] * 2, "problem_id": ["a", "b"],
                                  "question": ["Ann has 3. She gets 4.", "Bo has 5. He loses 1."],
                                  "answer": ["7", "4"],
                                  "metadata": [json.dumps({"expression": "3 + 4"}), json.dumps({"expression": "5 - 1"})]}),
        "grades": pl.DataFrame({**{k: [v] * 5 for k, v in keys.items()}, "kind": ["sampled"] * 5,
                                "problem_id": [k[0] for k in texts], "sample_idx": [k[1] for k in texts],
                                "correct": correct}),
        "samples": pl.DataFrame({**{k: [v] * 5 for k, v in keys.items()}, "kind": ["sampled"] * 5,
                                 "problem_id": [k[0] for k in texts], "sample_idx": [k[1] for k in texts],
                                 "cumulative_logprob": [-1.0, -4.0, -2.0, 0.0, -3.0], "output_tokens": [2, 2, 2, 0, 1]}),
        "scores": pl.DataFrame({**{k: [v] * 5 for k, v in keys.items()}, "prm": ["p"] * 5,
                                "problem_id": [k[0] for k in texts], "sample_idx": [k[1] for k in texts],
                                "scores": [[0.6, 0.9], [0.7, 0.2], [0.5, 0.4], [], [0.3]]}),
    }
    head = tmp_path / "head"
    head.mkdir()
    (head / "value_head.json").write_text(json.dumps({"training": {"supervision": "arith-check", "heldout": {
        "problems": 3, "auc_last_step": 0.75, "auc_last_step_se": 0.1, "auc_step": 0.8, "auc_step_arith_check": 0.8}}}))
    manifest = {"caches": [{**keys, "kind": "sampled", "shards": [str(shard)]}],
                "value_heads": [{"model": "m", "prm": "p", "dir": str(head)}, {"model": "m", "prm": "q", "dir": "none"}]}
    table = prm_quality.prm_quality(tables, manifest)
    assert table.schema == pl.Schema(prm_quality.QUALITY)
    row = table.row(0, named=True)
    # the empty sample is left out; last steps 0.9, 0.2, 0.4, 0.3 vs correct 1, 0, 1, 0
    assert (row["samples"], row["problems"], row["correct"], row["steps"]) == (4, 2, 2, 7)
    assert row["auc_last_step"] == 1.0
    assert row["auc_within_problem"] == 1.0 and row["problems_within"] == 2
    # arith-check labels: [1, 1], [0, 0], [1, 1], [0] (6 is not 4)
    assert row["steps_good"] == 4
    assert row["auc_step"] == pytest.approx(auc([0.6, 0.9, 0.7, 0.2, 0.5, 0.4, 0.3], [1, 1, 0, 0, 1, 1, 0]))
    # mean log-probs -0.5, -2, -1, -3
    assert row["auc_mean_logprob"] == 1.0
    # the value head's own held-out AUCs beside them
    assert (row["supervision"], row["heldout_problems"], row["heldout_auc_last_step"], row["heldout_auc_step"]) == (
        "arith-check", 3, 0.75, 0.8)
    other = prm_quality.prm_quality({**tables, "scores": tables["scores"].with_columns(prm=pl.lit("logprob"))}, manifest)
    assert other.row(0, named=True)["supervision"] is None and other["heldout_auc_last_step"].is_null().all()
    lines = prm_quality.summary_lines(table)
    assert lines[0] == "## PRM quality on the evaluation samples" and "| arith | m | p | 4 | 2 | 1.000" in lines[-2]
    assert lines[-2].endswith("| arith-check | 0.750 ± 0.100 | 0.800 |")
    assert prm_quality.summary_lines(None) == []
    views = {name: pl.DataFrame() for name in ("accuracy_vs_flops", "pareto", "compute_optimal")}
    views["accuracy_vs_flops"] = pl.DataFrame(schema={"dataset": pl.String, "num_problems": pl.Int64})
    assert "## PRM quality on the evaluation samples" in report.summary_markdown({**views, "prm_quality": table})


def test_paired_auc_difference():
    rng = random.Random(1)
    labels = [rng.random() < 0.3 for _ in range(200)]
    groups = [i // 8 for i in range(200)]
    good = [float(y) + rng.gauss(0, 0.5) for y in labels]  # informative
    noise = [rng.gauss(0, 1) for _ in labels]  # not
    diff, se, (lo, hi) = auc_difference(good, noise, labels, groups, draws=300)
    assert diff == pytest.approx(auc(good, labels) - auc(noise, labels))
    assert se > 0 and 0 < lo < diff < hi  # the better score is better, by an interval that excludes 0
    same, se0, (lo0, hi0) = auc_difference(good, good, labels, groups, draws=50)
    assert same == 0 and se0 == 0 and lo0 == hi0 == 0
    assert auc_difference(good, noise, [False] * 200, groups) is None


def test_the_database_carries_prm_quality_when_there_is_one(tmp_path):
    from test_aggregate_views import replay_rows

    from pipeline import aggregate

    tables = {
        "replay": aggregate._replay_table([pl.DataFrame(replay_rows("d", "m", 1e8, "majority", [1, 2], lambda n: 0.3, 20))]),
        "models": pl.DataFrame({"model": ["m"], "path": ["p"], "identity": ["p"], "params_total": [10 ** 8],
                                "params_embedding": [0], "tie_word_embeddings": [True]}),
    }
    quality = pl.DataFrame([{"dataset": "d", "model": "m", "prm": "p", "auc_last_step": 0.7}], schema=prm_quality.QUALITY)
    aggregate.write_duckdb({**tables, "prm_quality": quality}, tmp_path / "q.duckdb")
    aggregate.write_duckdb(tables, tmp_path / "none.duckdb")
    views = aggregate.read_views(tmp_path / "q.duckdb")
    assert views["prm_quality"]["auc_last_step"].to_list() == [0.7] and "accuracy_vs_flops" in views
    assert "prm_quality" not in aggregate.read_views(tmp_path / "none.duckdb")
