"""The query surface of results/inference.duckdb: SQL of its views and macros.

Everything here is plain DuckDB SQL stored in the database file (views and macros
survive in it; no Python functions), so the DuckDB CLI (1.1 and later) can use it all.
The tables the views read are written by pipeline.aggregate: `replay` (one row per
problem and curve point), `models`, `analysis` (the headline protocol: one row),
`strategies` (strategy -> family) and `held_out_problems` (the cross-fitted choices of
pipeline.analysis.stats, one row per budget x problem).

Macros:
    point_label(model, prm, strategy, aggregation, n)
               the readable name of a curve point, 'model/strategy[prm,aggregation]@n'
               ('smollm2-135m/majority@16', 'smollm2-135m/best_of_n[value-head,last]@16',
               'smollm2-135m/rebase_majority[value-head]@4'); `point_label` in Python.
    paired(dataset, point_a, point_b)
               TABLE: one row comparing two curve points of a dataset (any models, PRMs,
               strategies, aggregations, n) problem by problem on their common problems:
               num_problems, accuracy_a, accuracy_b, diff (mean of a - b), diff_se,
               ci_low, ci_high (95%), p_value (two-sided). The SE counts each problem's
               Monte Carlo SE (pipeline.analysis.stats, `mean_se`). Unknown labels give
               num_problems = 0 and NULLs. Degenerate inputs give no test and a `reason`
               (no common problems; fewer than two; a NULL or NaN accuracy or SE); a
               constant non-zero difference (SE 0) gets the exact sign test, p = 2^(1 - n),
               and the sign test's interval ([d, d] from n = 6, unbounded below).
    compare_to(dataset, point_b)
               TABLE: `paired` of every point of the dataset (point_a) against point_b.
    mean_se(x, v)
               aggregate: SE of avg(x) when each x has Monte Carlo variance v:
               sqrt(var_samp(x) / n + sum(v) / n^2).
    paired_diff(a, b)
               a - b rounded to 12 decimals (exact replays of one quantity computed two
               ways differ in the last bits; that is no difference).
    normal_cdf(x), p_two_sided(z), p_value(diff, se, n := NULL)
               the standard normal CDF by `erfc_approx`, Numerical Recipes' erfcc
               (Chebyshev fit; fractional error below 1.2e-7 everywhere, so p-values keep
               7 significant digits however small), and the two-sided p-value of a
               normal z (1 for a zero difference with zero SE; the exact sign test
               2^(1 - n) for a non-zero one, NULL without n; NULL for NULL / NaN inputs
               or n < 2).
    diff_ci_low(diff, se, n), diff_ci_high(diff, se, n)
               the 95% interval of a paired difference (normal; the sign test's where
               se = 0); NULL when not testable.
    accuracy_ci_low(p, se, n), accuracy_ci_high(p, se, n)
               the 95% interval of an accuracy (a mean over n problems of values in
               [0, 1]): Wilson's score interval at the effective number of problems
               p (1 - p) / se^2 (n at p = 0 or 1); inside [0, 1]
               (pipeline.analysis.stats.accuracy_interval).

Views:
    accuracy_vs_flops  one row per curve point (dataset, model, prm, strategy,
               aggregation, n): accuracy (mean over problems), accuracy_se (standard error
               across problems), output_tokens and prompt_tokens (means per problem),
               flops_paper and flops_full (means per problem, the two conventions of
               pipeline.core.flops), num_problems, accuracy_ci_low / accuracy_ci_high
               (95%, inside [0, 1]: `accuracy_ci_low`), and `oracle` (true for coverage / pass@n,
               which needs the reference answer to pick a sample and so is an upper
               bound, not a strategy one can run, and for the adaptive policy with oracle
               difficulty bins, ORACLE_STRATEGIES). Every aggregation is here.
    points     accuracy_vs_flops plus `point` (its label), `family` (sampling-based
               voting, PRM-based selection, tree search, difficulty-adaptive: the stage
               the strategy comes from, table `strategies`) and `headline` (no step
               aggregation, or one of `analysis.aggregations`: the points the front,
               compute_optimal, the claims and the default figures use).
    point_problems  `replay` rows with their point label: the per-problem data behind
               every point (what `paired` joins).
    held_out   per (dataset, convention, device, budget): the cross-fitted choice's held-out
               accuracy (mean over problems of the choice each problem's fold made on
               the other folds), accuracy_se (nested cross-validation, table
               `held_out_se`, never below the naive one; the naive `mean_se` where the
               problems are too few for nested folds: `se_method`), ci_low / ci_high (95%,
               inside [0, 1]), naive_se, flops (mean cost of the held-out
               choices), num_problems, num_folds, choices (the distinct points chosen).
               `grid_k` identifies a budget of the compute_optimal grid (budget =
               10^(grid_k / 4)), `at_point` a budget equal to that point's cost.
    pareto     the accuracy-cost Pareto front per (dataset, convention, device) over the
               headline non-oracle points: every point that no other point dominates
               (another point dominates it when it costs at most as much and is at least
               as accurate, and is strictly better in one of the two). Conventions
               (COST_CONVENTIONS): 'paper' and 'full' count FLOPs (device NULL: one front
               over every point); 'seconds' is the measured wall-clock seconds per problem
               (pipeline.analysis.latency), a MEASURED convention: one front per device (`device`,
               the device the points' seconds were measured on), so seconds from different
               devices never compete; points with NULL seconds (not measured) and points
               whose seconds add up work on several devices ('mixed: ...') are in no
               seconds front (refused rather than compared: such a number is no single
               device's). Of points tied in both (at n = 1 every voting strategy is the
               same one sample) one is kept, the first by (prm NULLS FIRST, strategy,
               aggregation, model, n), and `tied` counts them. Long format: `convention`
               is one of COST_CONVENTIONS' names ('paper', 'full', 'seconds') and `flops`
               the point's cost in it (FLOPs, or seconds; flops_paper / flops_full /
               seconds are kept too). Ordered by flops, so accuracy rises strictly along
               it. Held out: held_out_accuracy, held_out_se, held_out_flops (the
               `held_out` choice at a budget equal to this point's cost; the in-sample
               front is the maximum of many noisy points, the held-out one is not). Each
               point against the previous (cheaper) front point, paired: previous (its
               label), gain (mean accuracy difference), gain_se, gain_ci_low,
               gain_ci_high, gain_p, beats_previous (the 95% interval excludes 0 on the
               positive side). NULL for the first point. held_out_ci_low / _high: the
               held-out accuracy's 95% interval.
    compute_optimal  per (dataset, convention, device, budget): the best point within the
               budget, i.e. the most accurate headline non-oracle point of that front
               with flops (its cost) <= budget (= the Pareto point with the largest flops
               <= budget). Budgets form a log-spaced grid, BUDGETS_PER_DECADE per decade
               (budget = 10^(k / 4), in FLOPs or in seconds, k negative below one), from
               the cheapest point's cost up to the first grid value at or above the
               costliest front point; budgets below the cheapest point have no row.
               Columns: device (as in pareto), budget, log10_budget, model, params_total
               (from `models`), prm, strategy, aggregation, n, accuracy, accuracy_se,
               flops, flops_paper, flops_full, seconds (in-sample), point, and held
               out: held_out_accuracy, held_out_se, held_out_flops, folds_agreeing (of num_folds folds, how many
               chose this same point on their training folds), held_out_ci_low / _high. In-sample accuracy never
               decreases as the budget grows; the held-out accuracy need not.
"""

