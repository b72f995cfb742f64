"""Value heads under each supervision, side by side on one finished run's samples.

    python benchmarks/prm_supervision.py --workdir RUN --out OUT_DIR [--rollouts FILE | --make-rollouts]
        [--variants '{"outcome": {}, "arith-check": {"supervision": "arith-check"}, ...}']

RUN is a workflow folder (its results/ holds the value head's training samples and
grades, the evaluation dataset's sampled cache and grades, the problems and the model);
the config (default config/config.yaml of this checkout) names them. For every variant
(overrides of `prms.<prm>.train`) the script fits a head exactly as the
train_value_head job does (pipeline.score.train), scores the evaluation samples as the
score job does, and reports, side by side: held-out last-step and step AUCs (from
value_head.json), the AUCs on the evaluation samples (pipeline.analysis.prm_quality: last step vs
correct, within problem, steps vs arith-check labels), the policy's mean log-prob
baseline, training and scoring seconds. `--make-rollouts` first runs the rollouts job
(pipeline.rollouts, one vLLM engine) for the config's rollout settings and times it.
Everything is written under OUT_DIR (heads, scores, rollouts, results.json); RUN is
only read. `--add` keeps the variants OUT_DIR/results.json already holds (e.g. a run
with other rollout settings) and adds these, so `--compare-only` pairs them all.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import polars as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import rollouts as rollout_stage
from pipeline import score
from pipeline.analysis import prm_quality
from pipeline.core import timing
from pipeline.engine import models
from pipeline.prm import labels, loading
from pipeline.tasks import arith_check  # noqa: E402
from pipeline.workflow import plan

DEFAULT_VARIANTS = {
    "outcome": {"supervision": "outcome"},
    "arith-check": {"supervision": "arith-check"},
    "rollouts-hard": {"supervision": "rollouts", "rollouts": {"label": "hard"}},
    "rollouts-soft": {"supervision": "rollouts", "rollouts": {"label": "soft"}},
}


def load_config(path: Path) -> dict:
    from snakemake.utils import validate

    config = yaml.safe_load(path.read_text())
    validate(config, schema=str(REPO / "config" / "config.schema.yaml"), set_default=True)
    return config


def shards(cache: plan.Cache) -> list[str]:
    return [f"results/samples/{cache.dataset}/{cache.model}/{cache.key}/{s}.parquet" for s in cache.shards]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="a finished workflow folder (read only)")
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--prm", default="value-head")
    ap.add_argument("--dataset", default="arith", help="evaluation dataset")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variants", help="JSON: name -> overrides of prms.<prm>.train")
    ap.add_argument("--rollouts", help="an existing rollouts Parquet for the rollouts variants")
    ap.add_argument("--make-rollouts", action="store_true", help="run the rollouts job first (vLLM)")
    ap.add_argument("--eval-limit", type=int, help="score only the first N evaluation problems")
    ap.add_argument("--compare-only", action="store_true", help="only the paired comparison of OUT's scores")
    ap.add_argument("--add", action="store_true",
                    help="keep the variants already in OUT/results.json (same caches) and add these")
    a = ap.parse_args()
    if a.compare_only:
        os.chdir(a.workdir)
        compare(Path(a.out).resolve(), a.dataset, load_config(Path(a.config).resolve()))
        return

    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = load_config(Path(a.config).resolve())
    os.chdir(a.workdir)
    caches = plan.caches(config)
    spec = config["prms"][a.prm]
    model = next(iter(config["models"]))
    train_cache = plan.find(caches, dataset=f"{a.prm}-train", model=model, kind="train")
    eval_cache = plan.find(caches, dataset=a.dataset, model=model, kind="sampled")
    info = f"results/models/{model}/info.json"
    policy_dir = models.model_dir_of(info)
    train_problems = f"results/problems/{train_cache.dataset}.parquet"
    train_grades = f"results/grades/{train_cache.dataset}/{model}/{train_cache.key}.parquet"
    variants = json.loads(a.variants) if a.variants else DEFAULT_VARIANTS
    results: dict = {"workdir": str(Path.cwd()), "train_key": train_cache.key, "eval_key": eval_cache.key,
                     "variants": {}, "rollouts": {}}
    if a.add and (out / "results.json").is_file():
        before = json.loads((out / "results.json").read_text())
        if (before["train_key"], before["eval_key"]) != (train_cache.key, eval_cache.key):
            raise SystemExit(f"{out}/results.json was made from other caches; use another --out")
        results["variants"], results["rollouts"] = before["variants"], before.get("rollouts", {})

    rollouts = a.rollouts
    if a.make_rollouts:
        rspec = copy.deepcopy(spec)
        rspec["train"]["supervision"] = "rollouts"
        [job] = plan.rollouts({**config, "prms": {a.prm: rspec}}, caches)
        rollouts = str(out / "rollouts" / job.key / "rollouts.parquet")
        t0 = time.perf_counter()
        rollout_stage.run_rollouts(spec=job.spec(), model_dir=policy_dir, problems=train_problems,
                                   shards=shards(train_cache), out=rollouts)
        results["rollouts"][rollouts] = {"seconds": time.perf_counter() - t0, "settings": job.spec()["rollouts"]}
        print(f"rollouts: {results['rollouts'][rollouts]['seconds']:.1f} s", flush=True)
    if rollouts:
        r = pl.read_parquet(rollouts)
        rolled = r.filter(pl.col("kind") == "rollouts")
        results["rollouts"].setdefault(rollouts, {}).update(
            timing=timing.read_record(rollouts),
            stats={"steps": r.height, "rolled_out": rolled.height, "completions": int(rolled["k"].sum()),
                   "output_tokens": int(rolled["output_tokens"].sum()),
                   "steps_reached": float((r["reached"] > 0).mean())})

    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    if not variants:
        return
    problems_eval = pl.read_parquet(f"results/problems/{a.dataset}.parquet")
    samples_eval = pl.concat([pl.read_parquet(f) for f in shards(eval_cache)])
    grades_eval = pl.read_parquet(f"results/grades/{a.dataset}/{model}/{eval_cache.key}.parquet")
    if a.eval_limit:
        keep = problems_eval["problem_id"].head(a.eval_limit)
        problems_eval = problems_eval.filter(pl.col("problem_id").is_in(keep.implode()))
        samples_eval = samples_eval.filter(pl.col("problem_id").is_in(keep.implode()))

    for name, overrides in variants.items():
        vspec = copy.deepcopy(spec)
        train = vspec["train"]
        for k, v in overrides.items():
            train[k] = {**train.get(k, {}), **v} if isinstance(v, dict) else v
        if labels.supervision_of(vspec) == "rollouts" and not rollouts:
            print(f"{name}: skipped (no rollouts)")
            continue
        head_dir = out / "heads" / name
        t0 = time.perf_counter()
        score.train(spec=vspec, policy_dir=policy_dir, problems=train_problems, shards=shards(train_cache),
                    grades=train_grades, out=str(head_dir), rollouts_file=rollouts)
        train_s = time.perf_counter() - t0
        heldout = json.loads((head_dir / "value_head.json").read_text())["training"]
        t0 = time.perf_counter()
        scorer = loading.open_prm(vspec, policy_dir=policy_dir, head_dir=str(head_dir))
        scored = score.score_samples(scorer, name, samples_eval, problems_eval, batch_size=spec.get("batch_size", 32))
        score_s = time.perf_counter() - t0
        scored.write_parquet(out / "heads" / f"{name}.scores.parquet")
        data = (scored.filter(pl.col("scores").list.len() > 0)
                .join(grades_eval.select("problem_id", "sample_idx", "correct"), on=["problem_id", "sample_idx"])
                .join(samples_eval.select("problem_id", "sample_idx", "text", "step_ends", "cumulative_logprob",
                                          "output_tokens"), on=["problem_id", "sample_idx"])
                .with_columns(prm_quality.mean_logprob()).sort("problem_id", "sample_idx"))
        step_labels = arith_check.labels_for(data, problems_eval) if arith_check.is_arith(problems_eval) else None
        evaluation = prm_quality.quality(data, step_labels)
        results["variants"][name] = {"train": train, "train_seconds": train_s, "score_seconds": score_s,
                                     "training": heldout, "evaluation": evaluation,
                                     "rollouts": rollouts if labels.supervision_of(vspec) == "rollouts" else None}
        h, e = heldout["heldout"], evaluation
        print(f"{name}: train {train_s:.0f} s, score {score_s:.0f} s | held-out last {h['auc_last_step']}, "
              f"step {h.get('auc_step')}, step(arith) {h.get('auc_step_arith_check')} | eval last "
              f"{e['auc_last_step']} ± {e['auc_last_step_se']}, within {e['auc_within_problem']}, "
              f"step {e['auc_step']}, logprob {e['auc_mean_logprob']}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    compare(out, a.dataset, config)


def compare(out: Path, dataset: str, config: dict) -> None:
    """Paired differences of the evaluation last-step AUC: every variant against the
    first one and against the policy's mean log-prob (bootstrap over problems)."""
    results = json.loads((out / "results.json").read_text())
    names = list(results["variants"])
    if not names:
        return
    model = next(iter(config["models"]))
    eval_cache = plan.find(plan.caches(config), dataset=dataset, model=model, kind="sampled")
    grades = pl.read_parquet(f"results/grades/{dataset}/{model}/{eval_cache.key}.parquet")
    samples = pl.concat([pl.read_parquet(f, columns=["problem_id", "sample_idx", "cumulative_logprob", "output_tokens"])
                         for f in shards(eval_cache)])
    frames = {}
    for name in names:
        frames[name] = (pl.read_parquet(out / "heads" / f"{name}.scores.parquet")
                        .filter(pl.col("scores").list.len() > 0)
                        .join(grades.select("problem_id", "sample_idx", "correct"), on=["problem_id", "sample_idx"])
                        .join(samples, on=["problem_id", "sample_idx"]).with_columns(prm_quality.mean_logprob())
                        .sort("problem_id", "sample_idx"))
    first = frames[names[0]]
    y, g = first["correct"].to_list(), first["problem_id"].to_list()
    last = {n: [s[-1] for s in f["scores"]] for n, f in frames.items()}
    rows = {}
    for name in names:
        vs_first = prm_quality.auc_difference(last[name], last[names[0]], y, g)
        vs_logprob = prm_quality.auc_difference(last[name], first["mean_logprob"].to_list(), y, g)
        rows[name] = {f"vs_{names[0]}": vs_first, "vs_mean_logprob": vs_logprob}
        print(f"{name}: last-step AUC minus {names[0]} {vs_first[0]:+.3f} (95% [{vs_first[2][0]:+.3f}, "
              f"{vs_first[2][1]:+.3f}]), minus mean log-prob {vs_logprob[0]:+.3f} "
              f"(95% [{vs_logprob[2][0]:+.3f}, {vs_logprob[2][1]:+.3f}])")
    results["paired"] = rows
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
