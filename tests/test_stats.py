"""pipeline.analysis.stats and the SQL statistics of pipeline.analysis.views on small synthetic replay tables:
paired differences against a brute-force computation (Python and the `paired` macro of
the database, read through a fresh connection), the seeded fold split, cross-fitting
(unbiased for a choice among equal candidates, where the in-sample maximum is not), the
minimum detectable difference and the bootstrap of the model-size fit."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.analysis import stats, views


def synthetic_replay(rng, problems=30, points=(("m", None, "majority", None, 4), ("m", "v", "weighted_majority", "last", 4),
                                                ("m", None, "majority", None, 1), ("m2", "v", "best_of_n", "last", 4))):
    rows = []
    for model, prm, strategy, agg, n in points:
        for i in range(problems):
            if strategy == "best_of_n" and i == 0:
                continue  # a point without problem 0: comparisons use the common problems
            mc = strategy == "weighted_majority"
            rows.append({
                "dataset": "d", "model": model, "prm": prm, "aggregation": agg, "problem_id": f"p{i:03d}",
                "strategy": strategy, "n": n, "accuracy": float(rng.choice([0.0, 0.25, 0.5, 1.0]) if not mc else rng.random()),
                "accuracy_se": float(rng.uniform(0.005, 0.02)) if mc else 0.0,
                "output_tokens": 10.0 * n, "prompt_tokens": 5.0 * n,
                "flops_paper": 2e8 * 10 * n * (2 if model == "m2" else 1), "flops_full": 2e8 * 15 * n,
            })
    return aggregate._replay_table([pl.DataFrame(rows)])


def brute_force(replay: pl.DataFrame, a: tuple, b: tuple) -> dict:
    """Mean paired difference, SE, 95% interval, two-sided p with plain loops."""
    def rows(key):
        model, prm, strategy, agg, n = key
        return {r["problem_id"]: (r["accuracy"], r["accuracy_se"]) for r in replay.iter_rows(named=True)
                if (r["model"], r["prm"], r["strategy"], r["aggregation"], r["n"]) == key}
    ra, rb = rows(a), rows(b)
    common = sorted(set(ra) & set(rb))
    d = [ra[p][0] - rb[p][0] for p in common]
    v = [ra[p][1] ** 2 + rb[p][1] ** 2 for p in common]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) / n + sum(v) / n**2
    se = math.sqrt(var)
    z = 1.959963984540054
    return {"num_problems": n, "diff": mean, "diff_se": se, "ci_low": mean - z * se, "ci_high": mean + z * se,
            "p_value": math.erfc(abs(mean / se) / math.sqrt(2)),
            "accuracy_a": sum(ra[p][0] for p in common) / n, "accuracy_b": sum(rb[p][0] for p in common) / n}


def frame(con, sql: str, params: list | None = None) -> pl.DataFrame:
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    replay = synthetic_replay(np.random.default_rng(1))
    path = tmp_path_factory.mktemp("stats") / "s.duckdb"
    aggregate.write_duckdb({"replay": replay}, path)
    return path, replay


PAIRS = [
    (("m", "v", "weighted_majority", "last", 4), ("m", None, "majority", None, 4)),
    (("m", None, "majority", None, 4), ("m", None, "majority", None, 1)),
    (("m2", "v", "best_of_n", "last", 4), ("m", "v", "weighted_majority", "last", 4)),
]


@pytest.mark.parametrize("a,b", PAIRS)
def test_paired_matches_brute_force_in_python_and_sql(db, a, b):
    path, replay = db
    want = brute_force(replay, a, b)
    # Python
    labelled = replay.with_columns(point=views.point_label_expr())
    la, lb = views.point_label(*a), views.point_label(*b)
    j = labelled.filter(pl.col("point") == la).join(labelled.filter(pl.col("point") == lb), on="problem_id", suffix="_b")
    got = stats.paired(j["accuracy"], j["accuracy_b"], j["accuracy_se"], j["accuracy_se_b"]).as_dict()
    for k, v in want.items():  # (differences are rounded to 12 decimals)
        assert got[k] == pytest.approx(v, rel=1e-9, abs=1e-11), k
    # SQL, through a fresh read-only connection: the macros live in the file
    with duckdb.connect(str(path), read_only=True) as con:
        row = frame(con, "SELECT * FROM paired('d', ?, ?)", [la, lb]).row(0, named=True)
        others = frame(con, "SELECT * FROM compare_to('d', ?)", [lb])
    assert row["point_a"] == la and row["point_b"] == lb
    for k, v in want.items():
        # p from erfc_approx: fractional error < 1.2e-7
        assert row[k] == pytest.approx(v, rel=2e-7 if k == "p_value" else 1e-9, abs=1e-11), k
    via = others.filter(pl.col("point_a") == la).row(0, named=True)
    assert via["diff"] == pytest.approx(want["diff"]) and via["p_value"] == pytest.approx(want["p_value"], rel=2e-7)
    assert others.height == replay.select("model", "prm", "strategy", "aggregation", "n").n_unique()


def test_paired_sql_names_nulls_and_unknown_points(db):
    path, _ = db
    with duckdb.connect(str(path), read_only=True) as con:
        labels = {r[0] for r in con.execute("SELECT point FROM points").fetchall()}
        assert {"m/majority@4", "m/weighted_majority[v,last]@4", "m2/best_of_n[v,last]@4"} <= labels
        same = con.execute("SELECT num_problems, diff, diff_se, p_value FROM paired('d', 'm/majority@4', 'm/majority@4')").fetchone()
        assert same == (30, 0.0, 0.0, 1.0)  # zero difference, zero SE: p = 1
        none = con.execute("SELECT num_problems, diff FROM paired('d', 'm/nope@4', 'm/majority@4')").fetchone()
        assert none == (0, None)
        # the label macro and the Python label agree, NULL PRM and aggregation included
        for key in [("m", None, "majority", None, 4), ("x", "p", "rebase_majority", None, 8), ("x", "p", "s", "min", 2)]:
            assert con.execute("SELECT point_label(?, ?, ?, ?, ?)", list(key)).fetchone()[0] == views.point_label(*key)


def test_sql_normal_tail_matches_erfc():
    con = duckdb.connect()
    for sql in views.MACROS:
        con.execute(sql)
    zs = np.concatenate([np.linspace(-8, 8, 161), [0.0, 1.959963984540054, 30.0, -30.0]])
    for z in zs:
        p, cdf = con.execute("SELECT p_two_sided(?), normal_cdf(?)", [float(z), float(z)]).fetchone()
        assert p == pytest.approx(stats.two_sided_p(z), rel=1.2e-7, abs=1e-300)
        assert cdf == pytest.approx(stats.normal_cdf(z), rel=1.2e-7, abs=1e-300)
    assert con.execute("SELECT p_two_sided(1.959963984540054)").fetchone()[0] == pytest.approx(0.05, rel=1e-6)


def test_mean_se_counts_monte_carlo_error():
    x = np.array([0.2, 0.4, 0.6])
    se = np.array([0.01, 0.02, 0.0])
    mean, s = stats.mean_se(x, se)
    assert mean == pytest.approx(0.4)
    assert s == pytest.approx(math.sqrt(np.var(x, ddof=1) / 3 + (0.01**2 + 0.02**2) / 9))
    # every problem the same: only the Monte Carlo part is left
    assert stats.mean_se([0.5, 0.5], [0.03, 0.04])[1] == pytest.approx(0.05 / 2)
    assert stats.mean_se([0.5])[1] == 0.0
    assert math.isnan(stats.mean_se([])[0])
    # a constant non-zero difference: the exact sign test, never p = 0
    p = stats.paired([1.0, 1.0], [0.0, 0.0])
    assert p.diff == 1.0 and p.diff_se == 0.0 and p.p_value == 0.5 and p.method == stats.SIGN and not p.significant()


def test_mde_formula():
    assert stats.mde(0.5, 64) == pytest.approx((1.959963984540054 + 0.8416212335729143) * 0.5 / 8)
    assert stats.mde(0.5, 64, power=0.5) == pytest.approx(1.959963984540054 * 0.5 / 8)


def test_folds_are_seeded_reproducible_and_balanced():
    ids = [f"q{i}" for i in range(23)]
    f = stats.assign_folds(ids, 5, seed=7, salt="arith")
    assert np.array_equal(f, stats.assign_folds(ids, 5, seed=7, salt="arith"))
    # independent of the order the problems come in
    perm = np.random.default_rng(0).permutation(len(ids))
    g = stats.assign_folds([ids[i] for i in perm], 5, seed=7, salt="arith")
    assert dict(zip([ids[i] for i in perm], g)) == dict(zip(ids, f))
    assert sorted(np.bincount(f).tolist()) == [4, 4, 5, 5, 5]
    assert not np.array_equal(f, stats.assign_folds(ids, 5, seed=8, salt="arith"))
    assert not np.array_equal(f, stats.assign_folds(ids, 5, seed=7, salt="gsm8k"))
    assert sorted(stats.assign_folds(ids[:3], 5, seed=0).tolist()) == [0, 1, 2]  # K > problems
    with pytest.raises(ValueError, match="unique"):
        stats.assign_folds(["a", "a"], 2, seed=0)
    table = stats.folds_table(pl.DataFrame({"dataset": ["b"] * 4 + ["a"] * 3, "problem_id": list("wxyzxyz")}), 2, 3)
    assert table.columns == ["dataset", "problem_id", "fold"] and table.height == 7
    assert table.filter(pl.col("dataset") == "a")["fold"].to_list() == stats.assign_folds(["x", "y", "z"], 2, 3, "a").tolist()


def test_folds_recorded_in_database(db):
    path, replay = db
    with duckdb.connect(str(path), read_only=True) as con:
        folds = frame(con, "SELECT problem_id, fold FROM folds WHERE dataset = 'd' ORDER BY problem_id")
        settings = con.execute("SELECT aggregations, folds, seed FROM analysis").fetchone()
    assert settings == (["last"], 5, 0)
    ids = sorted(replay["problem_id"].unique())
    assert folds["problem_id"].to_list() == ids
    assert folds["fold"].to_list() == stats.assign_folds(ids, 5, seed=0, salt="d").tolist()


def test_best_within_breaks_ties_and_respects_budgets():
    acc = np.array([0.5, 0.7, 0.7, np.nan, 0.9])
    cost = np.array([1.0, 3.0, 2.0, 0.5, 10.0])
    assert stats.best_within(acc, cost, [0.4, 1.0, 2.5, 3.0, 9.99, 10.0]).tolist() == [-1, 0, 2, 2, 2, 4]
    same = stats.best_within(np.array([0.5, 0.5]), np.array([1.0, 1.0]), [1.0])
    assert same.tolist() == [0]  # full tie: the earlier candidate


def long_rows(acc: np.ndarray, cost: np.ndarray) -> pl.DataFrame:
    m, q = acc.shape
    return pl.DataFrame({
        "point": [f"c{i}" for i in range(m) for _ in range(q)],
        "problem_id": [f"p{j:03d}" for _ in range(m) for j in range(q)],
        "accuracy": acc.ravel(), "cost": cost.ravel(),
    })


def test_crossfit_chooses_on_the_other_folds():
    rng = np.random.default_rng(3)
    acc = rng.random((6, 20)).round(2)
    cost = np.repeat(np.array([[1.0], [2.0], [2.0], [4.0], [8.0], [9.0]]), 20, axis=1) * rng.uniform(0.9, 1.1, (6, 20))
    rows = long_rows(acc, cost)
    fold = stats.assign_folds([f"p{j:03d}" for j in range(20)], 4, seed=1)
    folds = pl.DataFrame({"problem_id": [f"p{j:03d}" for j in range(20)], "fold": fold})
    budgets = pl.DataFrame({"grid_k": [0, 1, 2], "budget": [0.5, 2.2, 100.0]})
    for scope in ("all", "train"):
        out = stats.crossfit(rows, folds, budgets, cost_scope=scope)
        assert "grid_k" in out.columns and 0 not in out["grid_k"].to_list()  # nothing fits 0.5
        for r in out.iter_rows(named=True):
            train = fold != r["fold"]
            c = cost[:, train].mean(axis=1) if scope == "train" else cost.mean(axis=1)
            fits = [i for i in range(6) if c[i] <= r["budget"] * (1 + 1e-9)]
            best = max(fits, key=lambda i: (acc[i, train].mean(), -c[i], -i))
            j = int(r["problem_id"][1:])
            assert r["point"] == f"c{best}" and r["accuracy"] == acc[best, j] and r["cost"] == cost[best, j]
            assert r["train_accuracy"] == pytest.approx(acc[best, train].mean())
        assert out.group_by("grid_k").len()["len"].to_list() == [20, 20]  # every problem held out once


def test_held_out_choice_among_equal_candidates_is_unbiased():
    """40 candidates with the same true accuracy 0.3 on 60 problems: the in-sample maximum
    is far above 0.3 on average, the cross-fitted held-out accuracy is not."""
    rng = np.random.default_rng(12)
    m, q, p, reps = 40, 60, 0.3, 150
    ids = [f"p{j:03d}" for j in range(q)]
    folds = pl.DataFrame({"problem_id": ids, "fold": stats.assign_folds(ids, 5, seed=0)})
    budgets = pl.DataFrame({"budget": [1.0]})
    in_sample, held = [], []
    for _ in range(reps):
        acc = (rng.random((m, q)) < p).astype(float)
        rows = long_rows(acc, np.full((m, q), 1.0))
        out = stats.crossfit(rows, folds, budgets)
        assert out.height == q
        held.append(out["accuracy"].mean())
        in_sample.append(acc.mean(axis=1).max())
    held, in_sample = np.array(held), np.array(in_sample)
    se = held.std(ddof=1) / math.sqrt(reps)
    assert abs(held.mean() - p) < 4 * se, (held.mean(), se)
    assert in_sample.mean() > p + 0.08  # the selection bias the held-out estimate removes
    assert in_sample.mean() - held.mean() > 10 * se


def test_in_sample_choice_matches_compute_optimal_view(db):
    path, replay = db
    with duckdb.connect(str(path), read_only=True) as con:
        opt = frame(con, "SELECT budget, point, held_out_accuracy, num_folds FROM compute_optimal "
                    "WHERE convention = 'paper' ORDER BY budget")
    cand = aggregate.candidate_rows(replay, ["last"])
    got = stats.in_sample(cand.rename({"flops_paper": "cost"}), opt["budget"].to_numpy())
    assert got == opt["point"].to_list()
    assert opt["held_out_accuracy"].is_not_null().all() and (opt["num_folds"] == 5).all()


def test_bootstrap_size_fit_recovers_a_line_and_is_seeded():
    """Two model sizes; the larger is better only beyond a budget, so the optimal size
    steps up along the budget grid; the bootstrap interval covers the data's own fit."""
    rng = np.random.default_rng(5)
    q = 80
    rows, params = [], {}
    for model, size, base, tok in (("s", 1e8, 0.3, 10.0), ("l", 1e9, 0.6, 10.0)):
        params[model] = size
        for n in (1, 2, 4, 8, 16, 32):
            acc = np.clip(base + 0.08 * math.log2(n) + rng.normal(0, 0.2, q), 0, 1)
            for j in range(q):
                rows.append({"point": f"{model}@{n}", "model": model, "problem_id": f"p{j}",
                             "accuracy": acc[j], "cost": 2 * size * tok * n})
    rows = pl.DataFrame(rows)
    cand = stats.candidates(rows)
    sizes = [params[p.split("@")[0]] for p in cand.points]
    budgets = 10 ** np.arange(9.25, 12.0, 0.25)
    fit = stats.bootstrap_size_fit(cand, sizes, budgets, resamples=200, seed=1)
    assert fit is not None and fit.fitted > 100
    assert fit.slope_low <= fit.slope <= fit.slope_high and fit.intercept_low <= fit.intercept <= fit.intercept_high
    pick = stats.best_within(cand.mean_accuracy(), cand.mean_cost(), budgets)
    assert (fit.slope, fit.intercept) == pytest.approx(stats.fit_loglog(np.array(sizes)[pick[pick >= 0]], budgets[pick >= 0]))
    again = stats.bootstrap_size_fit(cand, sizes, budgets, resamples=200, seed=1)
    assert (again.slope_low, again.intercept_high) == (fit.slope_low, fit.intercept_high)
    one = stats.candidates(rows.filter(pl.col("model") == "s"))
    assert stats.bootstrap_size_fit(one, [1e8] * len(one.points), budgets, resamples=50) is None