from __future__ import annotations

from pipeline.analysis.latency import MIXED, SEPARATOR
from pipeline.analysis.stats import DECIMALS, SIGN_MIN_PROBLEMS, Z95

# Cost conventions: (name, per-problem cost column of `replay` / `accuracy_vs_flops`).
# The front, compute_optimal, the cross-fitting and the adaptive allocation run once per
# entry; adding a convention is one line here (and its column in replay).
COST_CONVENTIONS: tuple[tuple[str, str], ...] = (
    ("paper", "flops_paper"),
    ("full", "flops_full"),
    ("seconds", "seconds"),
)
# Conventions whose cost is measured on a device (pipeline.analysis.latency) rather than counted:
# one front (and compute_optimal grid, and cross-fitted choice) per device, keyed by the
# `device` column, so that seconds from different devices never compete; a point whose
# own numbers come from several devices ("mixed: ..."), or whose cost is NULL (not
# measured), is in no front of the convention. The other conventions have device NULL.
MEASURED_CONVENTIONS: tuple[str, ...] = ("seconds",)
# The conventions that count FLOPs (the same on every device).
FLOPS_CONVENTIONS: tuple[tuple[str, str], ...] = tuple(
    c for c in COST_CONVENTIONS if c[0] not in MEASURED_CONVENTIONS)
