"""Latency vs FLOPs: sampling, sampling + PRM and REBASE side by side on one engine.

    python benchmarks/latency_vs_flops.py [--config config/config.yaml] [--workdir .]
        [--problems 32] [--budget 8] [--rounds 2] [--prm value-head]

Needs a finished workflow run of the config in --workdir (the embedded model in
results/models and, for a value-head PRM, its head in results/prms; read only). On the
same problems and with the same engine and PRM:
    sampling         `budget` samples per problem in one generate call (majority@budget)
    sampling + PRM   the same samples, then scored by the PRM (best-of-budget, weighted
                     voting): the scoring time and PRM FLOPs are added
    rebase           REBASE at width `budget` with the config's search settings (its
                     `search` entry for the PRM if any, else the stage's defaults)
Rounds alternate the order and reset the prefix cache before each run. Prints per
method seconds per problem, generated tokens per second and FLOPs per second in both
conventions of pipeline.core.flops (paper: 2 x params x generated tokens; full: + prompt
tokens per sample and the PRM's 2 x params x tokens read), then the ratios that say
how much more wall-clock time a tree search FLOP costs than a sampling FLOP. Runs
unchanged on a GPU (pipeline.engine.vllm_engine.make_engine and the PRM pick the device).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--workdir", default=".", help="the workflow folder whose results/ hold the model and PRM")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--budget", type=int, default=8, help="samples per problem = REBASE width")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prm", default=None, help="a key of the config's prms (default: the first)")
    a = ap.parse_args()

    from pipeline import generate, score, search
    from pipeline.core import prompts, timing
    from pipeline.engine import vllm_engine
    from pipeline.prm import loading
    from pipeline.tasks import datasets
    from pipeline.treesearch import tree
    from pipeline.workflow import plan

    config = yaml.safe_load(Path(a.config).read_text())
    workdir = Path(a.workdir).resolve()
    dataset, dcfg = next(iter(config["datasets"].items()))
    model = next(iter(config["models"]))
    cache = plan.find(plan.caches(config), dataset=dataset, model=model, kind="sampled")
    problems = datasets.load_problems(dataset, {**dcfg, "limit": a.problems})
    info = json.loads((workdir / "results" / "models" / model / "info.json").read_text())
    model_dir = str(workdir / info["model_dir"]) if not Path(info["model_dir"]).is_absolute() else info["model_dir"]
    params = info["params_total"]
    prm_name = a.prm or next(iter(config["prms"]))
    spec = config["prms"][prm_name]
    batch_size = spec.get("batch_size", 32)  # the workflow's default PRM batch
    rebase_entry = [s for s in plan.searches(config) if s.dataset == dataset and s.model == model
                    and s.prm == prm_name and s.job["algorithm"] == "rebase"]
    job = rebase_entry[0].job if rebase_entry else {}
    limits = tree.Limits(**job.get("limits", {"max_tokens": cache.sampling["max_tokens"]}))
    temperature = job.get("settings", {}).get("temperature", 0.2)

    watch = timing.Stopwatch()
    with watch.phase("load"):
        head = str(workdir / "results" / "prms" / model / prm_name) if spec["format"] == "value-head" else None
        prm = loading.open_prm(spec, policy_dir=model_dir, head_dir=head)
        engine_args = vllm_engine.engine_args(cache.engine_args)
        llm = vllm_engine.make_engine(model_dir, seed=0, engine_args=engine_args)
    device = timing.job_device(timing.describe_device(gpus=timing.engine_gpus(engine_args)),
                               timing.describe_device(getattr(prm, "device", "cpu")))
    print(f"device: {device}; {timing.engine_versions()}")
    print(f"engine args: {engine_args}; load (engine + PRM) {watch['load']:.1f} s; {problems.height} problems, "
          f"width {a.budget}, PRM {prm_name} (batch {batch_size}), REBASE T={temperature}, {limits}")
    stop = cache.prompt.get("stop", [])
    texts = [prompts.render(cache.prompt, q) for q in problems["question"]]
    questions = problems["question"].to_list()
    sampling = dict(cache.sampling)
    llm.generate(texts[:4], vllm_engine.sampling_params(sampling, n=2, stop=stop))  # warm-up

    # per method: seconds, generated tokens, prompt tokens (per sample), PRM tokens
    totals = {m: [0.0, 0, 0, 0] for m in ("sampling", "sampling + PRM", "rebase")}

    def add(method, seconds, out, prompt, prm_tokens=0):
        t = totals[method]
        t[0] += seconds
        t[1] += out
        t[2] += prompt
        t[3] += prm_tokens

    def run_sampling(r):
        t = time.perf_counter()
        df = generate.sample(llm, problems, prompt=cache.prompt, sampling=sampling, sample_range=(0, a.budget))
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        scored = score.score_samples(prm, prm_name, df, problems, batch_size=batch_size)
        prm_s = time.perf_counter() - t
        out, prompt, read = int(df["output_tokens"].sum()), int(df["prompt_tokens"].sum()), int(scored["prm_tokens"].sum())
        add("sampling", gen_s, out, prompt)
        add("sampling + PRM", gen_s + prm_s, out, prompt, read)
        print(f"round {r} sampling: {gen_s:.1f} s generation + {prm_s:.1f} s scoring, {out} tokens", flush=True)

    def run_rebase(r):
        t = time.perf_counter()
        s = tree.Searcher(search.VLLMGenerator(llm, temperature=sampling["temperature"], top_p=sampling["top_p"],
                                               stop=stop),
                          prm, questions, texts, stop=stop, limits=limits, batch_size=batch_size)
        trees = tree.rebase(s, a.budget, temperature=temperature)
        dt = time.perf_counter() - t
        out = sum(x.output_tokens for x in trees)
        add("rebase", dt, out, sum(x.prompt_tokens for x in trees), sum(x.prm_tokens for x in trees))
        print(f"round {r} rebase:   {dt:.1f} s, {out} tokens", flush=True)

    for r in range(a.rounds):
        for fn in (run_sampling, run_rebase) if r % 2 == 0 else (run_rebase, run_sampling):
            llm.reset_prefix_cache()
            fn(r)

    from pipeline.core import flops

    prm_params = prm.num_parameters
    rows = {}
    for method, (seconds, out, prompt, read) in totals.items():
        paper = flops.paper_flops(params, out)
        full = flops.full_flops(params, out, prompt) + 2 * prm_params * read
        rows[method] = {"s_per_problem": seconds / (a.rounds * problems.height), "tokens_per_s": out / seconds,
                        "paper_per_s": paper / seconds, "full_per_s": full / seconds,
                        "paper_per_problem": paper / (a.rounds * problems.height),
                        "full_per_problem": full / (a.rounds * problems.height)}
    print(f"\n{'method':16s} {'s/problem':>10s} {'tokens/s':>9s} {'paper FLOPs/s':>14s} {'full FLOPs/s':>13s} "
          f"{'paper FLOPs/problem':>20s} {'full FLOPs/problem':>19s}")
    for method, v in rows.items():
        print(f"{method:16s} {v['s_per_problem']:10.3f} {v['tokens_per_s']:9.1f} {v['paper_per_s']:14.3e} "
              f"{v['full_per_s']:13.3e} {v['paper_per_problem']:20.3e} {v['full_per_problem']:19.3e}")
    s, sp, rb = rows["sampling"], rows["sampling + PRM"], rows["rebase"]
    print(f"\nseconds per problem, rebase / sampling: {rb['s_per_problem'] / s['s_per_problem']:.2f}; "
          f"rebase / sampling + PRM: {rb['s_per_problem'] / sp['s_per_problem']:.2f}")
    print(f"seconds per FLOP, rebase / sampling (paper FLOPs): {s['paper_per_s'] / rb['paper_per_s']:.2f}")
    print(f"seconds per FLOP, rebase / sampling + PRM (full FLOPs): {sp['full_per_s'] / rb['full_per_s']:.2f}")


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
