"""REBASE vs plain sampling: policy tokens per second, side by side, one engine.

    python benchmarks/search_throughput.py [--config config/config.yaml] [--problems 32]
        [--budget 8] [--rounds 2] [--prm value-head] [--dtype float32] [--plain-prm]

Needs a finished workflow run of the config (the embedded model in results/models and,
for a value-head PRM, its head in results/prms). Plain sampling draws `budget` samples
per problem in one `generate` call; REBASE searches the same problems with width
`budget` (one generate call per depth over all problems, one PRM call per depth).
Rounds alternate the order and reset the prefix cache before each run. Prints, for
REBASE, tokens/s over its whole wall time (generation + PRM scoring + bookkeeping), over
its generation time alone, and the PRM's share, and the ratios to sampling (goal: whole
>= 0.5). REBASE scores each child from its parent's cached path (a PRM session,
pipeline/prm/prefix.py); `--plain-prm` adds a third run whose PRM scores every child's
whole path from scratch (the path before prefix reuse), for comparison. `--dtype`
overrides the PRM's dtype option. Also prints the load average (the machine may be
shared) and the torch threads the PRM runs with once vLLM has started (in-process vLLM
sets them for the whole process).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml


class PlainPRM:
    """The PRM without prefix reuse: every call scores each whole text from scratch."""

    def __init__(self, prm):
        self.prm, self.name, self.num_parameters = prm, prm.name, prm.num_parameters

    def score(self, questions, texts, step_ends, *, batch_size=8):
        return self.prm.score(questions, texts, step_ends, batch_size=batch_size, reuse_prefix=False)


class TimedPRM:
    """A PRM (or session) that keeps the time spent inside `score`."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0
        self.name, self.num_parameters = inner.name, inner.num_parameters

    def score(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.inner.score(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        return out


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
    ap.add_argument("--prm-batch-size", type=int, help="PRM batch size (default: the PRM's batch_size, else 32 "
                                                       "as in the workflow)")
    ap.add_argument("--plain-prm", action="store_true", help="also run REBASE with the PRM's plain path")
    ap.add_argument("--dtype", help="override the PRM's dtype option (bfloat16, float32)")
    a = ap.parse_args()

    import torch

    from pipeline import generate, search
    from pipeline.core import prompts
    from pipeline.engine import models, vllm_engine
    from pipeline.prm import loading
    from pipeline.tasks import datasets
    from pipeline.treesearch import tree
    from pipeline.workflow import plan

    config = yaml.safe_load(Path(a.config).read_text())
    dataset, dcfg = next(iter(config["datasets"].items()))
    model, mcfg = next(iter(config["models"].items()))
    cache = plan.find(plan.caches(config), dataset=dataset, model=model, kind="sampled")
    problems = datasets.load_problems(dataset, {**dcfg, "limit": a.problems})
    model_dir = models.model_dir_of(f"results/models/{model}/info.json")
    prm_name = a.prm or next(iter(config["prms"]))
    spec = config["prms"][prm_name]
    if a.dtype:
        spec = {**spec, "options": {**spec.get("options", {}), "dtype": a.dtype}}
    head = f"results/prms/{model}/{prm_name}" if spec["format"] == "value-head" else None
    prm = loading.open_prm(spec, policy_dir=model_dir, head_dir=head)

    engine_args = vllm_engine.engine_args(cache.engine_args)
    if a.block_size:
        engine_args["block_size"] = a.block_size
    print(f"engine args: {engine_args}")
    llm = vllm_engine.make_engine(model_dir, seed=0, engine_args=engine_args)
    stop = cache.prompt.get("stop", [])
    texts = [prompts.render(cache.prompt, q) for q in problems["question"]]
    questions = problems["question"].to_list()
    sampling = {**cache.sampling}
    llm.generate(texts[:4], vllm_engine.sampling_params(sampling, n=2, stop=stop))  # warm-up
    print(f"PRM {prm_name}, dtype {next(prm.model.parameters()).dtype}, {torch.get_num_threads()} torch threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)

    def sample() -> tuple[int, float, float]:
        df = generate.sample(llm, problems, prompt=cache.prompt, sampling=sampling, sample_range=(0, a.budget))
        return int(df["output_tokens"].sum()), 0.0, 0.0

    def rebase(plain: bool = False) -> tuple[int, float, float]:
        gen = Timed(search.VLLMGenerator(llm, temperature=sampling["temperature"], top_p=sampling["top_p"],
                                         stop=stop))
        scorer = TimedPRM(PlainPRM(prm) if plain else prm.session())
        s = tree.Searcher(gen, scorer, questions, texts, stop=stop,
                          limits=tree.Limits(max_tokens=sampling["max_tokens"]),
                          batch_size=a.prm_batch_size or spec.get("batch_size", 32))
        trees = tree.rebase(s, a.budget, temperature=a.temperature)
        assert gen.tokens == sum(t.output_tokens for t in trees)
        return gen.tokens, gen.seconds, scorer.seconds

    runs = [("sampling", sample), ("rebase", rebase)]
    if a.plain_prm:
        runs.append(("rebase-plain-prm", lambda: rebase(plain=True)))
    totals = {name: [0, 0.0, 0.0, 0.0] for name, _ in runs}
    for r in range(a.rounds):
        for name, fn in (runs if r % 2 == 0 else runs[::-1]):
            llm.reset_prefix_cache()
            t = time.perf_counter()
            tokens, gen_s, prm_s = fn()
            dt = time.perf_counter() - t
            for k, v in enumerate((tokens, dt, gen_s or dt, prm_s)):
                totals[name][k] += v
            print(f"round {r} {name:16s}: {tokens} tokens in {dt:.1f} s = {tokens / dt:.1f} tokens/s"
                  + (f" (generation {gen_s:.1f} s, PRM {prm_s:.1f} s)" if gen_s else ""), flush=True)
    s_tps = totals["sampling"][0] / totals["sampling"][1]
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"sampling: {s_tps:.1f} tokens/s")
    for name, _ in runs[1:]:
        tokens, whole, gen, prm_s = totals[name]
        print(f"{name} (width {a.budget}, PRM {prm_name}): {tokens / whole:.1f} tokens/s whole, "
              f"{tokens / gen:.1f} tokens/s generation alone, PRM {prm_s / whole:.0%} of the time")
        ratio = tokens / whole / s_tps
        print(f"ratio {name}/sampling: {ratio:.3f} whole (goal >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'}), "
              f"{tokens / gen / s_tps:.3f} generation alone")


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
