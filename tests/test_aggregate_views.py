"""The views pareto and compute_optimal (in-sample and held-out), the headline protocol,
the figures and the report's tables and summary, on small hand-built replay tables (no
workflow run)."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.analysis import figures, report

PROBLEMS = ["a", "b", "c", "d"]


def replay_rows(dataset, model, params, strategy, ns, accuracy, tokens, prm=None, aggregation=None):
    """Per-problem rows: problem i's accuracy is accuracy(n) -/+ 0.05 (mean accuracy(n));
    `tokens` generated tokens per sample, 10 prompt tokens per sample."""
    rows = []
    for n in ns:
        for i, pid in enumerate(PROBLEMS):
            rows.append({
                "dataset": dataset, "model": model, "prm": prm, "aggregation": aggregation,
                "problem_id": pid, "strategy": strategy, "n": n,
                "accuracy": accuracy(n) + (0.05 if i % 2 else -0.05),
                "accuracy_se": 0.0, "output_tokens": tokens * n, "prompt_tokens": 10.0 * n,
                "flops_paper": 2.0 * params * tokens * n,
                "flops_full": 2.0 * params * (tokens + 10.0) * n,
            })
    return rows


def build(tmp_path, *, with_models=True, extra=(), analysis=None):
    rows = []
    rows += replay_rows("d", "small", 1e8, "majority", [1, 2, 4, 8, 16], lambda n: 0.2 + 0.1 * math.log2(n), 50)
    rows += replay_rows("d", "small", 1e8, "coverage", [1, 2, 4, 8, 16], lambda n: min(0.9, 0.2 + 0.18 * math.log2(n)), 50)
    rows += replay_rows("d", "small", 1e8, "greedy", [1], lambda n: 0.25, 50)
    rows += replay_rows("d", "small", 1e8, "best_of_n", [1, 2, 4, 8, 16], lambda n: 0.2 + 0.05 * math.log2(n), 50,
                        prm="v", aggregation="last")
    # another step aggregation, best everywhere: not a headline point by default
    rows += replay_rows("d", "small", 1e8, "best_of_n", [1, 2, 4, 8, 16], lambda n: 0.3 + 0.12 * math.log2(n), 50,
                        prm="v", aggregation="min")
    rows += replay_rows("d", "large", 1e9, "majority", [1, 2, 4, 8, 16], lambda n: 0.45 + 0.1 * math.log2(n), 40)
    # tree search rows land in the same table: a new strategy name, nothing else
    rows += replay_rows("d", "large", 1e9, "rebase_majority", [4, 16], lambda n: 0.5 + 0.1 * math.log2(n), 30,
                        prm="v", aggregation="last")
    rows += replay_rows("e", "small", 1e8, "majority", [1, 4], lambda n: 0.1 * n, 50)
    rows += list(extra)
    replay = aggregate._replay_table([pl.DataFrame(rows)])
    tables = {"replay": replay}
    if with_models:
        tables["models"] = pl.DataFrame({
            "model": ["small", "large"], "path": ["p", "q"], "identity": ["p", "q"],
            "params_total": [100_000_000, 1_000_000_000], "params_embedding": [0, 0],
            "tie_word_embeddings": [True, True],
        })
    db = tmp_path / "v.duckdb"
    aggregate.write_duckdb(tables, db, analysis=analysis)
    return db


def query(db, sql):
    with duckdb.connect(str(db), read_only=True) as con:
        return pl.from_arrow(con.sql(sql).to_arrow_table())


def brute_force_front(points: list[tuple[float, float]]) -> dict[tuple[float, float], int]:
    """The non-dominated (flops, accuracy) values, each with how many points sit there."""
    front: dict[tuple[float, float], int] = {}
    for i, (f, a) in enumerate(points):
        if not any(g <= f and b >= a and (g < f or b > a) for j, (g, b) in enumerate(points) if j != i):
            front[(f, a)] = front.get((f, a), 0) + 1
    return front


def test_accuracy_vs_flops_has_tokens_conventions_and_oracle_flag(tmp_path):
    curve = query(build(tmp_path), "SELECT * FROM accuracy_vs_flops")
    assert {"output_tokens", "prompt_tokens", "flops_paper", "flops_full", "accuracy_se", "oracle"} <= set(curve.columns)
    assert curve.filter(pl.col("oracle"))["strategy"].unique().to_list() == ["coverage"]
    row = curve.filter(model="large", strategy="majority", n=4).row(0, named=True)
    assert row["flops_paper"] == pytest.approx(2e9 * 40 * 4) and row["prompt_tokens"] == 40.0


@pytest.mark.parametrize("convention", ["paper", "full"])
def test_pareto_matches_brute_force(tmp_path, convention):
    db = build(tmp_path)
    curve = query(db, "SELECT * FROM points WHERE NOT oracle AND headline")
    front = query(db, f"SELECT * FROM pareto WHERE convention = '{convention}'")
    assert set(front["strategy"]) - {"majority", "greedy", "best_of_n", "rebase_majority"} == set()
    for dataset in ("d", "e"):
        c = curve.filter(dataset=dataset)
        pts = list(zip(c[f"flops_{convention}"], c["accuracy"]))
        got = front.filter(dataset=dataset)
        assert dict(zip(zip(got["flops"], got["accuracy"]), got["tied"])) == pytest.approx(brute_force_front(pts))
        f = front.filter(dataset=dataset).sort("flops")
        # along the front, more FLOPs buy strictly more accuracy
        assert (f["accuracy"].diff().drop_nulls() > 0).all()
        assert (f["flops"] == f[f"flops_{convention}"]).all()


def test_pareto_random_points_against_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(60):
        flops = float(rng.choice([1e9, 2e9, 4e9, 8e9, 1.6e10]))  # ties in FLOPs on purpose
        acc = float(rng.choice([0.1, 0.2, 0.3, 0.4, 0.5]))  # and in accuracy
        rows.append({"dataset": "r", "model": f"m{k % 3}", "problem_id": "x", "strategy": f"s{k}",
                     "n": 1, "accuracy": acc, "output_tokens": 1.0, "prompt_tokens": 1.0,
                     "flops_paper": flops, "flops_full": flops * 2})
    db = tmp_path / "r.duckdb"
    aggregate.write_duckdb({"replay": aggregate._replay_table([pl.DataFrame(rows)])}, db)
    front = query(db, "SELECT * FROM pareto WHERE convention = 'paper'")
    pts = [(r["flops_paper"], r["accuracy"]) for r in rows]
    expected = brute_force_front(pts)
    assert dict(zip(zip(front["flops"], front["accuracy"]), front["tied"])) == expected
    # a tie keeps its first strategy by name
    for r in front.iter_rows(named=True):
        names = sorted(x["strategy"] for x in rows if (x["flops_paper"], x["accuracy"]) == (r["flops"], r["accuracy"]))
        assert r["strategy"] == names[0] and r["tied"] == len(names)


def test_pareto_keeps_one_of_tied_points(tmp_path):
    # at n = 1 voting and best-of-n are the same sample: same accuracy, same paper FLOPs
    rows = replay_rows("d", "m", 1e8, "majority", [1, 2], lambda n: 0.3 + 0.1 * n, 50)
    rows += replay_rows("d", "m", 1e8, "best_of_n", [1, 2], lambda n: 0.4 if n == 1 else 0.45, 50, prm="v", aggregation="last")
    db = tmp_path / "t.duckdb"
    aggregate.write_duckdb({"replay": aggregate._replay_table([pl.DataFrame(rows)])}, db)
    front = query(db, "SELECT strategy, prm, n, tied FROM pareto WHERE convention = 'paper'")
    assert front.rows() == [("majority", None, 1, 2), ("majority", None, 2, 1)]


def test_compute_optimal_is_the_best_point_within_each_budget(tmp_path):
    db = build(tmp_path)
    opt = query(db, "SELECT * FROM compute_optimal")
    curve = query(db, "SELECT * FROM points WHERE NOT oracle AND headline")
    for (dataset, convention), g in opt.group_by("dataset", "convention"):
        g = g.sort("budget")
        # a log-spaced grid, 4 per decade, accuracy never falls as the budget grows
        assert np.allclose(np.diff(np.log10(g["budget"].to_numpy())), 0.25)
        assert (g["accuracy"].diff().drop_nulls() >= 0).all()
        assert (g["flops"] <= g["budget"] * (1 + 1e-12)).all()
        c = curve.filter(dataset=dataset)
        flops = c[f"flops_{convention}"]
        for row in g.iter_rows(named=True):
            assert row["accuracy"] == pytest.approx(c.filter(flops <= row["budget"] * (1 + 1e-12))["accuracy"].max())
        # the grid covers the front: the last budget affords its costliest point
        front = query(db, f"SELECT max(flops) FROM pareto WHERE dataset = '{dataset}' AND convention = '{convention}'")
        assert g["budget"].max() >= front.item() * (1 - 1e-12)
        assert g["accuracy"].max() == pytest.approx(c["accuracy"].max())
    top = opt.filter(dataset="d", convention="paper").sort("budget")
    assert top["model"][0] == "small" and top["model"][-1] == "large"
    assert top.filter(model="large")["params_total"].unique().to_list() == [1_000_000_000]


def test_views_without_models_table(tmp_path):
    opt = query(build(tmp_path, with_models=False), "SELECT * FROM compute_optimal")
    assert opt.height > 0 and opt["params_total"].is_null().all()


def test_fit_loglog_recovers_a_line():
    n = np.array([1e8, 1e8, 1e9, 1e9, 1e10])
    c = 10 ** (1.19 * np.log10(n) + 2.03)
    a, b = figures.fit_loglog(n, c)
    assert a == pytest.approx(1.19) and b == pytest.approx(2.03)
    assert figures.fit_loglog(np.array([1e8, 1e8]), np.array([1e10, 1e11])) is None


def test_figures_tables_and_summary(tmp_path):
    db = build(tmp_path)
    out = tmp_path / "out"
    tables = [out / "tables" / f"{v}.html" for v in report.TABLE_VIEWS]
    aggregate.write_outputs(db, plot=str(out / "f.png"), plot_n=str(out / "n.png"),
                            plot_size=str(out / "s.png"), summary=str(out / "summary.md"),
                            tables=[str(t) for t in tables])
    for png in ("f.png", "n.png", "s.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, png
    assert not list(out.rglob("*.tmp"))
    pareto_html = (out / "tables" / "pareto.html").read_text()
    assert "<table>" in pareto_html and "rebase_majority" in pareto_html and "held_out_accuracy" in pareto_html
    assert "verdict" in (out / "tables" / "claims.html").read_text()
    md = (out / "summary.md").read_text()
    assert "## d" in md and "## e" in md and "Pareto front" in md and "Size fit: log10 C" in md
    assert "Model size: which size is compute-optimal at each budget" in md and "different model families" in md
    assert "large / rebase_majority [v, last]" in md
    assert "The paper's claims, tested on this run" in md and "Voting saturates as n grows" in md
    assert "not testable" in md and "held-out" in md and "slope 95% [" in md
    assert "best_of_n [v, min]" not in md  # not a headline aggregation
    with pytest.raises(ValueError, match="file name"):
        report.write_tables(aggregate.read_views(db), [out / "nope.html"])


def test_headline_aggregations_decide_what_competes(tmp_path):
    """By default only `last` enters the front; `analysis.aggregations` switches others on,
    and every aggregation stays in accuracy_vs_flops either way."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    default = build(tmp_path / "a")
    both = build(tmp_path / "b", analysis={"aggregations": ["last", "min"]})
    for db in (default, both):
        assert set(query(db, "SELECT DISTINCT aggregation FROM accuracy_vs_flops WHERE prm = 'v'")["aggregation"]) == {"min", "last"}
    assert "min" not in query(default, "SELECT aggregation FROM pareto")["aggregation"].to_list()
    assert "min" in query(both, "SELECT aggregation FROM pareto")["aggregation"].to_list()
    assert query(both, "SELECT aggregations FROM analysis").item().to_list() == ["last", "min"]
    headline = query(default, "SELECT aggregation, headline FROM points WHERE prm = 'v' AND strategy = 'best_of_n'")
    assert dict(headline.unique().rows()) == {"last": True, "min": False}
    assert query(default, "SELECT family FROM points WHERE strategy = 'rebase_majority' LIMIT 1").item() == "tree search"


