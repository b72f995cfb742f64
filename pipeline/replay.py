"""Replay voting strategies over the cached samples, as exact expectations.

Each problem has N cached samples (temperature > 0). Spending a budget of n samples is
modelled as drawing a uniformly random n-subset of the cache without replacement, and
every strategy's accuracy is the *exact* expectation over all C(N, n) subsets, computed
combinatorially rather than by Monte Carlo resampling, so replays are deterministic and
carry no resampling noise:

    coverage   pass@n: at least one of the n samples is correct (Chen et al. 2021).
    majority   plurality vote over the n samples' answer classes; unanswered samples
               cast no vote, ties among the top classes are broken uniformly at random,
               a subset without any vote counts as wrong.
    greedy     the single temperature-0 sample (n = 1), when that cache is given.

PRM strategies (`replay_prm`, process-reward-model step scores aggregated per sample by
min/last/prod/mean): best_of_n (exact, by order statistics) and weighted_majority (exact
enumeration for small C(N, n), seeded Monte Carlo with a standard error otherwise).

Token counts are expectations too: a random n-subset's expected total is n times the
problem's mean over the cache. FLOPs conventions live in `pipeline.flops`.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from pipeline import schemas
from pipeline.progress import progress

# --------------------------------------------------------------------------- estimators

_binom_cache: np.ndarray = np.ones((1, 1))


def _binom_table(n_max: int) -> np.ndarray:
    """Float64 Pascal triangle: table[a, b] = C(a, b) for 0 <= a, b <= n_max (0 if b > a).

    Built by additions of positive numbers only, so every entry carries a relative error
    of at most ~a * 2^-53 (exact integers while below 2^53). C(256, 128) ~ 5.8e75 fits
    easily; float64 overflows only past N ~ 1020, which `majority_accuracy` rejects.
    """
    global _binom_cache
    if _binom_cache.shape[0] <= n_max:
        size = max(n_max + 1, 2 * _binom_cache.shape[0])
        table = np.zeros((size, size))
        table[0, 0] = 1.0
        for a in range(1, size):
            table[a, 0] = 1.0
            table[a, 1 : a + 1] = table[a - 1, 1 : a + 1] + table[a - 1, 0:a]
        _binom_cache = table
    return _binom_cache


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """P(at least one correct sample in a random k-subset) = 1 - C(N-c, k) / C(N, k).

    Product form 1 - prod_{i=N-c+1}^{N} (1 - k/i) avoids huge binomials (Chen et al.
    2021, the Codex paper); every factor lies in [0, 1], so it is numerically stable.
    """
    n, c = int(num_samples), int(num_correct)
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= num_correct <= num_samples, got c={c}, N={n}")
    if not 0 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= k <= num_samples, got k={k}, N={n}")
    if n - c < k:  # every k-subset must contain a correct sample
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def _conv_rows(rows: np.ndarray, kernel: np.ndarray, width: int) -> np.ndarray:
    """Convolve every row of `rows` with `kernel`, keeping the first `width` terms.

    Done as one matmul with the (width x width) lower-triangular Toeplitz matrix of
    `kernel` (a strided view, copied once by matmul), which beats a python loop over
    rows or kernel taps for the kernel lengths (up to ~N/2) that occur here.
    """
    if kernel.size == 1:
        return rows * kernel[0]
    v = np.zeros(2 * width - 1)
    v[width - 1 : width - 1 + kernel.size] = kernel[:width]
    # toeplitz[t, t'] = v[width - 1 + t - t'] = kernel[t - t'] (0 outside the kernel)
    toeplitz = sliding_window_view(v, width)[:, ::-1]
    return rows @ toeplitz.T


@lru_cache(maxsize=65536)
def _majority_win_prob(others: tuple[int, ...], s_c: int, unanswered: int, n: int) -> float:
    """P(class of size s_c wins the plurality vote); `others` = other non-empty classes.

    For each count k >= 1 of the chosen class in the subset, the other m = n - k draws
    come from (a) "constrained" classes of size >= k, each of which must contribute
    <= k votes, and (b) a free pool: the unanswered samples plus every class smaller
    than k (which can never exceed k votes), counted in one go by C(pool, .) thanks to
    Vandermonde's identity. A DP over the constrained classes tracks
        dp[t, r] = #ways to draw r samples from them, each <= k, with exactly t at k,
    and a subset with t tied classes is won with probability 1 / (1 + t).
    All terms are positive, so float64 sums lose no precision to cancellation.

    Cost: per k, each constrained class costs one (t x m) @ (m x m) matmul; classes
    with size >= k are at most N / k, and sum_j min(s_j, n) <= N, so the whole call is
    O(N * n^2 * classes) flops in the worst case but ~N matmuls of size <= n in
    practice (a few ms at N = 256, n = 128, 10 classes).
    """
    total_n = s_c + sum(others) + unanswered
    binom = _binom_table(total_n)
    others_arr = np.asarray(others, dtype=np.int64)
    acc = 0.0
    # k can be no smaller than n minus everything outside the chosen class
    k_lo = max(1, n - (total_n - s_c))
    for k in range(k_lo, min(s_c, n) + 1):
        m = n - k
        constrained = others_arr[others_arr >= k]
        pool = unanswered + int(others_arr[others_arr < k].sum())
        dp = np.zeros((1, m + 1))
        dp[0, 0] = 1.0
        for s in constrained:
            new = np.zeros((dp.shape[0] + 1, m + 1))
            # this class contributes x < k votes: no new tie
            new[:-1] = _conv_rows(dp, binom[s, :k], m + 1)
            # exactly k votes: one more class tied with the chosen one
            if k <= m:
                new[1:, k:] += binom[s, k] * dp[:, : m + 1 - k]
            dp = new
        fill = binom[pool, m - np.arange(m + 1)]  # C(pool, m - r): rest from the free pool
        ways_by_ties = dp @ fill
        acc += binom[s_c, k] * float(ways_by_ties @ (1.0 / np.arange(1, dp.shape[0] + 1)))
    return float(acc / binom[total_n, n])


def majority_accuracy(
    class_sizes: Sequence[int], correct_class: int | None, num_unanswered: int, n: int
) -> float:
    """Exact expected accuracy of plurality voting over a random n-subset of the cache.

    The cache holds N = sum(class_sizes) + num_unanswered samples; class_sizes[j] counts
    the samples whose answer falls in equivalence class j. Unanswered samples cast no
    vote; ties among the top classes are broken uniformly at random; a subset with no
    vote at all is wrong. `correct_class` indexes class_sizes (None: nothing correct).
    """
    sizes = [int(s) for s in class_sizes]
    if any(s < 0 for s in sizes) or num_unanswered < 0:
        raise ValueError(f"majority_accuracy: negative count in {sizes}, unanswered={num_unanswered}")
    total_n = sum(sizes) + int(num_unanswered)
    if not 1 <= n <= total_n:
        raise ValueError(f"majority_accuracy: need 1 <= n <= N={total_n}, got n={n}")
    if total_n > 1020:  # C(N, N/2) would overflow float64
        raise ValueError(f"majority_accuracy: N={total_n} too large for float64 binomials")
    if correct_class is None:
        return 0.0
    if not 0 <= correct_class < len(sizes):
        raise ValueError(f"majority_accuracy: correct_class {correct_class} out of range for {len(sizes)} classes")
    s_c = sizes[correct_class]
    if s_c == 0:
        return 0.0
    # class order is irrelevant: canonicalise so the cache hits across problems
    others = tuple(sorted(s for j, s in enumerate(sizes) if j != correct_class and s > 0))
    return _majority_win_prob(others, s_c, int(num_unanswered), int(n))


def budgets(N: int) -> list[int]:
    """Sample budgets to replay: 1, 2, 4, ... <= N, plus N itself if not a power of two."""
    if N < 1:
        raise ValueError(f"budgets: need N >= 1, got {N}")
    out = [1 << i for i in range(N.bit_length()) if 1 << i <= N]
    if out[-1] != N:
        out.append(N)
    return out


# --------------------------------------------------------------------------- replay


def _problem_order(df: pl.DataFrame) -> list[str]:
    return df.get_column("problem_id").unique(maintain_order=True).to_list()


def _check_unique(df: pl.DataFrame, keys: list[str], what: str) -> None:
    dup = df.filter(pl.struct(keys).is_duplicated())
    if dup.height:
        row = dup.row(0, named=True)
        raise ValueError(f"replay: duplicate {what} row {({k: row[k] for k in keys})}")


def _attach_tokens(keys: pl.DataFrame, tokens: pl.DataFrame, source: str) -> pl.DataFrame:
    """Join token counts of `source` onto (problem_id, sample_idx) rows; all must match."""
    tok = tokens.filter(pl.col("source") == source).select(
        pl.col("problem_id").cast(pl.String),
        pl.col("sample_idx").cast(pl.Int32),
        pl.col("prompt_tokens").cast(pl.Float64),
        pl.col("output_tokens").cast(pl.Float64),
    )
    _check_unique(tok, ["problem_id", "sample_idx"], f"{source} tokens")
    joined = keys.join(tok, on=["problem_id", "sample_idx"], how="left", maintain_order="left")
    missing = joined.filter(pl.col("output_tokens").is_null() | pl.col("prompt_tokens").is_null())
    if missing.height:
        row = missing.row(0, named=True)
        raise ValueError(
            f"replay: no {source} token counts for problem {row['problem_id']!r} "
            f"sample {row['sample_idx']} ({missing.height} rows missing)"
        )
    return joined


def _class_structure(g: pl.DataFrame) -> dict[str, tuple[list[int], list[int], int, int]]:
    """problem_id -> (class sizes, indices of correct classes, #unanswered, #correct).

    Correctness must be a property of the answer class (all or none of its samples
    correct) and unanswered samples cannot be correct; anything else means grading and
    answer classes disagree, which would make the vote's correctness ill-defined.
    """
    per_class = g.group_by(["problem_id", "answer_class"]).agg(
        size=pl.len(), num_correct=pl.col("correct").cast(pl.Int64).sum()
    ).sort(["problem_id", "answer_class"])
    bad = per_class.filter(
        ((pl.col("answer_class") < 0) & (pl.col("num_correct") > 0))
        | ((pl.col("num_correct") > 0) & (pl.col("num_correct") < pl.col("size")))
    )
    if bad.height:
        row = bad.row(0, named=True)
        raise ValueError(
            f"replay: problem {row['problem_id']!r} answer_class {row['answer_class']} has "
            f"{row['num_correct']} correct of {row['size']} samples; correctness must be "
            "all-or-none per answer class, and never for unanswered (-1) samples"
        )
    out: dict[str, tuple[list[int], list[int], int, int]] = {}
    for pid, cls, size, num_correct in per_class.iter_rows():
        sizes, correct, unanswered, total_correct = out.get(pid, ([], [], 0, 0))
        if cls < 0:
            unanswered += size
        else:
            if num_correct:
                correct.append(len(sizes))
            sizes.append(size)
        out[pid] = (sizes, correct, unanswered, total_correct + num_correct)
    return out


def _checked_grades(
    grades: pl.DataFrame, ns: Sequence[int] | None, what: str
) -> tuple[pl.DataFrame, list[str], int, list[int]]:
    """Conformed grades, problem order, N and the budgets: every problem has N samples."""
    g = schemas.conform(grades, schemas.GRADES, f"{what} grades")
    if g.height == 0:
        raise ValueError(f"{what}: grades frame is empty")
    _check_unique(g, ["problem_id", "sample_idx"], "grades")
    order = _problem_order(g)
    counts = g.group_by("problem_id", maintain_order=True).len()
    num_samples = int(counts.get_column("len")[0])
    bad = counts.filter(pl.col("len") != num_samples)
    if bad.height:
        pid, cnt = bad.row(0)
        raise ValueError(
            f"{what}: every problem needs the same number of samples; problem {pid!r} has "
            f"{cnt}, problem {order[0]!r} has {num_samples}"
        )
    ns = budgets(num_samples) if ns is None else sorted({int(x) for x in ns})
    if not ns or ns[0] < 1 or ns[-1] > num_samples:
        raise ValueError(f"{what}: budgets {ns} must lie in 1..N={num_samples}")
    return g, order, num_samples, ns


def replay(
    grades: pl.DataFrame,
    greedy: pl.DataFrame | None,
    tokens: pl.DataFrame,
    *,
    params: int,
    ns: list[int] | None = None,
) -> pl.DataFrame:
    """Per problem x strategy x n: exact expected accuracy, tokens and FLOPs (REPLAY)."""
    from pipeline import flops  # imported at call time: written as a separate module

    g, order, num_samples, ns = _checked_grades(grades, ns, "replay")

    # expected tokens of a random n-subset = n * per-problem mean over the cache
    keys = g.select("problem_id", "sample_idx")
    mean_tok = (
        _attach_tokens(keys, tokens, "sampled")
        .group_by("problem_id")
        .agg(pl.col("output_tokens").mean(), pl.col("prompt_tokens").mean())
    )
    mean_tok = {pid: (out_t, prm_t) for pid, out_t, prm_t in mean_tok.iter_rows()}

    structure = _class_structure(g)
    rows: list[tuple] = []
    for pid in progress(order, desc="replay", total=len(order), unit="problem"):
        sizes, correct, unanswered, total_correct = structure[pid]
        out_t, prm_t = mean_tok[pid]
        for n in ns:
            cov = pass_at_k(num_samples, total_correct, n)
            # win events of distinct classes are disjoint, so with several correct
            # classes (e.g. a non-transitive equivalence check) the probabilities add
            maj = sum(majority_accuracy(sizes, c, unanswered, n) for c in correct)
            rows.append((pid, "coverage", n, cov, n * out_t, n * prm_t))
            rows.append((pid, "majority", n, maj, n * out_t, n * prm_t))

    if greedy is not None:
        gr = schemas.conform(greedy, schemas.GRADES, "replay greedy")
        per = gr.group_by("problem_id").len().filter(pl.col("len") != 1)
        if per.height:
            pid, cnt = per.row(0)
            raise ValueError(f"replay: greedy cache has {cnt} samples for problem {pid!r}, expected 1")
        if set(_problem_order(gr)) != set(order):
            extra = sorted(set(_problem_order(gr)) ^ set(order))[:5]
            raise ValueError(f"replay: greedy and sampled caches cover different problems, e.g. {extra}")
        gtok = _attach_tokens(gr.select("problem_id", "sample_idx", "correct"), tokens, "greedy")
        for pid, _idx, ok, prm_t, out_t in gtok.iter_rows():
            rows.append((pid, "greedy", 1, float(ok), float(out_t), float(prm_t)))

    out = pl.DataFrame(
        rows,
        schema={
            "problem_id": pl.String,
            "strategy": pl.String,
            "n": pl.Int32,
            "accuracy": pl.Float64,
            "output_tokens": pl.Float64,
            "prompt_tokens": pl.Float64,
        },
        orient="row",
    )
    rank = pl.DataFrame({"problem_id": order, "_rank": range(len(order))})
    out = (
        out.join(rank, on="problem_id", how="left")
        .sort(["_rank", "strategy", "n"])
        .with_columns(
            flops_paper=flops.paper_flops(params, pl.col("output_tokens")),
            flops_full=flops.full_flops(params, pl.col("output_tokens"), pl.col("prompt_tokens")),
        )
    )
    return schemas.conform(out, schemas.REPLAY, "replay")


def summarize(replay: pl.DataFrame) -> pl.DataFrame:
    """Per (strategy, n): mean accuracy, its standard error across problems, mean cost."""
    count = pl.len()
    return (
        replay.group_by(["strategy", "n"])
        .agg(
            accuracy=pl.col("accuracy").mean(),
            # SE of the mean over problems; a single problem has no spread estimate
            accuracy_se=pl.when(count > 1)
            .then(pl.col("accuracy").std(ddof=1) / count.cast(pl.Float64).sqrt())
            .otherwise(0.0),
            output_tokens=pl.col("output_tokens").mean(),
            flops_paper=pl.col("flops_paper").mean(),
            flops_full=pl.col("flops_full").mean(),
            num_problems=count.cast(pl.Int64),
        )
        .sort(["strategy", "n"])
    )


# --------------------------------------------------------------------------- PRM strategies

AGGREGATIONS = ("min", "last", "prod", "mean")

REPLAY_PRM = {
    **schemas.REPLAY,
    "aggregation": pl.String,
    "prm": pl.String,
    "accuracy_se": pl.Float64,
}


class _BadSteps(ValueError):
    """A step-score row that cannot be aggregated; `row` is its 0-based index."""

    def __init__(self, row: int, reason: str):
        super().__init__(f"row {row} {reason}")
        self.row, self.reason = row, reason


def _as_list_series(step_scores) -> pl.Series:
    if isinstance(step_scores, pl.Series):
        return step_scores.cast(pl.List(pl.Float64))
    rows = [None if r is None else [None if v is None else float(v) for v in r] for r in step_scores]
    return pl.Series("scores", rows, dtype=pl.List(pl.Float64))


def _step_values(step_scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flat scores, row offsets, row lengths) of validated step scores, or _BadSteps.

    Every row needs at least one step and every score must be a finite number in [0, 1].
    """
    s = _as_list_series(step_scores)
    rows = s.len()
    if rows == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    row_null = s.is_null().to_numpy()
    lens = s.list.len().fill_null(0).to_numpy().astype(np.int64)
    # flatten only the non-empty rows: explode()'s placeholders for empty or null lists
    # differ between polars versions
    flat = s.filter(pl.Series(lens > 0)).explode()
    owner = np.repeat(np.arange(rows), lens)
    elem_null = flat.is_null().to_numpy()
    vals = flat.fill_null(np.nan).to_numpy().astype(np.float64, copy=False)
    with np.errstate(invalid="ignore"):
        bad = elem_null | ~np.isfinite(vals) | (vals < 0.0) | (vals > 1.0)
    bad_rows = np.flatnonzero(lens == 0)  # null or empty
    if bad.any() or bad_rows.size:
        first = int(np.argmax(bad)) if bad.any() else -1
        row = min(int(owner[first]) if first >= 0 else rows, int(bad_rows[0]) if bad_rows.size else rows)
        if row_null[row]:
            reason = "is null (no step scores)"
        elif lens[row] == 0:
            reason = "is empty (no steps)"
        elif elem_null[first]:
            reason = f"has a null score at step {first - int(np.searchsorted(owner, row))}"
        else:
            reason = f"has score {vals[first]!r}, need a finite number in [0, 1]"
        raise _BadSteps(row, reason)
    offsets = np.zeros(rows, dtype=np.int64)
    np.cumsum(lens[:-1], out=offsets[1:])
    return vals, offsets, lens


def _aggregate_values(vals: np.ndarray, offsets: np.ndarray, lens: np.ndarray, how: str) -> np.ndarray:
    if lens.size == 0:
        return np.zeros(0)
    if how == "min":
        return np.minimum.reduceat(vals, offsets)
    if how == "last":
        return vals[offsets + lens - 1].copy()
    if how == "prod":
        return np.multiply.reduceat(vals, offsets)
    if how == "mean":
        return np.add.reduceat(vals, offsets) / lens
    raise ValueError(f"aggregate_steps: unknown aggregation {how!r}; choose from {AGGREGATIONS}")


def aggregate_steps(step_scores, how: str) -> np.ndarray:
    """One score per sample from its PRM step scores: min, last, prod or mean of the steps.

    `step_scores` is a list of lists or a polars list Series, one entry per sample.
    Empty or null rows and null, NaN, infinite or out-of-[0, 1] scores raise ValueError
    naming the row index.
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"aggregate_steps: unknown aggregation {how!r}; choose from {AGGREGATIONS}")
    try:
        vals, offsets, lens = _step_values(step_scores)
    except _BadSteps as e:
        raise ValueError(f"aggregate_steps: step scores row {e.row} {e.reason}") from None
    return _aggregate_values(vals, offsets, lens, how)


def _finite_scores(scores, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{what}: scores must be 1-D, got shape {s.shape}")
    bad = ~np.isfinite(s)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{what}: score at index {i} is {s[i]!r}; scores must be finite")
    return s


def _ratio_table(num: int, ns: np.ndarray) -> np.ndarray:
    """table[a, j] = C(a, ns[j]) / C(num, ns[j]) for a = 0..num, as running products of
    factors (a - i) / (num - i) in [0, 1] (no overflow at any num)."""
    max_n = int(ns.max())
    i = np.arange(max_n, dtype=np.float64)
    a = np.arange(num + 1, dtype=np.float64)
    factors = np.clip(a[:, None] - i[None, :], 0.0, None) / (num - i)[None, :]
    return np.cumprod(factors, axis=1)[:, ns - 1]


def _best_of_n_rows(scores: np.ndarray, correct: np.ndarray, table: np.ndarray) -> np.ndarray:
    """best_of_n for every row of (R, N) scores / correctness at once: (R, len(ns)).

    Samples sorted by score; a sample in a tie group occupying sorted positions [lo, hi)
    is the pick with probability [C(hi, n) - C(lo, n)] / C(N, n) / (hi - lo): the
    subset's maximum lies in its group, then a uniform pick among the group's members in
    the subset (by symmetry each member equally likely). Only correct samples add up.
    """
    num_rows, num = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")
    v = np.take_along_axis(scores, order, axis=1)
    ok = np.take_along_axis(correct, order, axis=1)
    pos = np.broadcast_to(np.arange(num), (num_rows, num))
    start = np.ones((num_rows, num), dtype=bool)
    start[:, 1:] = v[:, 1:] != v[:, :-1]
    lo = np.maximum.accumulate(np.where(start, pos, 0), axis=1)
    end = np.ones((num_rows, num), dtype=bool)
    end[:, :-1] = start[:, 1:]
    hi = np.minimum.accumulate(np.where(end, pos + 1, num)[:, ::-1], axis=1)[:, ::-1]
    r, i = np.nonzero(ok)
    out = np.zeros((num_rows, table.shape[1]))
    if r.size:
        contrib = (table[hi[r, i]] - table[lo[r, i]]) / (hi[r, i] - lo[r, i])[:, None]
        np.add.at(out, r, contrib)
    return out


def best_of_n_curve(scores, correct, ns) -> np.ndarray:
    """Exact expected accuracy of picking the top-scored sample of a random n-subset.

    Ties in score are broken uniformly at random. With the distinct scores in increasing
    order as groups g, the subset's maximum lies in group g with probability
        [C(N_{<=g}, n) - C(N_{<g}, n)] / C(N, n),
    and is then a uniform pick among the subset's members of group g, i.e. correct with
    the group's fraction of correct samples. The ratios C(a, n) / C(N, n) are running
    products of factors (a - i) / (N - i) in [0, 1], so nothing overflows at any N.
    """
    s = _finite_scores(scores, "best_of_n")
    ok = np.asarray(correct, dtype=bool)
    if ok.shape != s.shape:
        raise ValueError(f"best_of_n: {s.size} scores but {ok.size} correctness flags")
    total = s.size
    ns_arr = np.asarray(list(ns), dtype=np.int64).reshape(-1)
    if ns_arr.size == 0:
        return np.zeros(0)
    if ns_arr.min() < 1 or ns_arr.max() > total:
        raise ValueError(f"best_of_n: budgets must lie in 1..N={total}, got {ns_arr.tolist()}")
    return _best_of_n_rows(s[None, :], ok[None, :], _ratio_table(total, ns_arr))[0]


def best_of_n_accuracy(scores, correct, n: int) -> float:
    """Exact expected accuracy of best-of-n (see `best_of_n_curve`) for one budget n."""
    num = np.asarray(scores).size
    if not 1 <= int(n) <= num:
        raise ValueError(f"best_of_n: need 1 <= n <= N={num}, got n={n}")
    return float(best_of_n_curve(scores, correct, [int(n)])[0])


@lru_cache(maxsize=256)
def _exact_rows(num: int, n: int) -> np.ndarray:
    """All C(num, n) subsets of 0..num-1 as rows (C, n), each ascending, in lexicographic
    order: prefixes of length n, the shape `_weighted_prefix_eval` takes."""
    out = np.fromiter(
        itertools.chain.from_iterable(itertools.combinations(range(num), n)), dtype=np.intp
    ).reshape(-1, n)
    out.flags.writeable = False
    return out


def _weighted_prefix_eval(
    rows: np.ndarray, ns: Sequence[int], cls: np.ndarray, good: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted-majority outcome of every prefix rows[r, :n], per weight vector and n.

    rows: (R, >= max(ns)) distinct sample indices per row (random permutations, or the
    subsets themselves); cls: (N,) class per sample in 0..K-1, -1 for no answer; good:
    (K,) bool, class correct; weights: (A, N). Returns (mean, std with ddof=1) over the
    R rows, each (A, len(ns)); ns ascending.

    A class's total is the left-to-right float sum of its members' weights in row order,
    so exact ties are reproducible. No loop over rows: a stable sort of each row's
    prefix by class, cut into fixed column blocks (block c as wide as the most votes
    class c gets in any row), gives each class's votes in order; running sums down each
    block (one vectorised add per column, across rows and weight vectors) give its total
    after every vote, and the vote counts of each prefix pick the entries.
    """
    ns = [int(n) for n in ns]
    num_rows = rows.shape[0]
    num_w = weights.shape[0]
    num_j = len(ns)
    num_cls = int(good.size)
    zero = np.zeros((num_w, num_j))
    if num_rows == 0 or num_cls == 0 or not good.any():
        return zero, zero.copy()
    length = ns[-1]
    width = num_cls + 1  # last label: no answer
    lab_dtype = np.uint8 if width <= 256 else np.uint16 if width <= 65536 else np.int64
    labels = np.where(cls < 0, num_cls, cls).astype(lab_dtype)
    num = rows.shape[1]
    rows = np.ascontiguousarray(rows)
    lab = labels[rows[:, :length]]  # (R, L)

    # votes per class in each prefix, (J, R, width), accumulated segment by segment
    offs = (np.arange(num_rows, dtype=np.intp) * width)[:, None]
    counts = np.empty((num_j, num_rows, width), dtype=np.intp)
    prev, lo = np.zeros((num_rows, width), dtype=np.intp), 0
    for j, n in enumerate(ns):
        if n > lo:
            seg = np.bincount((lab[:, lo:n] + offs).ravel(), minlength=num_rows * width)
            prev = prev + seg.reshape(num_rows, width)
            lo = n
        counts[j] = prev
    full = counts[-1]  # (R, width): votes within the longest prefix

    # fixed blocks: class c gets columns first[c] .. first[c] + span[c] - 1
    span = full[:, :num_cls].max(axis=0)
    first = np.concatenate(([0], np.cumsum(span)[:-1]))
    width_m = int(span.sum())
    if width_m == 0:
        return zero, zero.copy()
    col_cls = np.repeat(np.arange(num_cls), span)
    col_k = np.arange(width_m) - first[col_cls]
    order = np.argsort(lab, axis=1, kind="stable")  # radix sort for small ints
    order += (np.arange(num_rows, dtype=order.dtype) * num)[:, None]
    sorted_ids = np.take(rows, order)  # (R, L): each row's prefix grouped by class
    row_start = np.zeros((width, num_rows), dtype=np.intp)  # transposed: rows by class
    np.cumsum(full[:, :-1].T, axis=0, out=row_start[1:])
    row_start += np.arange(num_rows, dtype=np.intp) * length
    pos = row_start[col_cls]  # (M, R) flat position in sorted_ids
    pos += col_k[:, None]
    # past a row's own votes of the class: clipped into the row, never read
    np.minimum(pos, (np.arange(num_rows, dtype=np.intp) * length + length - 1)[None, :], out=pos)
    ids = np.take(sorted_ids, pos)  # (M, R)
    cum = np.take(weights, ids, axis=1)  # (A, M, R)
    for i in np.flatnonzero(col_k > 0).tolist():
        np.add(cum[:, i - 1], cum[:, i], out=cum[:, i])

    cnt = counts[:, :, :num_cls].transpose(2, 0, 1)  # (K, J, R)
    flat = (first[:, None, None] + np.maximum(cnt - 1, 0)) * num_rows + np.arange(num_rows)
    np.minimum(flat, width_m * num_rows - 1, out=flat)
    totals = np.take(cum.reshape(num_w, width_m * num_rows), flat, axis=1)  # (A, K, J, R)
    totals[:, cnt == 0] = -np.inf
    best = totals.max(axis=1)
    tied = totals == best[:, None]
    num_tied = tied.sum(axis=1)
    num_good = tied[:, good].sum(axis=1)
    acc = num_good / num_tied  # no votes: every class "tied" at -inf, set to 0 below
    acc[best == -np.inf] = 0.0  # (A, J, R)
    mean = acc.mean(axis=2)
    std = acc.std(axis=2, ddof=1) if num_rows > 1 else np.zeros_like(mean)
    return mean, std


def weighted_majority_accuracy(
    scores,
    answer_class,
    correct_class_mask,
    n: int,
    *,
    rng: np.random.Generator | int | None = None,
    num_draws: int = 1000,
    exact_limit: int = 2000,
) -> tuple[float, float]:
    """Expected accuracy of a score-weighted vote over a random n-subset: (acc, se).

    Every subset member with answer_class >= 0 votes for its class with weight = its
    score (a zero-weight vote still counts, so that class beats "no votes"); the largest
    total wins, exact float ties are broken uniformly; a subset without votes is wrong.
    correct_class_mask[c] says whether class c is correct. Exact enumeration (se = 0)
    when C(N, n) <= exact_limit, otherwise Monte Carlo over `num_draws` random subsets
    (prefixes of random permutations; `rng` a Generator or seed, None for fresh entropy)
    with se = std / sqrt(num_draws).
    """
    s = _finite_scores(scores, "weighted_majority")
    cls = np.asarray(answer_class, dtype=np.int64).reshape(-1)
    good = np.asarray(correct_class_mask, dtype=bool).reshape(-1)
    num = s.size
    if cls.size != num:
        raise ValueError(f"weighted_majority: {num} scores but {cls.size} answer classes")
    if num and (cls.min() < -1 or cls.max() >= good.size):
        raise ValueError(
            f"weighted_majority: answer classes must lie in -1..{good.size - 1} "
            f"(correct_class_mask has {good.size} classes), got {sorted(set(cls.tolist()))}"
        )
    if not 1 <= int(n) <= num:
        raise ValueError(f"weighted_majority: need 1 <= n <= N={num}, got n={n}")
    if int(num_draws) < 2:
        raise ValueError(f"weighted_majority: need num_draws >= 2, got {num_draws}")
    n = int(n)
    if math.comb(num, n) <= exact_limit:
        mean, _ = _weighted_prefix_eval(_exact_rows(num, n), [n], cls, good, s[None, :])
        return float(mean[0, 0]), 0.0
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    perms = _permutations(gen, num, int(num_draws))
    mean, std = _weighted_prefix_eval(perms, [n], cls, good, s[None, :])
    return float(mean[0, 0]), float(std[0, 0] / math.sqrt(num_draws))


def _permutations(rng: np.random.Generator, num: int, num_draws: int) -> np.ndarray:
    """(num_draws, num) C-ordered array, each row a uniform random permutation of 0..num-1."""
    out = np.tile(np.arange(num, dtype=np.intp), (num_draws, 1))
    return rng.permuted(out, axis=1, out=out)


def _problem_rng(seed: int, problem_id: str, num: int, num_draws: int) -> np.random.Generator:
    """Generator depending only on (seed, problem_id, N, num_draws): a stable hash, not
    python's salted hash(), so draws do not depend on row order or on the process."""
    digest = hashlib.blake2b(problem_id.encode("utf-8"), digest_size=16).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words, int(num), int(num_draws)]))