def test_last_bit_differences_are_no_difference(tmp_path):
    """The same quantity computed two ways (0.1 * 3 and 0.3) is not a significant difference."""
    rows = []
    for i in range(8):
        for strategy, prm, agg, acc in (("majority", None, None, 0.1 * (i % 4 + 1) * 3 / 3), ("best_of_n", "v", "last", (i % 4 + 1) / 10)):
            rows.append({"dataset": "d", "model": "m", "prm": prm, "aggregation": agg, "problem_id": f"p{i}",
                         "strategy": strategy, "n": 1, "accuracy": acc, "accuracy_se": 0.0,
                         "output_tokens": 1.0, "prompt_tokens": 1.0, "flops_paper": 1.0, "flops_full": 1.0})
    replay = aggregate._replay_table([pl.DataFrame(rows, infer_schema_length=None)])
    a = replay.filter(pl.col("strategy") == "majority")["accuracy"]
    b = replay.filter(pl.col("strategy") == "best_of_n")["accuracy"]
    assert (a != b).any()  # they do differ in the last bits
    p = stats.paired(a, b)
    assert p.diff == 0.0 and p.p_value == 1.0 and not p.significant()
    path = tmp_path / "t.duckdb"
    aggregate.write_duckdb({"replay": replay}, path)
    with duckdb.connect(str(path), read_only=True) as con:
        got = con.execute("SELECT diff, diff_se, p_value FROM paired('d', 'm/best_of_n[v,last]@1', 'm/majority@1')").fetchone()
    assert got == (0.0, 0.0, 1.0)


