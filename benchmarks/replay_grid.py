"""Full replay grid on synthetic data, and the fast replay vs a brute-force baseline.

    PYTHONPATH=. .venv/bin/python benchmarks/replay_grid.py [--problems 500] [--samples 256]
        [--num-draws 1000] [--small-problems 20] [--small-samples 16] [--seed 0]

1. Grid: `replay` (coverage, majority) + `replay_prm` (best_of_n, weighted_majority x
   min/last/prod/mean) for n = 1, 2, 4, ..., N on P problems x N samples (goal: <= 10 s).
2. Baseline, on a size it can finish: every C(N, n) subset enumerated in python for the
   exact strategies (coverage, majority, best_of_n x 4), plain repeated random sampling
   (python loop, same number of draws) for weighted majority. The exact strategies must
   agree with the fast code to 1e-9; weighted majority is compared in units of the two
   estimates' combined standard error (both are Monte Carlo where C(N, n) > 2000).

Synthetic data: 2-5 answer classes per problem (Dirichlet proportions) plus unanswered
samples, at most one correct class, 1-8 PRM steps per sample with scores in [0, 1] on a
1/256 grid (as from a bf16 PRM head, so ties occur), higher on average for correct samples.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import numpy as np
import polars as pl

from pipeline.core import schemas
from pipeline.strategies.selection import AGGREGATIONS, aggregate_steps, replay_prm
from pipeline.strategies.shared import budgets
from pipeline.strategies.voting import _majority_win_prob, replay

PARAMS, PRM_PARAMS = 7_000_000_000, 7_000_000_000


def synthetic(num_problems: int, num_samples: int, seed: int):
    """(grades, step_scores, tokens, prm_tokens) frames in the pipeline's schemas."""
    rng = np.random.default_rng(seed)
    total = num_problems * num_samples
    pids = np.repeat([f"q{p:05d}" for p in range(num_problems)], num_samples)
    idx = np.tile(np.arange(num_samples, dtype=np.int32), num_problems)
    classes = np.empty(total, dtype=np.int32)
    correct = np.zeros(total, dtype=bool)
    for p in range(num_problems):
        k = int(rng.integers(2, 6))
        probs = rng.dirichlet(np.ones(k + 1))  # last slot: unanswered
        c = rng.choice(k + 1, size=num_samples, p=probs)
        c = np.where(c == k, -1, c)
        good = int(rng.integers(-1, k))  # -1: no class correct
        sl = slice(p * num_samples, (p + 1) * num_samples)
        classes[sl] = c
        correct[sl] = (c == good) & (c >= 0)
    grades = pl.DataFrame(
        {
            "problem_id": pids,
            "sample_idx": idx,
            "answer": pl.Series(np.where(classes >= 0, classes.astype(str), None), dtype=pl.String),
            "answer_class": classes,
            "correct": correct,
        }
    )
    grades = schemas.conform(grades, schemas.GRADES, "synthetic grades")

    lens = rng.integers(1, 9, size=total)
    owner = np.repeat(np.arange(total), lens)
    a = np.where(correct[owner], 4.0, 2.0)
    raw = rng.beta(a, 6.0 - a)
    vals = np.round(raw * 256) / 256
    steps = (
        pl.DataFrame({"_row": owner, "scores": vals})
        .group_by("_row", maintain_order=True)
        .agg("scores")
        .select(
            pl.Series("problem_id", pids),
            pl.Series("sample_idx", idx),
            pl.col("scores"),
        )
    )
    tokens = pl.DataFrame(
        {
            "problem_id": pids,
            "sample_idx": idx,
            "source": "sampled",
            "prompt_tokens": np.repeat(rng.integers(50, 300, size=num_problems), num_samples).astype(np.int32),
            "output_tokens": rng.integers(20, 800, size=total).astype(np.int32),
        }
    )
    prm_tokens = tokens.select(
        "problem_id", "sample_idx", prm_tokens=pl.col("prompt_tokens") + pl.col("output_tokens")
    )
    return grades, steps, tokens, prm_tokens


