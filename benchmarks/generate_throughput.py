"""Generate stage vs raw vLLM: generated tokens per second, side by side, one engine.

    python benchmarks/generate_throughput.py [--config config/config.yaml] [--problems 60] [--n 8] [--rounds 2]

Needs the embedded model built (run the workflow once, or `snakemake results/models/<m>/info.json`).
Both paths get the same prompts and SamplingParams; rounds alternate (raw, ours) and
the prefix cache is reset before each call, so neither benefits from the other's
cached prompts. Prints the tokens/s of each and the ratio ours/raw (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--problems", type=int, default=60)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()

    from pipeline import generate
    from pipeline.core import prompts
    from pipeline.engine import models, vllm_engine
    from pipeline.tasks import datasets
    from pipeline.workflow import plan

    config = yaml.safe_load(Path(a.config).read_text())
    dataset, dcfg = next(iter(config["datasets"].items()))
    model, mcfg = next(iter(config["models"].items()))
    cache = plan.find(plan.caches(config), dataset=dataset, model=model, kind="sampled")
    problems = datasets.load_problems(dataset, {**dcfg, "limit": a.problems})
    model_dir = models.model_dir_of(f"results/models/{model}/info.json")

    llm = vllm_engine.make_engine(model_dir, seed=0, engine_args=cache.engine_args)
    params = vllm_engine.sampling_params(cache.sampling, n=a.n, stop=cache.prompt.get("stop", []))
    texts = [prompts.render(cache.prompt, q) for q in problems["question"]]
    llm.generate(texts[:4], params)  # warm-up

    def raw() -> int:
        outs = llm.generate(texts, params)
        return sum(len(c.token_ids) for o in outs for c in o.outputs)

    def ours() -> int:
        df = generate.sample(llm, problems, prompt=cache.prompt, sampling=cache.sampling, sample_range=(0, a.n))
        return int(df["output_tokens"].sum())

    totals = {"raw": [0, 0.0], "ours": [0, 0.0]}
    for r in range(a.rounds):
        for name, fn in (("raw", raw), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("raw", raw)):
            llm.reset_prefix_cache()
            t = time.perf_counter()
            tokens = fn()
            dt = time.perf_counter() - t
            totals[name][0] += tokens
            totals[name][1] += dt
            print(f"round {r} {name:4s}: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s", flush=True)
    tps = {k: t / s for k, (t, s) in totals.items()}
    print(f"raw vllm.LLM.generate: {tps['raw']:.1f} tokens/s")
    print(f"pipeline.generate.sample: {tps['ours']:.1f} tokens/s")
    print(f"ratio ours/raw: {tps['ours'] / tps['raw']:.3f}")


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