def test_held_out_beside_in_sample(tmp_path):
    db = build(tmp_path)
    opt = query(db, "SELECT * FROM compute_optimal")
    assert {"point", "held_out_accuracy", "held_out_se", "held_out_flops", "folds_agreeing", "num_folds"} <= set(opt.columns)
    assert opt["held_out_accuracy"].is_not_null().all()
    assert (opt["folds_agreeing"] <= opt["num_folds"]).all()
    # with 4 problems there are 4 folds (min(K, problems)); here every fold agrees with
    # the in-sample choice, whose per-problem results are the held-out ones
    assert (opt["num_folds"] == 4).all()
    agree = opt.filter(pl.col("folds_agreeing") == 4)
    assert np.allclose(agree["held_out_accuracy"], agree["accuracy"])
    front = query(db, "SELECT * FROM pareto WHERE dataset = 'd' AND convention = 'paper' ORDER BY flops")
    assert front["previous"][0] is None and front["beats_previous"][0] is None
    assert front["previous"][1:].to_list() == front["point"][:-1].to_list()
    # the gain is the paired mean difference to the previous front point
    assert np.allclose(front["gain"][1:].to_numpy(), np.diff(front["accuracy"].to_numpy()))
    assert front["held_out_accuracy"].is_not_null().all()
    held = query(db, "SELECT * FROM held_out WHERE at_point IS NOT NULL")
    assert set(front["point"]) <= set(held["at_point"])


