"""How well a PRM's step scores tell good from bad: AUCs on held-out and evaluation samples.

For a set of scored samples (one score per step) and their grades:
    auc_last_step       the last step's score vs the sample's final correctness (what
                        best-of-N with the `last` aggregation ranks by), pooled over all
                        samples of all problems
    auc_last_step_se    its standard error by a bootstrap over problems (samples of one
                        problem are not independent), BOOTSTRAP draws, seeded
    auc_within_problem  the mean over problems with both correct and wrong samples of
                        the per-problem last-step AUC (what picking among one problem's
                        N samples needs; pooled AUC also rewards telling easy problems
                        from hard ones); problems_within counts them
    auc_step            each step's score vs its step label (on arith problems the
                        arith-check labels of pipeline.tasks.arith_check; NULL elsewhere)
    auc_mean_logprob    the baseline: the policy's mean token log-probability of the
                        sample (cumulative_logprob / output_tokens) vs correctness, on the
                        same samples
Samples without steps (empty generations) have no score and are left out; they are
always wrong. An AUC is NULL when one of its two classes is empty.

`prm_quality` builds the aggregate's table of that name (one row per dataset x model x
PRM over the sampled cache's scores; columns: dataset, model, prm, samples, problems,
correct, steps, steps_good, auc_last_step, auc_last_step_se, auc_within_problem,
problems_within, auc_step, auc_step_se, auc_mean_logprob, and for a value head the
workflow fitted, from its value_head.json: supervision, heldout_problems,
heldout_auc_last_step, heldout_auc_last_step_se, heldout_auc_step (vs its own training
labels), heldout_auc_step_arith_check; NULL for other PRMs); `summary_lines` its
section of results/summary.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl

from pipeline.core.auc import auc

BOOTSTRAP = 200

QUALITY = {
    "dataset": pl.String,
    "model": pl.String,
    "prm": pl.String,
    "samples": pl.Int64,
    "problems": pl.Int64,
    "correct": pl.Int64,
    "steps": pl.Int64,
    "steps_good": pl.Int64,
    "auc_last_step": pl.Float64,
    "auc_last_step_se": pl.Float64,
    "auc_within_problem": pl.Float64,
    "problems_within": pl.Int64,
    "auc_step": pl.Float64,
    "auc_step_se": pl.Float64,
    "auc_mean_logprob": pl.Float64,
    "supervision": pl.String,
    "heldout_problems": pl.Int64,
    "heldout_auc_last_step": pl.Float64,
    "heldout_auc_last_step_se": pl.Float64,
    "heldout_auc_step": pl.Float64,
    "heldout_auc_step_arith_check": pl.Float64,
}


def group_resamples(groups: Sequence, draws: int, seed: int) -> Iterator[np.ndarray]:
    """`draws` bootstrap resamples of whole groups (problems, with replacement), each as
    the row indices of the groups drawn; seeded, so every caller sees the same draws."""
    names, codes = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(codes == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    for _ in range(draws):
        yield np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])


def bootstrap_se(scores: Sequence[float], labels: Sequence, groups: Sequence, *, draws: int = BOOTSTRAP,
                 seed: int = 0) -> float | None:
    """Standard error of `auc` by resampling whole groups (problems) with replacement."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(np.unique(np.asarray(groups))) < 2 or auc(s, y) is None:
        return None
    values = [a for idx in group_resamples(groups, draws, seed) if (a := auc(s[idx], y[idx])) is not None]
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def auc_difference(a: Sequence[float], b: Sequence[float], labels: Sequence, groups: Sequence, *,
                   draws: int = 1000, seed: int = 0) -> tuple[float, float, tuple[float, float]] | None:
    """auc(a) - auc(b) on the same samples, with its paired bootstrap SE and 95% interval
    (percentiles) from resampling whole groups (problems); None when a class is empty."""
    sa, sb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    base_a, base_b = auc(sa, y), auc(sb, y)
    if base_a is None or base_b is None:
        return None
    diffs = []
    for idx in group_resamples(groups, draws, seed):
        da, db = auc(sa[idx], y[idx]), auc(sb[idx], y[idx])
        if da is not None and db is not None:
            diffs.append(da - db)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return base_a - base_b, float(np.std(diffs, ddof=1)), (float(lo), float(hi))


def within_problem_auc(scores: Sequence[float], labels: Sequence, groups: Sequence) -> tuple[float | None, int]:
    """Mean per-group AUC over groups that have both classes, and how many there are."""
    df = pl.DataFrame({"s": np.asarray(scores, dtype=np.float64), "y": np.asarray(labels, dtype=np.float64),
                       "g": [str(x) for x in groups]})
    values = [a for _, part in df.group_by("g") if (a := auc(part["s"], part["y"])) is not None]
    return (float(np.mean(values)) if values else None), len(values)


