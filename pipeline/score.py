"""The score stage: per-step PRM scores for cached samples, and value-head training.

PRM entries in config (`prms:`):
    format      math-shepherd | qwen-prm | llemma-prm | value-head | logprob
    model       Hub id or directory of an external PRM (the three tagged formats);
                value-head and logprob use each policy model itself
    options     format options passed to pipeline.prm.load (tag strings, dtype, ...)
    train       value-head only: how the workflow fits the head on the policy's own
                samples: {dataset: <a datasets-style entry, e.g. arith train split>,
                n: samples per problem, l2: penalty, supervision: outcome | rollouts |
                arith-check (the step labels, pipeline/prm/labels.py), rollouts: {k, ...},
                layer: the policy's decoder block whose output the head reads (default:
                the final hidden state)}

Scores (results/scores/{dataset}/{model}/{key}/{prm}/{shard}.parquet, one row per sample):
    problem_id   str
    sample_idx   int32
    scores       list[float64]  one score per step, in step order; empty for a sample
                                without steps (an empty generation: no answer, never correct)
    prm_tokens   int32          tokens the PRM read for this sample (0 when not scored):
                                every token of the scored text, although prefix reuse
                                computes a prefix shared with other samples once (no
                                credit for sharing, as `flops_full` charges prompts)
    prm          str            PRM name in config
    prm_params   int64          parameters of the PRM's forward pass (FLOPs)
Each score shard carries its timing record (`pipeline.core.timing`: PRM load and scoring
seconds, tokens read, device, the PRM's dtype, and under `prm` the path the PRM took,
prefix reuse or plain, with its forward passes, tokens computed and batch budget; also
printed to the log) as Parquet metadata; a fitted value head keeps its own in
value_head.json under `training.timing`. The PRM computes in its entry's dtype, float32
when unset (pipeline.prm.precision; a score folder begun under the old per-device default
keeps the dtype its shards record).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import polars as pl

from pipeline.core import integrity, io, timing
from pipeline.engine import models
from pipeline.prm import labels, precision
from pipeline.prm.loading import LOAD_OPTIONS, open_prm
from pipeline.tasks import arith_check

SCORES = {
    "problem_id": pl.String,
    "sample_idx": pl.Int32,
    "scores": pl.List(pl.Float64),
    "prm_tokens": pl.Int32,
    "prm": pl.String,
    "prm_params": pl.Int64,
}


def check_samples(samples: pl.DataFrame, problems: pl.DataFrame, where: str) -> None:
    """The samples are SAMPLES rows of the problems they are scored against."""
    missing = [c for c in ("problem_id", "sample_idx", "text", "step_ends") if c not in samples.columns]
    if missing:
        raise ValueError(f"{where}: not a samples shard (no column(s) {missing})")
    dup = samples.filter(pl.struct("problem_id", "sample_idx").is_duplicated())
    if dup.height:
        pid, idx = dup["problem_id"][0], dup["sample_idx"][0]
        raise ValueError(f"{where}: problem {pid!r} sample {idx} appears more than once")
    unknown = samples.filter(~pl.col("problem_id").is_in(problems["problem_id"].implode()))
    if unknown.height:
        raise ValueError(
            f"{where}: problem {unknown['problem_id'][0]!r} is not in the problems file "
            f"({unknown.height} samples): samples and problems are from different datasets"
        )


def check_scores(scores: list, step_ends: list, keys: pl.DataFrame, name: str, where: str) -> None:
    """One finite score per step for every sample: a PRM that returns another number of
    scores does not match the samples' step format; NaN/inf is an error, never a zero."""
    if len(scores) != len(step_ends):
        raise ValueError(f"PRM {name} on {where}: {len(scores)} score rows for {len(step_ends)} samples")
    for i, (row, ends) in enumerate(zip(scores, step_ends)):
        pid, idx = keys.row(i)
        if len(row) != len(ends):
            raise ValueError(
                f"PRM {name} on {where}: problem {pid!r} sample {idx} has {len(ends)} steps but "
                f"{len(row)} scores (the PRM's step format does not match the samples)"
            )
        for k, v in enumerate(row):
            if not math.isfinite(v):
                raise ValueError(f"PRM {name} on {where}: problem {pid!r} sample {idx} step {k}: score {v} is not finite")