def _paired_db(tmp_path, a, b, se_a=None, se_b=None):
    """A database with two points 'm/x@1' and 'm/y@1' on len(a) problems."""
    rows = []
    for strategy, acc, se in (("x", a, se_a), ("y", b, se_b)):
        for i, v in enumerate(acc):
            rows.append({"dataset": "d", "model": "m", "prm": None, "aggregation": None, "problem_id": f"p{i}",
                         "strategy": strategy, "n": 1, "accuracy": v, "accuracy_se": None if se is None else se[i],
                         "output_tokens": 1.0, "prompt_tokens": 1.0, "flops_paper": 1.0, "flops_full": 1.0})
    replay = pl.DataFrame(rows, infer_schema_length=None, schema_overrides={"accuracy": pl.Float64,
                                                                            "accuracy_se": pl.Float64})
    replay = replay.with_columns(seconds=pl.lit(None, pl.Float64), load_s=pl.lit(None, pl.Float64),
                                 device=pl.lit(None, pl.String)).select(aggregate.REPLAY_COLUMNS)
    path = tmp_path / f"p{len(list(tmp_path.iterdir()))}.duckdb"
    aggregate.write_duckdb({"replay": replay}, path)
    with duckdb.connect(str(path), read_only=True) as con:
        return frame(con, "SELECT * FROM paired('d', 'm/x@1', 'm/y@1')").row(0, named=True)