def quality(scored: pl.DataFrame, step_labels: list[list[int]] | None = None) -> dict:
    """The AUCs of one PRM on `scored`: rows with problem_id, scores (non-empty lists),
    correct, and optionally mean_logprob; `step_labels` one label per step per row."""
    last = [row[-1] for row in scored["scores"]]
    correct = scored["correct"].to_list()
    groups = scored["problem_id"].to_list()
    within, n_within = within_problem_auc(last, correct, groups)
    out = {
        "samples": scored.height,
        "problems": scored["problem_id"].n_unique(),
        "correct": int(sum(correct)),
        "steps": int(scored["scores"].list.len().sum()),
        "steps_good": None,
        "auc_last_step": auc(last, correct),
        "auc_last_step_se": bootstrap_se(last, correct, groups),
        "auc_within_problem": within,
        "problems_within": n_within,
        "auc_step": None,
        "auc_step_se": None,
        "auc_mean_logprob": None,
    }
    if step_labels is not None:
        flat_s = [v for row in scored["scores"] for v in row]
        flat_y = [v for row in step_labels for v in row]
        flat_g = [g for g, row in zip(groups, step_labels) for _ in row]
        out["steps_good"] = int(sum(1 for v in flat_y if v > 0.5))
        out["auc_step"] = auc(flat_s, flat_y)
        out["auc_step_se"] = bootstrap_se(flat_s, flat_y, flat_g)
    if "mean_logprob" in scored.columns:
        lp = scored["mean_logprob"]
        if lp.is_finite().all():
            out["auc_mean_logprob"] = auc(lp.to_list(), correct)
    return out


def mean_logprob() -> pl.Expr:
    """The policy's mean token log-probability of a sample (the baseline score)."""
    return (pl.col("cumulative_logprob") / pl.col("output_tokens").clip(lower_bound=1)).alias("mean_logprob")


def prm_quality(tables: dict[str, pl.DataFrame], manifest: dict) -> pl.DataFrame | None:
    """The aggregate's `prm_quality` table from its `scores`, `grades`, `samples` and
    `problems` tables (and, from the manifest, the sampled caches' shards for the step
    texts on arith problems and the value heads' value_head.json for their held-out
    AUCs); None when nothing was scored."""
    from pipeline.tasks import arith_check

    if "scores" not in tables or tables["scores"].height == 0:
        return None
    keys = ["dataset", "model", "key", "problem_id", "sample_idx"]
    grades = tables["grades"].filter(pl.col("kind") == "sampled").select(*keys, "correct")
    samples = tables["samples"].filter(pl.col("kind") == "sampled").select(*keys, mean_logprob())
    rows = []
    for (dataset, model, key, prm), part in tables["scores"].group_by("dataset", "model", "key", "prm",
                                                                       maintain_order=True):
        scored = (part.filter(pl.col("scores").list.len() > 0).select(*keys, "scores")
                  .join(grades, on=keys, how="inner").join(samples, on=keys, how="left")
                  .sort("problem_id", "sample_idx"))
        if scored.height == 0:
            continue
        problems = tables["problems"].filter(pl.col("dataset") == dataset)
        step_labels = None
        if arith_check.is_arith(problems):
            texts = _texts(manifest, dataset, model, key)
            with_text = scored.join(texts, on=["problem_id", "sample_idx"], how="left")
            step_labels = arith_check.labels_for(with_text, problems)
        rows.append({"dataset": dataset, "model": model, "prm": prm, **quality(scored, step_labels),
                     **_heldout(manifest, model, prm)})
    return pl.DataFrame(rows, schema=QUALITY) if rows else None


def _heldout(manifest: dict, model: str, prm: str) -> dict:
    """The held-out AUCs a fitted value head recorded at training (none for other PRMs)."""
    import json
    from pathlib import Path

    for h in manifest.get("value_heads", []):
        meta = Path(h["dir"]) / "value_head.json"
        if (h["model"], h["prm"]) == (model, prm) and meta.is_file():
            training = json.loads(meta.read_text()).get("training", {})
            held = training.get("heldout", {})
            return {"supervision": training.get("supervision"), "heldout_problems": held.get("problems"),
                    **{f"heldout_{k}": held.get(k) for k in ("auc_last_step", "auc_last_step_se", "auc_step",
                                                              "auc_step_arith_check")}}
    return {}


def _texts(manifest: dict, dataset: str, model: str, key: str) -> pl.DataFrame:
    [cache] = [c for c in manifest["caches"] if (c["dataset"], c["model"], c["key"]) == (dataset, model, key)]
    return pl.concat([pl.read_parquet(f, columns=["problem_id", "sample_idx", "text", "step_ends"])
                      for f in cache["shards"]])


def summary_lines(table: pl.DataFrame | None) -> list[str]:
    """The summary's section on PRM quality (Markdown lines; none without a table)."""
    if table is None or table.height == 0:
        return []

    def f(v, se=None):
        if v is None:
            return "–"
        return f"{v:.3f}" if se is None else f"{v:.3f} ± {se:.3f}"

    out = ["## PRM quality on the evaluation samples", "",
           "AUC of the last step's score vs final correctness (± bootstrap SE over problems), "
           "within problems (mean per-problem AUC), of every step's score vs its arith-check "
           "label, and of the policy's mean token log-probability (the baseline); for a value "
           "head the workflow fitted, its supervision and its last-step and step AUCs on the "
           "held-out fifth of its training problems (value_head.json). "
           "Table `prm_quality` in the database.", "",
           "| dataset | model | prm | samples | correct | last step | within problem | step | mean log-prob "
           "| supervision | held-out last step | held-out step |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.iter_rows(named=True):
        out.append(f"| {r['dataset']} | {r['model']} | {r['prm']} | {r['samples']} | {r['correct']} | "
                   f"{f(r['auc_last_step'], r['auc_last_step_se'])} | {f(r['auc_within_problem'])} | "
                   f"{f(r['auc_step'], r['auc_step_se'])} | {f(r['auc_mean_logprob'])} | "
                   f"{r['supervision'] or '–'} | {f(r['heldout_auc_last_step'], r['heldout_auc_last_step_se'])} | "
                   f"{f(r['heldout_auc_step'])} |")
    return out + [""]