BUDGETS_PER_DECADE = 4

FAMILIES = ("sampling-based voting", "PRM-based selection", "tree search", "difficulty-adaptive")
ADAPTIVE_FAMILY = FAMILIES[3]


def adaptive_strategy(convention: str, *, oracle: bool = False) -> str:
    """The `replay` strategy of the difficulty-adaptive policy chosen for a cost
    convention (pipeline.analysis.allocation): 'adaptive_paper', or with oracle difficulty bins
    'adaptive_oracle_paper'."""
    return f"adaptive_oracle_{convention}" if oracle else f"adaptive_{convention}"


# The adaptive allocation runs in the FLOPs conventions only: its cost model assumes a
# strategy's cost is linear in n, which holds for counted FLOPs, not for measured seconds
# (batching), and seconds may be NULL or per device.
ADAPTIVE_STRATEGIES = tuple(adaptive_strategy(name, oracle=o) for name, _ in FLOPS_CONVENTIONS
                            for o in (False, True))

# Strategies that need the reference answer to choose (upper bounds, not runnable):
# listed in accuracy_vs_flops.oracle, left out of the Pareto front, compute_optimal and
# the held-out choices. Coverage (pass@n) picks a correct sample; the adaptive policy
# with oracle difficulty bins bins problems by their pass@1.
ORACLE_STRATEGIES = ("coverage", *(adaptive_strategy(name, oracle=True) for name, _ in FLOPS_CONVENTIONS))


def point_label(model: str, prm: str | None, strategy: str, aggregation: str | None, n: int) -> str:
    """'model/strategy[prm,aggregation]@n', as the `point_label` macro writes it."""
    label = f"{model}/{strategy}"
    if prm is not None:
        label += f"[{prm}" + (f",{aggregation}" if aggregation is not None else "") + "]"
    return f"{label}@{n}"


def point_label_expr():
    """`point_label` as a polars expression over model, prm, strategy, aggregation, n."""
    import polars as pl

    bracket = pl.concat_str([pl.lit("["), pl.col("prm"),
                             (pl.lit(",") + pl.col("aggregation")).fill_null(""), pl.lit("]")])
    return pl.concat_str([pl.col("model"), pl.lit("/"), pl.col("strategy"), bracket.fill_null(""),
                          pl.lit("@"), pl.col("n").cast(pl.String)])


def _cost_case(alias: str) -> str:
    whens = " ".join(f"WHEN '{name}' THEN {alias}.{col}" for name, col in COST_CONVENTIONS)
    return f"CASE c.convention {whens} END"


def _measured(convention: str) -> str:
    """SQL: is `convention` (a column) one of MEASURED_CONVENTIONS?"""
    names = ", ".join(f"'{name}'" for name in MEASURED_CONVENTIONS)
    return f"{convention} IN ({names})" if names else "false"


_CONVENTION_ROWS = ", ".join(f"('{name}')" for name, _ in COST_CONVENTIONS)
_ORACLES = ", ".join(f"'{s}'" for s in ORACLE_STRATEGIES)