def score_samples(
    scorer, name: str, samples: pl.DataFrame, problems: pl.DataFrame, *, batch_size: int = 8,
    where: str = "samples",
) -> pl.DataFrame:
    """SCORES rows for `samples` (SAMPLES rows), each distinct token prefix computed
    once (pipeline/prm/prefix.py)."""
    check_samples(samples, problems, where)
    questions = dict(zip(problems["problem_id"], problems["question"]))
    has_steps = samples["step_ends"].list.len() > 0
    todo = samples.filter(has_steps)
    scores, tokens = scorer.score(
        [questions[p] for p in todo["problem_id"]],
        todo["text"].to_list(),
        [list(e) for e in todo["step_ends"]],
        batch_size=batch_size,
    )
    check_scores(scores, todo["step_ends"].to_list(), todo.select("problem_id", "sample_idx"), name, where)
    scored = todo.select("problem_id", "sample_idx").with_columns(
        scores=pl.Series(scores, dtype=pl.List(pl.Float64)), prm_tokens=pl.Series(tokens, dtype=pl.Int32)
    )
    empty = samples.filter(~has_steps).select("problem_id", "sample_idx").with_columns(
        scores=pl.lit([], dtype=pl.List(pl.Float64)), prm_tokens=pl.lit(0, dtype=pl.Int32)
    )
    out = pl.concat([scored, empty]).sort("problem_id", "sample_idx").with_columns(
        prm=pl.lit(name), prm_params=pl.lit(scorer.num_parameters, dtype=pl.Int64)
    )
    return out.select([pl.col(c).cast(t) for c, t in SCORES.items()])