def fast(frames, ns, num_draws: int, seed: int):
    grades, steps, tokens, prm_tokens = frames
    _majority_win_prob.cache_clear()  # every run starts cold, as a fresh process would
    t0 = time.perf_counter()
    base = replay(grades, None, tokens, params=PARAMS, ns=ns)
    t1 = time.perf_counter()
    prm = replay_prm(
        grades, steps, tokens, params=PARAMS, prm="synthetic", prm_params=PRM_PARAMS,
        prm_tokens=prm_tokens, ns=ns, num_draws=num_draws, seed=seed,
    )
    t2 = time.perf_counter()
    return base, prm, t1 - t0, t2 - t1


# ------------------------------------------------------------------ baseline


def _weighted_vote(w, cls, good, subset) -> float:
    votes: dict[int, float] = {}
    for i in subset:
        if cls[i] >= 0:
            votes[cls[i]] = votes.get(cls[i], 0.0) + w[i]
    if not votes:
        return 0.0
    top = max(votes.values())
    tied = [c for c, v in votes.items() if v == top]
    return sum(good[c] for c in tied) / len(tied)


def baseline(frames, ns, num_draws: int, seed: int):
    """Brute force: (dict (pid, strategy, aggregation, n) -> (accuracy, se), seconds spent
    on the weighted-majority sampling)."""
    grades, steps, _tokens, _ = frames
    rng = np.random.default_rng(seed)
    out: dict[tuple, tuple[float, float]] = {}
    t_sampling = 0.0
    by_pid = grades.join(steps, on=["problem_id", "sample_idx"]).sort(["problem_id", "sample_idx"])
    for (pid,), g in by_pid.group_by(["problem_id"], maintain_order=True):
        cls = g["answer_class"].to_list()
        ok = g["correct"].to_list()
        good = {c: o for c, o in zip(cls, ok) if c >= 0}
        w = {a: aggregate_steps(g["scores"], a).tolist() for a in AGGREGATIONS}
        num = len(cls)
        for n in ns:
            sums = dict.fromkeys(["coverage", "majority", *AGGREGATIONS], 0.0)
            count = 0
            for subset in itertools.combinations(range(num), n):
                count += 1
                sums["coverage"] += any(ok[i] for i in subset)
                votes: dict[int, int] = {}
                for i in subset:
                    if cls[i] >= 0:
                        votes[cls[i]] = votes.get(cls[i], 0) + 1
                if votes:
                    top = max(votes.values())
                    tied = [c for c, v in votes.items() if v == top]
                    sums["majority"] += sum(good[c] for c in tied) / len(tied)
                for a in AGGREGATIONS:
                    wa = w[a]
                    best = max(wa[i] for i in subset)
                    tied_s = [i for i in subset if wa[i] == best]
                    sums[a] += sum(ok[i] for i in tied_s) / len(tied_s)
            out[(pid, "coverage", None, n)] = (sums["coverage"] / count, 0.0)
            out[(pid, "majority", None, n)] = (sums["majority"] / count, 0.0)
            for a in AGGREGATIONS:
                out[(pid, "best_of_n", a, n)] = (sums[a] / count, 0.0)
            # weighted majority: plain repeated random sampling
            t0 = time.perf_counter()
            for a in AGGREGATIONS:
                draws = [
                    _weighted_vote(w[a], cls, good, rng.choice(num, size=n, replace=False))
                    for _ in range(num_draws)
                ]
                out[(pid, "weighted_majority", a, n)] = (
                    float(np.mean(draws)),
                    float(np.std(draws, ddof=1) / math.sqrt(num_draws)),
                )
            t_sampling += time.perf_counter() - t0
    return out, t_sampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--num-draws", type=int, default=1000)
    ap.add_argument("--small-problems", type=int, default=20)
    ap.add_argument("--small-samples", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="grid runs (min and median reported)")
    ap.add_argument("--skip-baseline", action="store_true")
    a = ap.parse_args()

    # ---- 1. full grid
    frames = synthetic(a.problems, a.samples, a.seed)
    ns = budgets(a.samples)
    runs = [fast(frames, ns, a.num_draws, a.seed) for _ in range(max(1, a.repeat))]
    base, prm, t_base, t_prm = min(runs, key=lambda r: r[2] + r[3])
    grid = t_base + t_prm
    all_grid = [round(r[2] + r[3], 2) for r in runs]
    rows = base.height + prm.height
    wm = prm.filter(pl.col("strategy") == "weighted_majority")
    se = (
        wm.group_by("n")
        .agg(
            mc=(pl.col("accuracy_se") > 0).any(),
            se_problem=pl.col("accuracy_se").mean(),
            se_mean=(pl.col("accuracy_se") ** 2).sum().sqrt() / pl.len(),  # SE of the mean over problems
        )
        .sort("n")
    )
    summary = (
        pl.concat([base.with_columns(aggregation=pl.lit("-")), prm.select(base.columns + ["aggregation"])])
        .group_by(["strategy", "aggregation", "n"])
        .agg(pl.col("accuracy").mean())
        .sort(["strategy", "aggregation", "n"])
        .pivot(on="n", index=["strategy", "aggregation"], values="accuracy")
    )
    with pl.Config(tbl_rows=30, tbl_cols=20, float_precision=3):
        print(f"mean accuracy over {a.problems} synthetic problems, by n:")
        print(summary)
        print(f"weighted-majority Monte Carlo SE (num_draws={a.num_draws}): per problem (mean) and of the mean over problems")
        print(se)

    # ---- 2. baseline vs fast on a small size
    if not a.skip_baseline:
        small = synthetic(a.small_problems, a.small_samples, a.seed + 1)
        small_ns = budgets(a.small_samples)
        t0 = time.perf_counter()
        ref, t_ref_wm = baseline(small, small_ns, a.num_draws, a.seed)
        t_ref = time.perf_counter() - t0
        fb, fp, tb, tp = fast(small, small_ns, a.num_draws, a.seed)
        t_fast = tb + tp
        got = {}
        for r in fb.iter_rows(named=True):
            got[(r["problem_id"], r["strategy"], None, r["n"])] = (r["accuracy"], 0.0)
        for r in fp.iter_rows(named=True):
            got[(r["problem_id"], r["strategy"], r["aggregation"], r["n"])] = (r["accuracy"], r["accuracy_se"])
        assert got.keys() == ref.keys(), "baseline and fast cover different rows"
        exact_diff = max(abs(got[k][0] - ref[k][0]) for k in ref if k[1] != "weighted_majority")
        z = [
            (got[k][0] - ref[k][0]) / math.hypot(got[k][1], ref[k][1])
            for k in ref
            if k[1] == "weighted_majority" and math.hypot(got[k][1], ref[k][1]) > 0
        ]
        wm_diff = max(abs(got[k][0] - ref[k][0]) for k in ref if k[1] == "weighted_majority")

    print()
    print("=" * 72)
    print(f"grid: {a.problems} problems x {a.samples} samples, n = {ns}")
    print(f"      4 strategies (coverage, majority, best_of_n, weighted_majority), {len(AGGREGATIONS)} aggregations,")
    print(f"      {rows} rows, num_draws = {a.num_draws}")
    print(f"  replay (coverage, majority)                 {t_base:7.2f} s")
    print(f"  replay_prm (best_of_n, weighted_majority)   {t_prm:7.2f} s")
    print(f"  grid time                                   {grid:7.2f} s   (goal <= 10 s)")
    if len(runs) > 1:
        print(f"  all runs {all_grid} s, median {float(np.median(all_grid)):.2f} s (min shown above)")
    mc = se.filter(pl.col("mc"))
    if mc.height:
        print(
            f"  weighted-majority MC SE: per problem {mc['se_problem'].min():.4f}..{mc['se_problem'].max():.4f}, "
            f"of the {a.problems}-problem mean <= {mc['se_mean'].max():.5f}"
        )
    if not a.skip_baseline:
        print(f"baseline: {a.small_problems} problems x {a.small_samples} samples, n = {small_ns}")
        print(
            f"  brute force / python sampling   {t_ref:8.3f} s   (enumeration "
            f"{t_ref - t_ref_wm:.2f} s + weighted-majority sampling {t_ref_wm:.2f} s)"
        )
        print(f"  fast (replay + replay_prm)      {t_fast:8.3f} s")
        print(f"  ratio baseline / fast           {t_ref / t_fast:8.1f} x")
        print(f"  exact strategies max |diff|     {exact_diff:.2e}   (must be <= 1e-9)")
        print(
            f"  weighted majority: max |diff| {wm_diff:.4f}, max |z| {max(map(abs, z), default=0.0):.2f} "
            f"over {len(z)} Monte Carlo rows (z = diff / combined SE)"
        )
        if exact_diff > 1e-9:
            raise SystemExit("FAIL: exact strategies disagree with the brute-force baseline")


if __name__ == "__main__":
    main()