# Numerical Recipes' erfcc: erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), for
# z >= 0; fractional error < 1.2e-7. The nested macro evaluates t once per call site.
MACROS = [
    """CREATE MACRO erfc_poly(z, t) AS t * exp(-z * z - 1.26551223 + t * (1.00002368 + t * (0.37409196
        + t * (0.09678418 + t * (-0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587
        + t * (-0.82215223 + t * 0.17087277)))))))))""",
    """CREATE MACRO erfc_approx(x) AS CASE WHEN x >= 0 THEN erfc_poly(x, 1 / (1 + 0.5 * x))
        ELSE 2 - erfc_poly(-x, 1 / (1 - 0.5 * x)) END""",
    "CREATE MACRO normal_cdf(x) AS 0.5 * erfc_approx(-x / sqrt(2))",
    "CREATE MACRO p_two_sided(z) AS erfc_approx(abs(z) / sqrt(2))",
    # Degenerate inputs (pipeline.analysis.stats.contrast): a NULL or NaN, or fewer than two
    # problems, give NULL; a constant non-zero difference (SE 0) the exact sign test.
    "CREATE MACRO sign_test_p(n) AS least(1.0, power(2.0, 1 - n))",
    """CREATE MACRO untestable(diff, se, n) AS diff IS NULL OR se IS NULL OR isnan(diff) OR isnan(se)
        OR coalesce(n < 2, false)""",
    """CREATE MACRO p_value(diff, se, n := NULL) AS CASE WHEN untestable(diff, se, n) THEN NULL
        WHEN se > 0 THEN p_two_sided(diff / se) WHEN diff = 0 THEN 1.0
        WHEN n IS NOT NULL THEN sign_test_p(n) END""",
    f"""CREATE MACRO diff_ci_low(diff, se, n) AS CASE WHEN untestable(diff, se, n) THEN NULL
        WHEN se > 0 THEN diff - {Z95} * se WHEN n >= {SIGN_MIN_PROBLEMS} THEN diff ELSE '-inf'::DOUBLE END""",
    f"""CREATE MACRO diff_ci_high(diff, se, n) AS CASE WHEN untestable(diff, se, n) THEN NULL
        WHEN se > 0 THEN diff + {Z95} * se WHEN n >= {SIGN_MIN_PROBLEMS} THEN diff ELSE 'inf'::DOUBLE END""",
    """CREATE MACRO test_reason(n, bad) AS CASE WHEN coalesce(n, 0) = 0 THEN 'no common problems'
        WHEN bad > 0 THEN 'a NULL or NaN value or standard error' WHEN n < 2 THEN 'fewer than two problems' END""",
    # Wilson score interval of an accuracy at the effective number of problems
    # p (1 - p) / se^2 (pipeline.analysis.stats.accuracy_interval): inside [0, 1].
    """CREATE MACRO wilson_m(p, se, n) AS CASE WHEN p > 0 AND p < 1 AND se > 0 THEN p * (1 - p) / (se * se)
        WHEN p > 0 AND p < 1 THEN NULL ELSE n END""",
    f"""CREATE MACRO wilson_bound(p, m, sgn) AS CASE WHEN m IS NULL THEN p
        ELSE (p + {Z95 ** 2} / (2 * m) + sgn * {Z95} * sqrt(p * (1 - p) / m + {Z95 ** 2} / (4 * m * m)))
             / (1 + {Z95 ** 2} / m) END""",
    """CREATE MACRO accuracy_ci_low(p, se, n) AS CASE
        WHEN p IS NULL OR se IS NULL OR isnan(p) OR isnan(se) OR NOT coalesce(n >= 1, false) THEN NULL
        WHEN p <= 0 THEN 0.0 ELSE greatest(0.0, wilson_bound(least(p, 1.0), wilson_m(least(p, 1.0), se, n), -1)) END""",
    """CREATE MACRO accuracy_ci_high(p, se, n) AS CASE
        WHEN p IS NULL OR se IS NULL OR isnan(p) OR isnan(se) OR NOT coalesce(n >= 1, false) THEN NULL
        WHEN p >= 1 THEN 1.0 ELSE least(1.0, wilson_bound(greatest(p, 0.0), wilson_m(greatest(p, 0.0), se, n), 1)) END""",
    # Var(mean) = var_samp(x) / n + sum(Monte Carlo variances) / n^2: see pipeline.analysis.stats.
    """CREATE MACRO mean_se(x, v) AS sqrt(coalesce(var_samp(x), 0) / nullif(count(x), 0)
        + sum(v) / nullif(count(x) * count(x), 0))""",
    # A per-problem difference of two points, rounded (pipeline.analysis.stats.DECIMALS) so that
    # the same quantity computed two ways does not differ in its last bits.
    f"CREATE MACRO paired_diff(a, b) AS round(a - b, {DECIMALS})",
    """CREATE MACRO point_label(model, prm, strategy, aggregation, n) AS model || '/' || strategy
        || coalesce('[' || prm || coalesce(',' || aggregation, '') || ']', '') || '@' || n::VARCHAR""",
]