def test_degenerate_inputs_python_and_sql(tmp_path):
    """Fewer than two problems, NaN / NULL inputs: no p-value, a reason; a constant
    non-zero difference: the exact sign test (p = 2^(1 - n)), never p = 0."""
    one = stats.paired([0.7], [0.2])
    assert not one.testable() and math.isnan(one.p_value) and one.reason == "fewer than two problems"
    five = stats.paired([1.0] * 5, [0.0] * 5)
    assert five.p_value == 0.0625 and five.method == stats.SIGN and five.ci_low == -math.inf and not five.significant()
    six = stats.paired([1.0] * 6, [0.0] * 6)
    assert six.p_value == 0.03125 and (six.ci_low, six.ci_high) == (1.0, 1.0) and six.significant()
    nan = stats.paired([1.0, math.nan, 0.0], [0.0, 0.0, 0.0])
    assert not nan.testable() and math.isnan(nan.diff) and math.isnan(nan.p_value)
    assert not stats.paired([1.0, 0.0], [0.0, 0.0], [0.0, math.nan], [0.0, 0.0]).testable()
    assert stats.contrast([]).reason == "no common problems"
    # the SQL macros say the same
    row = _paired_db(tmp_path, [0.7], [0.2], [0.0], [0.0])
    assert row["num_problems"] == 1 and row["p_value"] is None and row["reason"] == "fewer than two problems"
    row = _paired_db(tmp_path, [1.0] * 5, [0.0] * 5, [0.0] * 5, [0.0] * 5)
    assert row["p_value"] == 0.0625 and row["ci_low"] == -math.inf and row["reason"] is None
    row = _paired_db(tmp_path, [1.0] * 6, [0.0] * 6, [0.0] * 6, [0.0] * 6)
    assert row["p_value"] == 0.03125 and (row["ci_low"], row["ci_high"]) == (1.0, 1.0)
    row = _paired_db(tmp_path, [1.0, 0.0, 1.0], [0.0] * 3, [0.0, None, 0.0], [0.0] * 3)  # a NULL SE
    assert row["p_value"] is None and row["diff_se"] is None and row["reason"].startswith("a NULL or NaN")
    row = _paired_db(tmp_path, [1.0, math.nan, 1.0], [0.0] * 3, [0.0] * 3, [0.0] * 3)
    assert row["diff"] is None and row["p_value"] is None
    con = duckdb.connect()
    for sql in views.MACROS:
        con.execute(sql)
    assert con.execute("SELECT p_value(0.5, 0.0, 4), p_value(0.5, 0.0), p_value(0.5, NULL, 9), "
                       "p_value('nan'::DOUBLE, 0.1, 9), p_value(0.5, 0.1, 1)").fetchone() == (0.125, None, None, None, None)


