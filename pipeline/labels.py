"""Step-level labels for the value head, made automatically from the policy's own samples.

`prms.<name>.train.supervision` chooses how the training samples' steps are labelled:

    outcome     every step gets the sample's final correctness (the grades); no step
                information, the baseline (default)
    arith-check (arith problems only) each step's arithmetic is checked exactly against
                the problem's reference computation (pipeline/arith_check.py); no job
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

from pipeline import arith_check, rollouts

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
        return rollouts.step_labels_from_rollouts(samples, pl.read_parquet(rollouts_file),
                                                  label=rollouts.settings_of(spec)["label"], where=rollouts_file)
    raise ValueError(f"unknown supervision {sup!r}; known: {SUPERVISIONS}")