ACCURACY_VS_FLOPS = f"""
CREATE VIEW accuracy_vs_flops AS
SELECT dataset, model, prm, strategy, aggregation, n,
       avg(accuracy) AS accuracy,
       CASE WHEN count(*) > 1 THEN stddev_samp(accuracy) / sqrt(count(*)) ELSE 0 END
           AS accuracy_se,
       accuracy_ci_low(avg(accuracy), CASE WHEN count(*) > 1 THEN stddev_samp(accuracy) / sqrt(count(*))
                       ELSE 0 END, count(*)) AS accuracy_ci_low,
       accuracy_ci_high(avg(accuracy), CASE WHEN count(*) > 1 THEN stddev_samp(accuracy) / sqrt(count(*))
                        ELSE 0 END, count(*)) AS accuracy_ci_high,
       avg(output_tokens) AS output_tokens,
       avg(prompt_tokens) AS prompt_tokens,
       avg(flops_paper) AS flops_paper,
       avg(flops_full) AS flops_full,
       count(*) AS num_problems,
       strategy IN ({_ORACLES}) AS oracle,
       -- NULL unless every problem is measured (avg would silently skip NULLs)
       CASE WHEN count(seconds) = count(*) THEN avg(seconds) END AS seconds,
       avg(load_s) AS load_s,
       CASE WHEN count(DISTINCT device) > 1
            THEN '{MIXED}' || string_agg(DISTINCT device, '{SEPARATOR}' ORDER BY device)
            ELSE any_value(device) END AS device
FROM replay
GROUP BY dataset, model, prm, strategy, aggregation, n
ORDER BY dataset, model, prm NULLS FIRST, strategy, aggregation NULLS FIRST, n
"""

POINT_PROBLEMS = """
CREATE VIEW point_problems AS
SELECT point_label(model, prm, strategy, aggregation, n) AS point, * FROM replay
"""

POINTS = """
CREATE VIEW points AS
SELECT a.dataset, point_label(a.model, a.prm, a.strategy, a.aggregation, a.n) AS point,
       a.*  EXCLUDE (dataset),
       coalesce(s.family, 'other') AS family,
       coalesce(a.aggregation IS NULL
                OR list_contains((SELECT any_value(aggregations) FROM analysis), a.aggregation), false)
           AS headline
FROM accuracy_vs_flops a LEFT JOIN strategies s USING (strategy)
ORDER BY a.dataset, a.model, a.prm NULLS FIRST, a.strategy, a.aggregation NULLS FIRST, a.n
"""

HELD_OUT = """
CREATE VIEW held_out AS
WITH raw AS (
    SELECT dataset, convention, device, grid_k, at_point, min(budget) AS budget,
           avg(accuracy) AS accuracy, mean_se(accuracy, accuracy_se * accuracy_se) AS naive_se,
           avg(cost) AS flops, count(*) AS num_problems, count(DISTINCT fold) AS num_folds,
           list_sort(list(DISTINCT point)) AS choices
    FROM held_out_problems
    GROUP BY dataset, convention, device, grid_k, at_point
)
SELECT r.dataset, r.convention, r.device, r.grid_k, r.at_point, r.budget, r.accuracy,
       greatest(coalesce(s.se, r.naive_se), r.naive_se) AS accuracy_se,
       accuracy_ci_low(r.accuracy, greatest(coalesce(s.se, r.naive_se), r.naive_se), r.num_problems) AS ci_low,
       accuracy_ci_high(r.accuracy, greatest(coalesce(s.se, r.naive_se), r.naive_se), r.num_problems) AS ci_high,
       r.naive_se, CASE WHEN s.se IS NOT NULL THEN 'nested CV' ELSE 'naive' END AS se_method,
       r.flops, r.num_problems, r.num_folds, r.choices
FROM raw r LEFT JOIN {held_out_se} s
  ON s.dataset = r.dataset AND s.convention = r.convention AND s.device IS NOT DISTINCT FROM r.device
 AND s.grid_k IS NOT DISTINCT FROM r.grid_k AND s.at_point IS NOT DISTINCT FROM r.at_point
ORDER BY r.dataset, r.convention, r.device NULLS FIRST, r.budget
"""

