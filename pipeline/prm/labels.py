"""Step-level labels for the value head, made automatically from the policy's own samples.

`prms.<name>.train.supervision` chooses how the training samples' steps are labelled:

    outcome     every step gets the sample's final correctness (the grades); no step
                information, the baseline (default)
    arith-check (arith problems only) each step's arithmetic is checked exactly against
                the problem's reference computation (pipeline/tasks/arith_check.py); no job
    rollouts    Math-Shepherd style (Wang et al. 2024): from every step prefix, k
                completions by the policy; a step is good if one reaches the reference
                answer (pipeline/rollouts.py); any dataset, costs a vLLM job (the
                `rollouts` rule) and a protected cache

`training_labels` gives one target in [0, 1] per step of every training sample (None
for outcome: then pipeline.prm.train_value_head gives every step the grade);
`check_config` what the schema cannot say about an entry's supervision.
"""

from __future__ import annotations

import polars as pl

from pipeline.tasks import arith_check, code

SUPERVISIONS = ("outcome", "rollouts", "arith-check")


def supervision_of(spec: dict) -> str:
    """The value-head entry's supervision (default outcome)."""
    return spec.get("train", {}).get("supervision", "outcome")


def check_config(name: str, spec: dict) -> None:
    """What the schema cannot say about a value head's supervision (workflow-parse time)."""
    train = spec.get("train", {})
    where = f"prms.{name}.train"
    sup = supervision_of(spec)
    if sup == "arith-check" and train.get("dataset", {}).get("source") != "arith":
        raise ValueError(
            f"{where}.supervision: arith-check checks arithmetic problems only, but "
            f"{where}.dataset has source {train.get('dataset', {}).get('source')!r}; use "
            "supervision: rollouts (any dataset) or outcome"
        )
    if sup == "rollouts" and code.is_code(train.get("dataset", {})):
        raise ValueError(
            f"{where}.supervision: rollouts label a step by whether its continuations reach the "
            "reference answer, which code problems do not have; use supervision: outcome"
        )
    if "rollouts" in train and sup != "rollouts":
        raise ValueError(f"{where}.rollouts: only used with supervision: rollouts (this entry has {sup!r})")


def training_labels(spec: dict, samples: pl.DataFrame, problems: pl.DataFrame,
                    rollouts_file: str | None = None) -> list[list[float]] | None:
    """Targets per step for `samples` (SAMPLES rows with steps) under the entry's
    supervision; None for outcome. `rollouts_file`: the rollouts job's Parquet."""
    sup = supervision_of(spec)
    if sup == "outcome":
        return None
    if sup == "arith-check":
        return [[float(v) for v in row] for row in arith_check.labels_for(samples, problems)]
    if sup == "rollouts":
        if rollouts_file is None:
            raise ValueError("supervision rollouts: the training job got no rollouts file (--rollouts)")
        return step_labels_from_rollouts(samples, pl.read_parquet(rollouts_file),
                                                  label=settings_of(spec)["label"], where=rollouts_file)
    raise ValueError(f"unknown supervision {sup!r}; known: {SUPERVISIONS}")


# --------------------------------------------------------------------------- rollouts supervision
# Settings of `train.rollouts` (the rollouts stage, pipeline/rollouts.py, writes the
# continuations; here they become step targets).

DEFAULTS = {"k": 4, "max_tokens": 96, "temperature": 0.7, "top_p": 0.95, "label": "hard"}
# What the rollouts depend on besides the training cache (the rollout cache key); the
# label choice (hard / soft) only changes how training reads them.
KEY_SETTINGS = ("k", "max_tokens", "temperature", "top_p")


def settings_of(spec: dict) -> dict:
    """A value-head entry's rollout settings with DEFAULTS filled in."""
    return {**DEFAULTS, **spec.get("train", {}).get("rollouts", {})}


def step_labels_from_rollouts(samples: pl.DataFrame, rollouts: pl.DataFrame, *, label: str = "hard",
                              where: str = "rollouts") -> list[list[float]]:
    """One target per step of every row of `samples`: hard (1 if any completion reached
    the reference answer) or soft (the share that did)."""
    if label not in ("hard", "soft"):
        raise ValueError(f"rollouts label must be hard or soft, got {label!r}")
    est = {
        (pid, idx, step): (reached / k if label == "soft" else float(reached > 0))
        for pid, idx, step, k, reached in rollouts.select("problem_id", "sample_idx", "step", "k", "reached").iter_rows()
    }
    out = []
    for pid, idx, ends in samples.select("problem_id", "sample_idx", "step_ends").iter_rows():
        row = []
        for step in range(len(ends)):
            if (pid, idx, step) not in est:
                raise ValueError(
                    f"{where}: no rollout for problem {pid!r} sample {idx} step {step} (rollouts made from "
                    "other training samples? delete the rollouts folder to redo them)"
                )
            row.append(est[(pid, idx, step)])
        out.append(row)
    return out
