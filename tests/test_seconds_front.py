"""The `seconds` cost convention of the views (pareto, compute_optimal, held_out): measured
seconds per problem, one front per device; unmeasured points and points measured on
several devices left out. On small hand-built replay tables (tests/test_aggregate_views.py
style; no workflow run)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from test_aggregate_views import brute_force_front, query

from pipeline import aggregate
from pipeline.analysis import figures, report, views

PROBLEMS = ["a", "b", "c", "d", "e"]
CPU = "Test CPU (2 cores)"
GPU = "Test GPU x1"
MIXED = f"mixed: {CPU} | {GPU}"


def rows(model, params, strategy, ns, accuracy, seconds, device, prm=None, aggregation=None, tokens=50):
    """Per-problem rows: accuracy(n) -/+ 0.05 around the mean; `seconds(n)` per problem
    (None: unmeasured) on `device` (a str, or a function of the problem's index)."""
    out = []
    for n in ns:
        for i, pid in enumerate(PROBLEMS):
            s = seconds(n)
            out.append({
                "dataset": "d", "model": model, "prm": prm, "aggregation": aggregation, "problem_id": pid,
                "strategy": strategy, "n": n, "accuracy": min(1.0, accuracy(n) + (0.05 if i % 2 else -0.05)),
                "accuracy_se": 0.0, "output_tokens": tokens * n, "prompt_tokens": 10.0 * n,
                "flops_paper": 2.0 * params * tokens * n, "flops_full": 2.0 * params * (tokens + 10.0) * n,
                "seconds": s, "load_s": None if s is None else 3.0,
                "device": None if s is None else (device(i) if callable(device) else device),
            })
    return out


def build(tmp_path, extra=()):
    r = []
    # on the CPU: voting and best-of-n of a small model, fractions of a second per problem
    r += rows("small", 1e8, "majority", [1, 2, 4, 8], lambda n: 0.2 + 0.1 * math.log2(n), lambda n: 0.05 * n, CPU)
    r += rows("small", 1e8, "best_of_n", [1, 2, 4, 8], lambda n: 0.22 + 0.12 * math.log2(n),
              lambda n: 0.08 * n, CPU, prm="v", aggregation="last")
    # on the GPU: a larger model, faster per problem than the CPU's slowest points
    r += rows("large", 1e9, "majority", [1, 2, 4], lambda n: 0.5 + 0.1 * math.log2(n), lambda n: 0.02 * n, GPU)
    # unmeasured (written before timing existed): the best and cheapest point by FLOPs
    r += rows("small", 1e8, "greedy", [1], lambda n: 0.95, lambda n: None, None)
    # generated on the CPU, searched on the GPU: the seconds add up two devices
    r += rows("small", 1e8, "rebase_majority", [4], lambda n: 0.9, lambda n: 0.01, MIXED, prm="v", aggregation="last")
    # one problem measured, one not: no seconds for the point (never a partial mean)
    r += rows("small", 1e8, "weighted_majority", [2], lambda n: 0.97, lambda n: 0.001, CPU, prm="v",
              aggregation="last")
    r = [x for x in r if not (x["strategy"] == "weighted_majority" and x["problem_id"] == "a")]
    r += rows("small", 1e8, "weighted_majority", [2], lambda n: 0.97, lambda n: None, None, prm="v",
              aggregation="last")[:1]
    r += list(extra)
    db = tmp_path / "s.duckdb"
    models = pl.DataFrame({"model": ["small", "large"], "path": ["p", "q"], "identity": ["p", "q"],
                           "params_total": [100_000_000, 1_000_000_000], "params_embedding": [0, 0],
                           "tie_word_embeddings": [True, True]})
    aggregate.write_duckdb({"replay": aggregate._replay_table([pl.DataFrame(r)]), "models": models}, db)
    return db


def test_seconds_is_a_convention_with_its_own_column():
    assert ("seconds", "seconds") in views.COST_CONVENTIONS
    assert views.MEASURED_CONVENTIONS == ("seconds",)
    assert [c for c, _ in views.FLOPS_CONVENTIONS] == ["paper", "full"]


def test_seconds_front_per_device_against_brute_force(tmp_path):
    db = build(tmp_path)
    pts = query(db, "SELECT * FROM points WHERE headline AND NOT oracle")
    front = query(db, "SELECT * FROM pareto ORDER BY convention, device, flops")
    assert set(front["convention"]) == {"paper", "full", "seconds"}
    assert front.filter(pl.col("convention") != "seconds")["device"].is_null().all()
    sec = front.filter(convention="seconds")
    assert set(sec["device"]) == {CPU, GPU}
    assert (sec["flops"] == sec["seconds"]).all()
    for device in (CPU, GPU):
        eligible = pts.filter((pl.col("device") == device) & pl.col("seconds").is_not_null())
        got = sec.filter(device=device)
        expected = brute_force_front(list(zip(eligible["seconds"], eligible["accuracy"])))
        assert dict(zip(zip(got["flops"], got["accuracy"]), got["tied"])) == pytest.approx(expected)
        # along each device's front more seconds buy more accuracy, and the paired step
        # compares with the previous point *of the same device*
        assert (got["accuracy"].diff().drop_nulls() > 0).all()
        assert got["previous"][0] is None
        assert got["previous"][1:].to_list() == got["point"][:-1].to_list()
        assert got["held_out_accuracy"].is_not_null().all()
    # the unmeasured point and the half-measured one are on the FLOPs front, not the seconds front
    paper = front.filter(convention="paper")
    assert {"greedy", "weighted_majority"} <= set(paper["strategy"])
    assert not {"greedy", "weighted_majority", "rebase_majority"} & set(sec["strategy"])
    # the point measured on two devices is in no seconds front, though it is cheap and accurate
    assert pts.filter(strategy="rebase_majority")["device"].item() == MIXED
    assert pts.filter(strategy="weighted_majority")["seconds"].item() is None


def test_compute_optimal_seconds_grid_per_device(tmp_path):
    db = build(tmp_path)
    opt = query(db, "SELECT * FROM compute_optimal WHERE convention = 'seconds'")
    pts = query(db, "SELECT * FROM points WHERE headline AND NOT oracle")
    assert set(opt["device"]) == {CPU, GPU}
    for device, g in opt.group_by("device"):
        g = g.sort("budget")
        # a log grid over seconds, 4 per decade, below one second too
        assert np.allclose(np.diff(g["log10_budget"].to_numpy()), 0.25)
        assert g["budget"].min() < 0.1
        assert (g["flops"] <= g["budget"] * (1 + 1e-12)).all() and (g["flops"] == g["seconds"]).all()
        eligible = pts.filter((pl.col("device") == device[0]) & pl.col("seconds").is_not_null())
        for r in g.iter_rows(named=True):
            within = eligible.filter(pl.col("seconds") <= r["budget"] * (1 + 1e-12))
            assert r["accuracy"] == pytest.approx(within["accuracy"].max())
            assert r["point"] in set(eligible["point"])
        assert g["held_out_accuracy"].is_not_null().all() and (g["num_folds"] == 5).all()
    # the cross-fitted choices of a device's front choose among that device's points only
    held = query(db, "SELECT h.device, p.device AS point_device, p.seconds FROM held_out_problems h "
                     "JOIN points p ON p.dataset = h.dataset AND p.point = h.point WHERE h.convention = 'seconds'")
    assert held.height and (held["device"] == held["point_device"]).all() and held["seconds"].is_not_null().all()
    assert query(db, "SELECT count(*) FROM held_out_problems WHERE convention <> 'seconds' "
                     "AND device IS NOT NULL").item() == 0


def test_cost_fronts_split_and_refuse():
    cand = aggregate.candidate_rows(aggregate._replay_table([pl.DataFrame(
        rows("m", 1e8, "majority", [1, 2], lambda n: 0.3, lambda n: 0.1 * n, CPU)
        + rows("m", 1e8, "best_of_n", [1], lambda n: 0.3, lambda n: 0.1, lambda i: CPU if i else GPU, prm="v",
               aggregation="last")
        + rows("n", 1e8, "majority", [1], lambda n: 0.3, lambda n: 0.1, GPU)
        + rows("o", 1e8, "majority", [1], lambda n: 0.3, lambda n: None, None))]), ["last"])
    fronts = aggregate.cost_fronts(cand, "seconds", "seconds")
    got = {d: sorted(r["point"].unique()) for d, r in fronts}
    # best_of_n was measured on the GPU for one problem, on the CPU for the others: in no front
    assert got == {CPU: ["m/majority@1", "m/majority@2"], GPU: ["n/majority@1"]}
    [(none, flops)] = aggregate.cost_fronts(cand, "paper", "flops_paper")
    assert none is None and flops["point"].n_unique() == 5


def test_no_measured_seconds_means_no_seconds_front(tmp_path):
    r = rows("m", 1e8, "majority", [1, 2], lambda n: 0.3 * n, lambda n: None, None)
    db = tmp_path / "u.duckdb"
    aggregate.write_duckdb({"replay": aggregate._replay_table([pl.DataFrame(r)])}, db)
    assert query(db, "SELECT DISTINCT convention FROM pareto ORDER BY 1")["convention"].to_list() == ["full", "paper"]
    assert query(db, "SELECT count(*) FROM compute_optimal WHERE convention = 'seconds'").item() == 0
    out = tmp_path / "sec.png"
    points, front = query(db, "SELECT * FROM points"), query(db, "SELECT * FROM pareto")
    figures.accuracy_vs_seconds(points, front, query(db, "SELECT * FROM held_out"), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "No point has measured seconds" in "\n".join(report.latency_section(points, front))


def test_seconds_figure_and_summary(tmp_path):
    db = build(tmp_path)
    out = tmp_path / "out"
    aggregate.write_outputs(db, plot=str(out / "f.png"), plot_n=str(out / "n.png"),
                            plot_seconds=str(out / "sec.png"), summary=str(out / "summary.md"),
                            tables=[str(out / "pareto.html")])
    png = (out / "sec.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    md = (out / "summary.md").read_text()
    assert "### Latency: measured seconds per problem" in md
    assert f"**{CPU}**" in md and f"**{GPU}**" in md and f"**{MIXED}**" in md
    assert f"### Pareto front (seconds on {CPU})" in md and f"### Pareto front (seconds on {GPU})" in md
    assert "2 headline point(s) without measured seconds and 1 whose seconds add up work" in md
    # the short table: seconds beside FLOPs at the largest n of each line, and the device
    table = md.split("### Latency: measured seconds per problem")[1].split("###")[0]
    assert "| line | n | accuracy | flops_paper | seconds | s per 1e12 FLOPs (paper) | load_s | device |" in table
    assert "| small / majority | 8 | 0.490 | 8e+10 | 0.400 | 5.000 | 3.000 | Test CPU (2 cores) |" in table
    assert f"| {MIXED.replace('|', chr(92) + '|')} |" in table  # escaped, one cell
    assert "one front per device" in (out / "pareto.html").read_text()