# Points compare on keys rounded to 12 digits (accuracy; log10 of FLOPs), so that sums
# taken in another order do not split a tie. Of tied points (at n = 1 every voting
# strategy is the one sample, and in the paper convention a PRM costs nothing) the front
# keeps one, the first by (prm NULLS FIRST, strategy, aggregation, model, n), and counts
# them in `tied`. Each kept point is compared, paired, with the front point before it.
PARETO = f"""
CREATE VIEW pareto AS
WITH pts AS (
    SELECT p.dataset, c.convention, CASE WHEN {_measured("c.convention")} THEN p.device END AS device,
           p.point, p.model, p.prm, p.strategy, p.aggregation, p.n,
           p.accuracy, p.accuracy_se, {_cost_case("p")} AS flops,
           p.flops_paper, p.flops_full, p.seconds, p.output_tokens, p.prompt_tokens
    FROM points p CROSS JOIN (VALUES {_CONVENTION_ROWS}) AS c(convention)
    WHERE p.headline AND NOT p.oracle AND {_cost_case("p")} IS NOT NULL
      -- measured costs compete per device; a point measured on several devices nowhere
      AND (NOT {_measured("c.convention")} OR NOT coalesce(starts_with(p.device, '{MIXED}'), true))
), keyed AS (
    SELECT *, round(accuracy, 12) AS acc_key,
           round(log10(greatest(flops, 1e-300)), 12) AS flops_key
    FROM pts
), front AS (
    SELECT p.* FROM keyed p
    WHERE NOT EXISTS (
        SELECT 1 FROM keyed q
        WHERE q.dataset = p.dataset AND q.convention = p.convention
          AND q.device IS NOT DISTINCT FROM p.device
          AND q.flops_key <= p.flops_key AND q.acc_key >= p.acc_key
          AND (q.flops_key < p.flops_key OR q.acc_key > p.acc_key)
    )
), kept AS (
    SELECT *, count(*) OVER ties AS tied FROM front
    WINDOW ties AS (PARTITION BY dataset, convention, device, flops_key, acc_key)
    QUALIFY row_number() OVER (PARTITION BY dataset, convention, device, flops_key, acc_key
        ORDER BY prm NULLS FIRST, strategy, aggregation NULLS FIRST, model, n) = 1
), stepped AS (
    SELECT *, lag(point) OVER (PARTITION BY dataset, convention, device ORDER BY flops) AS previous
    FROM kept
), step AS (
    SELECT s.dataset, s.convention, s.point, avg(paired_diff(x.accuracy, y.accuracy)) AS gain,
           mean_se(paired_diff(x.accuracy, y.accuracy),
                   x.accuracy_se * x.accuracy_se + y.accuracy_se * y.accuracy_se) AS gain_se,
           count(*) AS gain_n
    FROM stepped s
    JOIN point_problems x ON x.dataset = s.dataset AND x.point = s.point
    JOIN point_problems y ON y.dataset = s.dataset AND y.point = s.previous
                         AND y.problem_id = x.problem_id
    GROUP BY s.dataset, s.convention, s.point
)
SELECT s.dataset, s.convention, s.device, s.model, s.prm, s.strategy, s.aggregation, s.n, s.accuracy,
       s.accuracy_se, s.flops, s.flops_paper, s.flops_full, s.seconds, s.output_tokens, s.prompt_tokens,
       s.tied, s.point,
       h.accuracy AS held_out_accuracy, h.accuracy_se AS held_out_se, h.flops AS held_out_flops,
       s.previous, t.gain, t.gain_se,
       diff_ci_low(t.gain, t.gain_se, t.gain_n) AS gain_ci_low, diff_ci_high(t.gain, t.gain_se, t.gain_n) AS gain_ci_high,
       p_value(t.gain, t.gain_se, t.gain_n) AS gain_p,
       CASE WHEN s.previous IS NOT NULL THEN coalesce(diff_ci_low(t.gain, t.gain_se, t.gain_n) > 0, false) END
           AS beats_previous,
       h.ci_low AS held_out_ci_low, h.ci_high AS held_out_ci_high
FROM stepped s
LEFT JOIN step t ON t.dataset = s.dataset AND t.convention = s.convention AND t.point = s.point
LEFT JOIN held_out h ON h.dataset = s.dataset AND h.convention = s.convention
                    AND h.device IS NOT DISTINCT FROM s.device AND h.at_point = s.point
ORDER BY s.dataset, s.convention, s.device NULLS FIRST, s.flops
"""

