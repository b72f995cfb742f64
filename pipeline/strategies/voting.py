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

PRM strategies (best-of-N, weighted majority voting) live in
`pipeline.strategies.selection`; the stage that runs both is `pipeline.replay`.

Token counts are expectations too: a random n-subset's expected total is n times the
problem's mean over the cache. FLOPs conventions live in `pipeline.core.flops`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl
from numpy.lib.stride_tricks import sliding_window_view

from pipeline.core import schemas
from pipeline.core.progress import progress
from pipeline.strategies.shared import (
    attach_tokens,
    checked_grades,
    class_structure,
    problem_order,
)

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


# --------------------------------------------------------------------------- replay


def replay(
    grades: pl.DataFrame,
    greedy: pl.DataFrame | None,
    tokens: pl.DataFrame,
    *,
    params: int,
    ns: list[int] | None = None,
) -> pl.DataFrame:
    """Per problem x strategy x n: exact expected accuracy, tokens and FLOPs (REPLAY)."""
    from pipeline.core import (
        flops,  # imported at call time: written as a separate module
    )

    g, order, num_samples, ns = checked_grades(grades, ns, "replay")

    # expected tokens of a random n-subset = n * per-problem mean over the cache
    keys = g.select("problem_id", "sample_idx")
    mean_tok = (
        attach_tokens(keys, tokens, "sampled")
        .group_by("problem_id")
        .agg(pl.col("output_tokens").mean(), pl.col("prompt_tokens").mean())
    )
    mean_tok = {pid: (out_t, prm_t) for pid, out_t, prm_t in mean_tok.iter_rows()}

    structure = class_structure(g)
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
        if set(problem_order(gr)) != set(order):
            extra = sorted(set(problem_order(gr)) ^ set(order))[:5]
            raise ValueError(f"replay: greedy and sampled caches cover different problems, e.g. {extra}")
        gtok = attach_tokens(gr.select("problem_id", "sample_idx", "correct"), tokens, "greedy")
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