def test_accuracy_intervals_stay_inside_0_1_python_and_sql():
    """Wilson-type intervals at the effective number of problems: inside [0, 1] where the
    normal interval is not (24 problems, 1 solved), the SQL macros equal the Python."""
    x = np.array([1.0] + [0.0] * 23)
    m, se = stats.mean_se(x)
    lo, hi = stats.accuracy_interval(m, se, 24)
    assert m - stats.Z95 * se < 0 and 0 < lo < m < hi < 1
    assert float(lo) == pytest.approx(0.00717, abs=1e-4) and float(hi) == pytest.approx(0.2073, abs=1e-3)
    assert stats.accuracy_interval(0.0, 0.0, 24)[0] == 0.0
    assert float(stats.accuracy_interval(0.0, 0.0, 24)[1]) == pytest.approx(stats.Z95**2 / (24 + stats.Z95**2))
    assert float(stats.accuracy_interval(1.0, 0.0, 24)[1]) == 1.0
    # a mean of many 0/1 values: close to the normal interval
    lo, hi = stats.accuracy_interval(0.5, 0.5 / math.sqrt(400), 400)
    assert (float(lo), float(hi)) == pytest.approx((0.5 - stats.Z95 * 0.025, 0.5 + stats.Z95 * 0.025), abs=2e-3)
    con = duckdb.connect()
    for sql in views.MACROS:
        con.execute(sql)
    cases = [(m, se, 24), (0.0, 0.0, 24), (1.0, 0.0, 24), (0.3, 0.05, 64), (0.97, 0.02, 64), (0.5, 0.0, 10)]
    for p, s, n in cases:
        want = [float(v) for v in stats.accuracy_interval(p, s, n)]
        got = con.execute("SELECT accuracy_ci_low(?, ?, ?), accuracy_ci_high(?, ?, ?)", [p, s, n, p, s, n]).fetchone()
        assert got == pytest.approx(want, abs=1e-12), (p, s, n)
        assert 0 <= got[0] <= p <= got[1] <= 1