# The best point within each budget of a log-spaced grid: the front's last point at or
# below the budget (ties between identical points broken by name, for a stable answer),
# beside the cross-fitted choice at the same budget (`held_out`, joined on the grid index).
COMPUTE_OPTIMAL = f"""
CREATE VIEW compute_optimal AS
WITH grid AS (
    SELECT dataset, convention, device,
           unnest(range(floor({BUDGETS_PER_DECADE} * log10(min(flops)))::BIGINT,
                        ceil({BUDGETS_PER_DECADE} * log10(max(flops)))::BIGINT + 1)) AS k
    FROM pareto WHERE flops > 0
    GROUP BY dataset, convention, device
), best AS (
    SELECT g.dataset, g.convention, g.device, g.k, power(10, g.k / {BUDGETS_PER_DECADE}.0) AS budget,
           g.k / {BUDGETS_PER_DECADE}.0 AS log10_budget,
           f.model, f.prm, f.strategy, f.aggregation, f.n, f.accuracy, f.accuracy_se,
           f.flops, f.flops_paper, f.flops_full, f.seconds, f.point
    FROM grid g
    JOIN pareto f ON f.dataset = g.dataset AND f.convention = g.convention
                 AND f.device IS NOT DISTINCT FROM g.device
                 AND f.flops <= power(10, g.k / {BUDGETS_PER_DECADE}.0)
    QUALIFY row_number() OVER (
        PARTITION BY g.dataset, g.convention, g.device, g.k
        ORDER BY f.accuracy DESC, f.flops, f.model, f.prm NULLS FIRST, f.strategy,
                 f.aggregation NULLS FIRST, f.n) = 1
), agree AS (
    SELECT dataset, convention, device, grid_k, point, count(DISTINCT fold) AS folds
    FROM held_out_problems WHERE grid_k IS NOT NULL
    GROUP BY dataset, convention, device, grid_k, point
)
SELECT b.dataset, b.convention, b.device, b.budget, b.log10_budget, b.model, m.params_total,
       b.prm, b.strategy, b.aggregation, b.n, b.accuracy, b.accuracy_se, b.flops,
       b.flops_paper, b.flops_full, b.seconds, b.point,
       h.accuracy AS held_out_accuracy, h.accuracy_se AS held_out_se, h.flops AS held_out_flops,
       CASE WHEN h.num_folds IS NOT NULL THEN coalesce(a.folds, 0) END AS folds_agreeing,
       h.num_folds, h.ci_low AS held_out_ci_low, h.ci_high AS held_out_ci_high
FROM best b LEFT JOIN {{models}} m USING (model)
LEFT JOIN held_out h ON h.dataset = b.dataset AND h.convention = b.convention AND h.grid_k = b.k
                    AND h.device IS NOT DISTINCT FROM b.device
LEFT JOIN agree a ON a.dataset = b.dataset AND a.convention = b.convention AND a.grid_k = b.k
                 AND a.device IS NOT DISTINCT FROM b.device AND a.point = b.point
ORDER BY b.dataset, b.convention, b.device NULLS FIRST, b.budget
"""

