"""REBASE vs plain sampling: policy tokens per second, side by side, one engine.

    python benchmarks/search_throughput.py [--config config/config.yaml] [--problems 32]
        [--budget 8] [--rounds 2] [--prm value-head]

Needs a finished workflow run of the config (the embedded model in results/models and,
for a value-head PRM, its head in results/prms). Plain sampling draws `budget` samples
per problem in one `generate` call; REBASE searches the same problems with width
`budget` (one generate call per depth over all problems, one PRM call per depth).
Rounds alternate the order and reset the prefix cache before each run. Prints, for
REBASE, tokens/s over its whole wall time (generation + PRM scoring + bookkeeping) and
over its generation time alone, and the ratios to sampling (goal: whole >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import yaml


class Timed:
    """A Generator that keeps the time and tokens spent inside `expand`."""

    def __init__(self, inner):
        self.inner, self.seconds, self.tokens = inner, 0.0, 0

    def expand(self, contexts, counts, max_tokens):
        t = time.perf_counter()
        out = self.inner.expand(contexts, counts, max_tokens)
        self.seconds += time.perf_counter() - t
        self.tokens += sum(s.tokens for steps in out for s in steps)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--problems", type=int, default=32)
    ap.add_argument("--budget", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--prm", default=None, help="a key of the config's prms (default: the first)")
    ap.add_argument("--temperature", type=float, default=0.2, help="REBASE softmax temperature")
    ap.add_argument("--block-size", type=int, help="KV cache block size (default: the search stage's)")
    a = ap.parse_args()

    from pipeline import datasets, generate, models, plan, prompts, score, search

    config = yaml.safe_load(Path(a.config).read_text())
    dataset, dcfg = next(iter(config["datasets"].items()))
    model, mcfg = next(iter(config["models"].items()))
    cache = plan.find(plan.caches(config), dataset=dataset, model=model, kind="sampled")
    problems = datasets.load_problems(dataset, {**dcfg, "limit": a.problems})
    model_dir = models.model_dir_of(f"results/models/{model}/info.json")
    prm_name = a.prm or next(iter(config["prms"]))
    spec = config["prms"][prm_name]
    head = f"results/prms/{model}/{prm_name}" if spec["format"] == "value-head" else None
    prm = score.open_prm(spec, policy_dir=model_dir, head_dir=head)

    engine_args = search.engine_args(cache.engine_args)
    if a.block_size:
        engine_args["block_size"] = a.block_size
    print(f"engine args: {engine_args}")
    llm = generate.make_engine(model_dir, seed=0, engine_args=engine_args)
    stop = cache.prompt.get("stop", [])
    texts = [prompts.render(cache.prompt, q) for q in problems["question"]]
    questions = problems["question"].to_list()
    sampling = {**cache.sampling}
    llm.generate(texts[:4], generate.sampling_params(sampling, n=2, stop=stop))  # warm-up

    def sample() -> tuple[int, float]:
        df = generate.sample(llm, problems, prompt=cache.prompt, sampling=sampling, sample_range=(0, a.budget))
        return int(df["output_tokens"].sum()), 0.0

    def rebase() -> tuple[int, float]:
        gen = Timed(search.VLLMGenerator(llm, temperature=sampling["temperature"], top_p=sampling["top_p"],
                                         stop=stop))
        s = search.Searcher(gen, prm, questions, texts, stop=stop,
                            limits=search.Limits(max_tokens=sampling["max_tokens"]),
                            batch_size=spec.get("batch_size", 8))
        trees = search.rebase(s, a.budget, temperature=a.temperature)
        assert gen.tokens == sum(t.output_tokens for t in trees)
        return gen.tokens, gen.seconds

    totals = {"sampling": [0, 0.0, 0.0], "rebase": [0, 0.0, 0.0]}
    for r in range(a.rounds):
        order = (("sampling", sample), ("rebase", rebase)) if r % 2 == 0 else (("rebase", rebase), ("sampling", sample))
        for name, fn in order:
            llm.reset_prefix_cache()
            t = time.perf_counter()
            tokens, gen_s = fn()
            dt = time.perf_counter() - t
            totals[name][0] += tokens
            totals[name][1] += dt
            totals[name][2] += gen_s or dt
            print(f"round {r} {name:8s}: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s"
                  + (f" (generation alone {gen_s:.1f} s = {tokens / gen_s:.1f} tokens/s)" if gen_s else ""),
                  flush=True)
    s_tps = totals["sampling"][0] / totals["sampling"][1]
    r_tps = totals["rebase"][0] / totals["rebase"][1]
    r_gen = totals["rebase"][0] / totals["rebase"][2]
    print(f"sampling: {s_tps:.1f} tokens/s")
    print(f"rebase (width {a.budget}, PRM {prm_name}): {r_tps:.1f} tokens/s whole, {r_gen:.1f} tokens/s generation alone")
    print(f"ratio rebase/sampling: {r_tps / s_tps:.3f} whole, {r_gen / s_tps:.3f} generation alone")


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
