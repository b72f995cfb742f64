"""PRM strategies replayed over the cached samples, as exact expectations (or seeded
Monte Carlo with its standard error), beside pipeline.strategies.voting's voting strategies.

Each sample's step scores (a PRM's, from the score stage) are aggregated into one score
per sample by `aggregate_steps` (min, last, prod or mean of the steps), then:

    best_of_n          the top-scored sample of a random n-subset of the N cached
                       samples: exact, by order statistics over the score ranking (ties
                       broken uniformly at random).
    weighted_majority  the answer class with the largest summed score in a random
                       n-subset: exact enumeration when C(N, n) <= exact_limit, else seeded
                       Monte Carlo over random permutations with its standard error.

`replay_prm` gives one REPLAY_PRM row per problem x strategy x aggregation x n, with
tokens and FLOPs as in `pipeline.strategies.voting.replay` (plus the PRM's reading in flops_full).
`python -m pipeline.replay --prm ...` (pipeline/replay.py) is the stage that runs it.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import polars as pl

from pipeline.core import schemas
from pipeline.core.progress import progress
from pipeline.strategies.shared import (
    attach_tokens,
    check_unique,
    checked_grades,
    class_structure,
)

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
    from pipeline.core import flops  # imported at call time, as in replay()

    aggregations = tuple(aggregations)
    unknown = [a for a in aggregations if a not in AGGREGATIONS]
    if unknown:
        raise ValueError(f"replay_prm: unknown aggregation(s) {unknown}; choose from {AGGREGATIONS}")
    if not aggregations or len(set(aggregations)) != len(aggregations):
        raise ValueError(f"replay_prm: need distinct aggregations, got {list(aggregations)}")
    if int(num_draws) < 2:
        raise ValueError(f"replay_prm: need num_draws >= 2, got {num_draws}")
    num_draws = int(num_draws)

    g, order, num_samples, ns = checked_grades(grades, ns, "replay_prm")
    st = schemas.conform(
        step_scores,
        {"problem_id": pl.String, "sample_idx": pl.Int32, "scores": pl.List(pl.Float64)},
        "replay_prm step_scores",
    )
    check_unique(st, ["problem_id", "sample_idx"], "step_scores")

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
        check_unique(pt, ["problem_id", "sample_idx"], "prm_tokens")
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
        attach_tokens(keys, tokens, "sampled")
        .group_by("problem_id")
        .agg(pl.col("output_tokens").mean(), pl.col("prompt_tokens").mean())
    )
    mean_tok = {pid: (out_t, prm_t) for pid, out_t, prm_t in mean_tok.iter_rows()}
    class_structure(g)  # correctness all-or-none per answer class, never when unanswered

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