# num_bad counts problems with a NULL or NaN accuracy or SE: the comparison is then not
# testable (a NULL would silently drop out of sum() and avg()).
_PAIRED_BODY = """
SELECT x.dataset, x.point AS point_a, y.point AS point_b, count(*) AS num_problems,
       avg(x.accuracy) AS accuracy_a, avg(y.accuracy) AS accuracy_b,
       avg(paired_diff(x.accuracy, y.accuracy)) AS raw_diff,
       mean_se(paired_diff(x.accuracy, y.accuracy),
               x.accuracy_se * x.accuracy_se + y.accuracy_se * y.accuracy_se) AS raw_se,
       count(*) FILTER (WHERE x.accuracy IS NULL OR y.accuracy IS NULL OR isnan(x.accuracy) OR isnan(y.accuracy)
                        OR x.accuracy_se IS NULL OR y.accuracy_se IS NULL OR isnan(x.accuracy_se)
                        OR isnan(y.accuracy_se)) AS num_bad
FROM point_problems x
JOIN point_problems y ON y.dataset = x.dataset AND y.problem_id = x.problem_id
"""

# Degenerate inputs (pipeline.analysis.stats.contrast): `reason` says why there is no
# test; a constant non-zero difference gets the exact sign test and its interval.
_PAIRED_STATS = """CASE WHEN num_bad = 0 THEN raw_diff END AS diff,
       CASE WHEN test_reason(num_problems, num_bad) IS NULL THEN raw_se END AS diff_se,
       CASE WHEN test_reason(num_problems, num_bad) IS NULL THEN diff_ci_low(raw_diff, raw_se, num_problems) END
           AS ci_low,
       CASE WHEN test_reason(num_problems, num_bad) IS NULL THEN diff_ci_high(raw_diff, raw_se, num_problems) END
           AS ci_high,
       CASE WHEN test_reason(num_problems, num_bad) IS NULL THEN p_value(raw_diff, raw_se, num_problems) END
           AS p_value,
       test_reason(num_problems, num_bad) AS reason"""

TABLE_MACROS = [
    f"""CREATE MACRO paired(ds, a, b) AS TABLE
SELECT ds AS dataset, a AS point_a, b AS point_b,
       coalesce(num_problems, 0) AS num_problems, accuracy_a, accuracy_b,
       {_PAIRED_STATS}
FROM (SELECT 1) LEFT JOIN ({_PAIRED_BODY}
      WHERE x.dataset = ds AND x.point = a AND y.point = b
      GROUP BY x.dataset, x.point, y.point) ON true""",
    f"""CREATE MACRO compare_to(ds, b) AS TABLE
SELECT dataset, point_a, point_b, num_problems, accuracy_a, accuracy_b, {_PAIRED_STATS} FROM ({_PAIRED_BODY}
      WHERE x.dataset = ds AND y.point = b
      GROUP BY x.dataset, x.point, y.point)
ORDER BY diff DESC NULLS LAST, point_a""",
]

# A stand-in for a database built without a models table (unit tests of the views).
_NO_MODELS = "(SELECT NULL::VARCHAR AS model, NULL::BIGINT AS params_total)"

VIEW_NAMES = ("accuracy_vs_flops", "point_problems", "points", "held_out", "pareto", "compute_optimal")


# A stand-in for a database built without the held_out_se table (no nested-CV SEs).
_NO_HELD_OUT_SE = """(SELECT NULL::VARCHAR AS dataset, NULL::VARCHAR AS convention, NULL::VARCHAR AS device,
    NULL::BIGINT AS grid_k, NULL::VARCHAR AS at_point, NULL::DOUBLE AS se WHERE false)"""


def create(con, *, has_models: bool = True, has_held_out_se: bool = True) -> None:
    """Macros and views, in dependency order, on a connection whose tables exist."""
    for sql in MACROS:
        con.execute(sql)
    for sql in (ACCURACY_VS_FLOPS, POINT_PROBLEMS, POINTS,
                HELD_OUT.format(held_out_se="held_out_se" if has_held_out_se else _NO_HELD_OUT_SE), PARETO):
        con.execute(sql)
    con.execute(COMPUTE_OPTIMAL.format(models="models" if has_models else _NO_MODELS))
    for sql in TABLE_MACROS:
        con.execute(sql)