def _anti_check(left: pl.DataFrame, right: pl.DataFrame, message: str) -> None:
    """Raise `message` (formatted with problem and sample) for a left key not in right."""
    miss = left.join(right, on=["problem_id", "sample_idx"], how="anti")
    if miss.height:
        pid, idx = miss.row(0)
        raise ValueError(message.format(pid=pid, idx=idx, count=miss.height))


def replay_prm(
    grades: pl.DataFrame,
    step_scores: pl.DataFrame,
    tokens: pl.DataFrame,
    *,
    params: int,
    prm: str,
    prm_params: int,
    prm_tokens: pl.DataFrame | None,
    ns: list[int] | None = None,
    aggregations: Sequence[str] = AGGREGATIONS,
    num_draws: int = 1000,
    seed: int = 0,
    exact_limit: int = 2000,
) -> pl.DataFrame:
    """Per problem x PRM strategy x aggregation x n: accuracy, tokens, FLOPs (REPLAY_PRM).

    Strategies, on per-sample scores aggregated from the PRM's step scores:
        best_of_n          the top-scored sample of a random n-subset (exact).
        weighted_majority  score-weighted vote of the subset (`weighted_majority_accuracy`):
                           exact when C(N, n) <= exact_limit, else Monte Carlo with
                           `num_draws` random permutations per problem whose n-prefixes
                           serve every n and aggregation (common random numbers); the
                           draws depend only on (seed, problem_id, N, num_draws).
    Tokens as in `replay`; flops_full also charges the PRM 2 * prm_params per token it
    reads (n times the problem's mean prm_tokens; none when prm_tokens is None).
    """
    from pipeline import flops  # imported at call time, as in replay()

    aggregations = tuple(aggregations)
    unknown = [a for a in aggregations if a not in AGGREGATIONS]
    if unknown:
        raise ValueError(f"replay_prm: unknown aggregation(s) {unknown}; choose from {AGGREGATIONS}")
    if not aggregations or len(set(aggregations)) != len(aggregations):
        raise ValueError(f"replay_prm: need distinct aggregations, got {list(aggregations)}")
    if int(num_draws) < 2:
        raise ValueError(f"replay_prm: need num_draws >= 2, got {num_draws}")
    num_draws = int(num_draws)

    g, order, num_samples, ns = _checked_grades(grades, ns, "replay_prm")
    st = schemas.conform(
        step_scores,
        {"problem_id": pl.String, "sample_idx": pl.Int32, "scores": pl.List(pl.Float64)},
        "replay_prm step_scores",
    )
    _check_unique(st, ["problem_id", "sample_idx"], "step_scores")

    keys = g.select("problem_id", "sample_idx")
    _anti_check(keys, st, "replay_prm: no step scores for problem {pid!r} sample {idx} ({count} missing)")
    _anti_check(
        st.select("problem_id", "sample_idx"), keys,
        "replay_prm: step scores for problem {pid!r} sample {idx}, which is not graded ({count} such rows)",
    )
    if prm_tokens is not None:
        pt = schemas.conform(
            prm_tokens,
            {"problem_id": pl.String, "sample_idx": pl.Int32, "prm_tokens": pl.Float64},
            "replay_prm prm_tokens",
        )
        _check_unique(pt, ["problem_id", "sample_idx"], "prm_tokens")
        _anti_check(keys, pt, "replay_prm: no prm_tokens for problem {pid!r} sample {idx} ({count} missing)")
        _anti_check(
            pt.select("problem_id", "sample_idx"), keys,
            "replay_prm: prm_tokens for problem {pid!r} sample {idx}, which is not graded ({count} such rows)",
        )
        nulls = pt.filter(pl.col("prm_tokens").is_null())
        if nulls.height:
            pid, idx, _ = nulls.row(0)
            raise ValueError(f"replay_prm: null prm_tokens for problem {pid!r} sample {idx}")
        prm_mean = dict(pt.group_by("problem_id").agg(pl.col("prm_tokens").mean()).iter_rows())
    else:
        prm_mean = {}

    mean_tok = (
        _attach_tokens(keys, tokens, "sampled")
        .group_by("problem_id")
        .agg(pl.col("output_tokens").mean(), pl.col("prompt_tokens").mean())
    )
    mean_tok = {pid: (out_t, prm_t) for pid, out_t, prm_t in mean_tok.iter_rows()}
    _class_structure(g)  # correctness all-or-none per answer class, never when unanswered

    # one row per (problem, sample), problems in order of first appearance, samples by index
    rank = pl.DataFrame({"problem_id": order, "_rank": np.arange(len(order), dtype=np.int64)})
    data = (
        g.join(st, on=["problem_id", "sample_idx"], how="left")
        .join(rank, on="problem_id", how="left")
        .sort(["_rank", "sample_idx"])
    )
    try:
        vals, offsets, lens = _step_values(data.get_column("scores"))
    except _BadSteps as e:
        pid, idx = data.row(e.row, named=True)["problem_id"], data.row(e.row, named=True)["sample_idx"]
        raise ValueError(f"replay_prm: step scores of problem {pid!r} sample {idx}: {e.reason}") from None
    num_p, num_a, num_j = len(order), len(aggregations), len(ns)
    weights = np.stack([_aggregate_values(vals, offsets, lens, a) for a in aggregations])
    weights = weights.reshape(num_a, num_p, num_samples)
    cls_all = data.get_column("answer_class").to_numpy().reshape(num_p, num_samples)
    ok_all = data.get_column("correct").to_numpy().reshape(num_p, num_samples)

    exact_ns = [n for n in ns if math.comb(num_samples, n) <= exact_limit]
    mc_ns = [n for n in ns if math.comb(num_samples, n) > exact_limit]
    col_exact = [ns.index(n) for n in exact_ns]
    col_mc = [ns.index(n) for n in mc_ns]
    # best-of-n for every (aggregation, problem) at once, in chunks of rows
    table = _ratio_table(num_samples, np.asarray(ns, dtype=np.int64))
    flat_w = weights.reshape(num_a * num_p, num_samples)
    flat_ok = np.broadcast_to(ok_all, (num_a, num_p, num_samples)).reshape(num_a * num_p, num_samples)
    chunk = max(1, (1 << 22) // (num_samples * max(num_j, 1)))
    bon = np.concatenate(
        [_best_of_n_rows(flat_w[i : i + chunk], flat_ok[i : i + chunk], table) for i in range(0, num_a * num_p, chunk)]
    ).reshape(num_a, num_p, num_j).transpose(1, 0, 2)
    wm = np.zeros((num_p, num_a, num_j))
    wm_se = np.zeros((num_p, num_a, num_j))
    for p, pid in enumerate(progress(order, desc="weighted voting", total=len(order), unit="problem")):
        w = weights[:, p, :]
        ok = ok_all[p]
        raw = cls_all[p]
        uniq, dense = np.unique(np.where(raw < 0, -1, raw), return_inverse=True)
        if uniq.size and uniq[0] < 0:
            cls, uniq = dense - 1, uniq[1:]  # -1 stays "no answer"
        else:
            cls = dense
        good = np.zeros(uniq.size, dtype=bool)
        good[cls[ok & (cls >= 0)]] = True
        for n, j in zip(exact_ns, col_exact):
            mean, _ = _weighted_prefix_eval(_exact_rows(num_samples, n), [n], cls, good, w)
            wm[p, :, j] = mean[:, 0]
        if mc_ns:
            rng = _problem_rng(seed, pid, num_samples, num_draws)
            perms = _permutations(rng, num_samples, num_draws)
            mean, std = _weighted_prefix_eval(perms, mc_ns, cls, good, w)
            wm[p, :, col_mc] = mean.T
            wm_se[p, :, col_mc] = std.T / math.sqrt(num_draws)

    # rows: problem, strategy, aggregation, n (nested in that order)
    per_p = 2 * num_a * num_j
    n_col = np.tile(np.asarray(ns, dtype=np.float64), num_p * 2 * num_a)
    out_mean = np.array([mean_tok[pid][0] for pid in order], dtype=np.float64)
    prompt_mean = np.array([mean_tok[pid][1] for pid in order], dtype=np.float64)
    prm_t = np.array([prm_mean.get(pid, 0.0) for pid in order], dtype=np.float64)
    out = pl.DataFrame(
        {
            "problem_id": np.repeat(np.asarray(order, dtype=object), per_p),
            "strategy": np.tile(np.repeat(["best_of_n", "weighted_majority"], num_a * num_j), num_p),
            "n": n_col.astype(np.int32),
            "accuracy": np.stack([bon, wm], axis=1).ravel(),
            "output_tokens": n_col * np.repeat(out_mean, per_p),
            "prompt_tokens": n_col * np.repeat(prompt_mean, per_p),
            "_prm_tokens": n_col * np.repeat(prm_t, per_p),
            "aggregation": np.tile(np.repeat(np.asarray(aggregations, dtype=object), num_j), num_p * 2),
            "accuracy_se": np.stack([np.zeros_like(wm_se), wm_se], axis=1).ravel(),
        },
        schema_overrides={"problem_id": pl.String, "aggregation": pl.String, "strategy": pl.String},
    )
    out = out.with_columns(
        flops_paper=flops.paper_flops(params, pl.col("output_tokens")),
        flops_full=flops.full_flops(params, pl.col("output_tokens"), pl.col("prompt_tokens"))
        + 2 * prm_params * pl.col("_prm_tokens"),
        prm=pl.lit(prm, dtype=pl.String),
    )
    return schemas.conform(out, REPLAY_PRM, "replay_prm")


def _tokens(shards: list[str], source: str) -> pl.DataFrame:
    cols = ["problem_id", "sample_idx", "prompt_tokens", "output_tokens"]
    return pl.concat([pl.read_parquet(f, columns=cols) for f in shards]).with_columns(
        source=pl.lit(source)
    )


def main(argv: list[str] | None = None) -> None:
    """python -m pipeline.replay --grades G --shards S... --info I --out F
         [--greedy-grades G2 --greedy-shards S2...]                  (voting, coverage, greedy)
         [--prm NAME --scores SC... --num-draws D --seed K]          (best-of-N, weighted voting)"""
    import argparse
    import json

    from pipeline import io

    ap = argparse.ArgumentParser(description="replay strategies over one sample cache")
    ap.add_argument("--grades", required=True)
    ap.add_argument("--shards", nargs="+", required=True)
    ap.add_argument("--greedy-grades")
    ap.add_argument("--greedy-shards", nargs="*", default=[])
    ap.add_argument("--prm", help="replay the PRM strategies with this PRM's --scores")
    ap.add_argument("--scores", nargs="*", default=[])
    ap.add_argument("--num-draws", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--info", required=True, help="model info JSON (parameter count)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    params = json.loads(open(a.info).read())["params_total"]
    grades = pl.read_parquet(a.grades)
    tokens = [_tokens(a.shards, "sampled")]
    if a.prm:
        scores = pl.concat([pl.read_parquet(f) for f in a.scores])
        # An empty generation has no steps to score; it has no answer either, so it
        # ranks last (score 0) and can never be picked over an answered sample's class.
        step_scores = scores.select(
            "problem_id", "sample_idx",
            scores=pl.when(pl.col("scores").list.len() == 0)
            .then(pl.lit([0.0], dtype=pl.List(pl.Float64)))
            .otherwise(pl.col("scores")),
        )
        out = replay_prm(
            grades, step_scores, tokens[0], params=params, prm=a.prm,
            prm_params=int(scores["prm_params"][0]),
            prm_tokens=scores.select("problem_id", "sample_idx", "prm_tokens"),
            num_draws=a.num_draws, seed=a.seed,
        )
        io.write_parquet(out, a.out)
        with pl.Config(tbl_rows=100, tbl_cols=10):
            print(out.group_by("strategy", "aggregation", "n").agg(pl.col("accuracy").mean()).sort("strategy", "aggregation", "n"))
        return
    greedy = None
    if a.greedy_grades:
        greedy = pl.read_parquet(a.greedy_grades)
        tokens.append(_tokens(a.greedy_shards, "greedy"))
    out = replay(grades, greedy, pl.concat(tokens), params=params)
    io.write_parquet(out, a.out)
    with pl.Config(tbl_rows=100, tbl_cols=10):
        print(summarize(out))


if __name__ == "__main__":
    main()