def test_line_labels_are_unique_per_line(tmp_path):
    curve = query(build(tmp_path), "SELECT * FROM accuracy_vs_flops")
    keys = curve.select(figures.LINE_KEYS).unique().rows()
    labels = [figures.line_label(*k) for k in keys]
    assert len(set(labels)) == len(labels)
    assert figures.line_label("m", "v", "best_of_n", "min") == "m / best_of_n [v, min]"


def test_adaptive_policies_enter_the_views(tmp_path):
    """aggregate's table builder runs the difficulty-adaptive allocation on the seeded
    folds of the analysis: the `adaptive` table, its strategies in replay (held-out rows)
    and on the front, the oracle variant flagged and never on the front, the figure, the
    HTML table and the summary line."""
    from test_allocation import synthetic_tables

    db = tmp_path / "a.duckdb"
    models = pl.DataFrame({"model": ["toy"], "path": ["p"], "identity": ["p"], "params_total": [1_000_000],
                           "params_embedding": [0], "tie_word_embeddings": [True]})
    aggregate.write_duckdb({**synthetic_tables(), "models": models}, db,
                           analysis={"folds": 4, "seed": 1, "adaptive": {"bins": 3}})
    settings = query(db, "SELECT adaptive FROM analysis").item()
    assert settings["bins"] == 3 and settings["probe_samples"] == 4 and settings["enabled"]
    table = query(db, "SELECT * FROM adaptive")
    assert set(table["source"]) == {"predicted", "oracle"} and set(table["convention"]) == {"paper", "full"}
    assert (table["num_folds"] == 4).all() and (table["num_bins"] <= 3).all()
    assert table["accuracy_se"].is_not_null().all() and table["diff_ci_low"].is_not_null().all()
    # the folds are the analysis' (pipeline.analysis.stats, seed 1), as every held-out choice uses
    folds = query(db, "SELECT problem_id, fold FROM folds")
    held = query(db, "SELECT DISTINCT problem_id, fold FROM adaptive_problems")
    assert sorted(held.rows()) == sorted(folds.rows())
    # the held-out rows of each point are the replay rows of its strategy
    points = query(db, "SELECT * FROM points WHERE family = 'difficulty-adaptive'")
    assert set(points["point"]) == set(table["point"])
    assert points.filter(pl.col("oracle"))["strategy"].unique().sort().to_list() == [
        "adaptive_oracle_full", "adaptive_oracle_paper"]
    assert points["headline"].all() and (points["num_problems"] == 48).all()
    row = table.filter(source="predicted", convention="paper").row(-1, named=True)
    assert points.filter(point=row["point"])["accuracy"].item() == pytest.approx(row["accuracy"])
    # the front, compute_optimal and the held-out choices see the predicted policies only
    front = query(db, "SELECT * FROM pareto")
    assert front.filter(pl.col("strategy").str.starts_with("adaptive_oracle")).is_empty()
    assert front.filter(pl.col("strategy").str.starts_with("adaptive_")).height > 0
    assert query(db, "SELECT * FROM compute_optimal WHERE strategy LIKE 'adaptive_oracle%'").is_empty()
    assert query(db, "SELECT * FROM held_out_problems WHERE point LIKE '%adaptive_oracle%'").is_empty()
    assert query(db, "SELECT count(*) FROM held_out_problems WHERE point LIKE '%/adaptive_%'").item() > 0
    # a policy chosen for the paper convention carries its full-convention costs too
    both = query(db, "SELECT flops_paper, flops_full FROM points WHERE strategy = 'adaptive_paper'")
    assert (both["flops_full"] > both["flops_paper"]).all()
    # the paper's claims are about the fixed strategies
    assert not query(db, "SELECT * FROM claims WHERE test LIKE '%adaptive%'").height
    out = tmp_path / "out"
    tables = [out / "tables" / f"{v}.html" for v in report.TABLE_VIEWS]
    aggregate.write_outputs(db, plot=str(out / "f.png"), plot_n=str(out / "n.png"), summary=str(out / "summary.md"),
                            tables=[str(t) for t in tables], plot_adaptive=str(out / "adaptive.png"))
    assert (out / "adaptive.png").stat().st_size > 10_000
    assert "saving_ci_low" in (out / "tables" / "adaptive.html").read_text()
    md = (out / "summary.md").read_text()
    assert "### Difficulty-adaptive allocation" in md and "**d / toy** (paper FLOPs" in md
    assert "**d / toy** (full FLOPs" in md


def test_adaptive_switched_off_or_without_grades(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    from test_allocation import synthetic_tables

    off = tmp_path / "a" / "off.duckdb"
    aggregate.write_duckdb(synthetic_tables(), off, analysis={"adaptive": {"enabled": False}})
    for db in (off, build(tmp_path / "b")):  # build: replay only, no grades
        assert query(db, "SELECT count(*) FROM adaptive").item() == 0
        assert query(db, "SELECT count(*) FROM replay WHERE strategy LIKE 'adaptive%'").item() == 0
    out = tmp_path / "a.png"
    figures.adaptive(query(off, "SELECT * FROM adaptive"), out)
    assert out.stat().st_size > 1000