def train(*, spec: dict, policy_dir: str, problems: str, shards: list[str], grades: str, out: str,
          rollouts_file: str | None = None) -> None:
    """Fit a value head on graded samples of the training cache, with the entry's step
    labels (pipeline.prm.labels); report held-out AUCs (pipeline.analysis.prm_quality)."""
    from pipeline import prm
    from pipeline.analysis import prm_quality
    from pipeline.prm.base import first_layers

    samples = pl.concat([pl.read_parquet(f) for f in shards])
    problem_rows = pl.read_parquet(problems)
    data = (
        samples.join(pl.read_parquet(grades).select("problem_id", "sample_idx", "correct"), on=["problem_id", "sample_idx"])
        .join(problem_rows.select("problem_id", "question"), on="problem_id")
        .filter(pl.col("step_ends").list.len() > 0)
        .sort("problem_id", "sample_idx")
    )
    targets = labels.training_labels(spec, data, problem_rows, rollouts_file)
    data = data.with_columns(target=pl.Series(targets if targets is not None else [[float(c)] * len(e) for c, e in
                                              zip(data["correct"], data["step_ends"])], dtype=pl.List(pl.Float64)))
    # Hold out a fifth of the problems (whole problems, so no question leaks) for the AUC.
    ids = data["problem_id"].unique(maintain_order=True).to_list()
    held = set(ids[::5])
    fit, test = data.filter(~pl.col("problem_id").is_in(held)), data.filter(pl.col("problem_id").is_in(held))
    options = {**spec.get("options", {}), "dtype": precision.resolve(spec)}
    train_cfg = spec.get("train", {})

    def args(df):
        return df["question"].to_list(), df["text"].to_list(), [list(e) for e in df["step_ends"]]

    watch = timing.Stopwatch()
    with watch.phase("load"):  # the policy, loaded once and handed to the fit
        policy = prm.load("logprob", policy_dir, **{k: options[k] for k in LOAD_OPTIONS if k in options})
    layer = train_cfg.get("layer")
    if layer is not None:  # the policy's depth is known only once it is loaded
        try:
            first_layers(policy.model, layer)
        except ValueError as e:
            raise ValueError(f"value head train.layer: {e}") from None
    with watch.phase("work"):
        head = prm.train_value_head(policy_dir, *args(fit), fit["correct"].to_list(), l2=train_cfg.get("l2", 1e-3),
                                    layer=layer,
                                    labels_per_step=fit["target"].to_list() if targets is not None else None,
                                    **options, _loaded=(policy.model, policy.tokenizer))
        scores, heldout_tokens = head.score(*args(test))
    scored = test.with_columns(scores=pl.Series(scores, dtype=pl.List(pl.Float64)))
    if {"cumulative_logprob", "output_tokens"} <= set(scored.columns):  # the baseline, where recorded
        scored = scored.with_columns(prm_quality.mean_logprob())
    supervision = labels.supervision_of(spec)
    heldout = {"problems": len(held), **prm_quality.quality(scored, test["target"].to_list())}
    # auc_step above is against the head's own labels; on arith problems also against the
    # arith-check labels, the yardstick every supervision is compared on
    if arith_check.is_arith(problem_rows):
        check = prm_quality.quality(scored, arith_check.labels_for(test, problem_rows))
        heldout["auc_step_arith_check"], heldout["steps_good_arith_check"] = check["auc_step"], check["steps_good"]
    head.training["supervision"] = supervision
    if supervision == "rollouts":
        head.training["rollouts"] = labels.settings_of(spec)
    head.training["heldout"] = heldout
    head.training["timing"] = timing.record(
        watch, device=timing.describe_device(policy.device), dtype=options["dtype"], problems=len(ids),
        samples=data.height,
        prm_tokens=head.training.get("tokens", 0) + sum(heldout_tokens),
    )
    # Saved under a temporary name with its checksums and renamed: a killed job never
    # leaves a head that looks trained.
    tmp = Path(out + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    head.save(tmp)
    integrity.seal_dir(tmp)  # SHA256SUMS: checked before every use (pipeline.core.integrity)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    print(json.dumps(head.training, indent=2))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="PRM scoring and value-head training")
    ap.add_argument("what", choices=["score", "train"])
    ap.add_argument("--spec", required=True, help="the PRM's config entry, as JSON")
    ap.add_argument("--name")
    ap.add_argument("--info", required=True, help="policy model info.json")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--head", help="value head directory (value-head format)")
    ap.add_argument("--grades")
    ap.add_argument("--rollouts", help="rollouts Parquet (value heads with supervision: rollouts)")
    ap.add_argument("--batch-size", type=int, help="default: the spec's batch_size, else 8")
    ap.add_argument("--out", required=True)
    ap.add_argument("shards", nargs="+")
    a = ap.parse_args(argv)
    integrity.check_inputs([a.problems, *a.shards, *filter(None, [a.head, a.grades, a.rollouts])])
    spec = json.loads(a.spec)
    policy_dir = models.model_dir_of(a.info)
    if a.what == "train":
        train(spec=spec, policy_dir=policy_dir, problems=a.problems, shards=a.shards, grades=a.grades, out=a.out,
              rollouts_file=a.rollouts)
        return
    # the entry's dtype, else the one the folder's finished shards were scored in (a
    # cache begun under the old per-device default keeps it), else float32
    dtype = precision.for_folder(spec, precision.folder_records(Path(a.out).parent, "*.parquet"))
    watch = timing.Stopwatch()
    with watch.phase("load"):
        scorer = open_prm({**spec, "options": {**spec.get("options", {}), "dtype": dtype}}, policy_dir=policy_dir,
                          head_dir=a.head)
    samples = pl.concat([pl.read_parquet(f) for f in a.shards])
    with watch.phase("work"):
        out = score_samples(scorer, a.name, samples, pl.read_parquet(a.problems),
                            batch_size=a.batch_size or spec.get("batch_size", 8), where=", ".join(a.shards))
    call = getattr(scorer, "last_call", None)
    if call:
        print(f"PRM path: {call['path']} ({call['chosen']}): {call['forward_passes']} forward passes computed "
              f"{call['computed_tokens']} of {call['tokens']} tokens; budget {call['samples_per_pass'] or 0} "
              f"samples or {call['token_budget'] or 0} tokens per pass; estimated cost {call['estimated_cost']}",
              flush=True)
    measured = timing.record(watch, device=timing.describe_device(getattr(scorer, "device", "cpu")), dtype=dtype,
                             problems=out["problem_id"].n_unique(), samples=out.height,
                             prm_tokens=out["prm_tokens"].sum(), prm=call or None)
    io.write_parquet(out, a.out, metadata=timing.as_metadata(measured))
    print(f"{out.height} samples scored by {a.name} ({out['prm_tokens'].sum()} tokens) -> {a.out}")


if __name__ == "__main__":
    main()
