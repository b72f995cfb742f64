"""PRM scoring with prefix reuse vs the plain path, side by side on the same cached samples.

    python benchmarks/prm_scoring.py [--config config/config.yaml] [--prm value-head]
        [--shards 1] [--samples 512] [--batch-size 32] [--rounds 2] [--dtype bfloat16]
        [--threads N] [--reference-dtype float32]

Needs a finished workflow run of the config (the embedded model in results/models, the
sampled cache in results/samples and, for a value-head PRM, its head in results/prms).
Scores the first `--samples` samples (with steps) of the first `--shards` sample shards
of the config's first dataset and model (one shard: what one score job reads; two
shards of the embedded default: 16 samples per problem) with the PRM (a key of the
config's prms, or `logprob`) twice per round: the plain path (`reuse_prefix=False`: one
padded forward pass per sample, samples sorted by length, the path of the score stage
before prefix reuse) and prefix reuse (pipeline/prm/prefix.py: a radix tree of token
ids, each distinct token prefix computed once on the KV cache of the prefix before it).
Rounds alternate the order. Prints, for each path, tokens/s and their ratio (goal:
>= 2), and the largest absolute difference between the two paths' step scores against
the issue's tolerance for the dtype (1e-3 in bfloat16, 1e-5 in float32), next to the
plain path's difference from itself when each of the first `--floor-samples` samples
is scored alone (batch size 1): the float rounding that batching alone causes, the
floor under any change of computation order. `--reference-dtype float32` also scores
those samples alone in float32 and prints how far each path's scores lie from them
(what the dtype itself costs). Also prints the torch threads and the load average
and the ratio of tokens per CPU second of this process (the machine may be shared: on
2 busy cores 2 threads per process spend most of their time waiting for each other, and
wall time follows the other jobs; with `--threads 1` CPU time measures the computation).

Also prints which path the score stage's default (`reuse_prefix="auto"`) takes on these
samples, and both plans (pipeline/prm/batching.py).

Tokens: the tokens of the sequence each sample is scored on (the PRM's `prm_tokens`:
the PRM's prompt plus the solution up to its last step end), the same count for both
paths; prefix reuse computes fewer of them, which is the point (also printed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--prm", default=None, help="a key of the config's prms (default: the first)")
    ap.add_argument("--shards", type=int, default=1, help="sample shards pooled (default: one, as a score job)")
    ap.add_argument("--samples", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32, help="samples (segments) per forward pass, both paths")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default=None, help="override the PRM's dtype option (bfloat16, float32)")
    ap.add_argument("--floor-samples", type=int, default=64, help="samples scored alone for the rounding floor")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    ap.add_argument("--reference-dtype", help="also score the floor samples alone in this dtype (e.g. float32)")
    a = ap.parse_args()

    import os

    import polars as pl
    import torch

    from pipeline.engine import models
    from pipeline.prm import loading
    from pipeline.workflow import plan

    if a.threads:
        torch.set_num_threads(a.threads)

    config = yaml.safe_load(Path(a.config).read_text())
    dataset = next(iter(config["datasets"]))
    model = next(iter(config["models"]))
    cache = plan.find(plan.caches(config), dataset=dataset, model=model, kind="sampled")
    folder = Path("results/samples") / dataset / model / cache.key
    shards = [str(folder / f"{s}.parquet") for s in cache.shards if (folder / f"{s}.parquet").is_file()]
    if not shards:
        raise SystemExit(f"no sample shards of {dataset}/{model} under results/samples: run the workflow first")
    shards = shards[:a.shards]
    samples = (pl.concat([pl.read_parquet(f) for f in shards]).filter(pl.col("step_ends").list.len() > 0)
               .sort("problem_id", "sample_idx").head(a.samples))
    problems = pl.read_parquet(f"results/problems/{dataset}.parquet")
    questions = dict(zip(problems["problem_id"], problems["question"]))
    prm_name = a.prm or next(iter(config["prms"]))
    spec = config["prms"].get(prm_name) or {"format": prm_name, "options": {"dtype": "bfloat16"}}
    if a.dtype:
        spec = {**spec, "options": {**spec.get("options", {}), "dtype": a.dtype}}
    head = f"results/prms/{model}/{prm_name}" if spec["format"] == "value-head" else None
    prm = loading.open_prm(spec, policy_dir=models.model_dir_of(f"results/models/{model}/info.json"), head_dir=head)
    args = ([questions[p] for p in samples["problem_id"]], samples["text"].to_list(),
            [list(e) for e in samples["step_ends"]])
    dtype = next(prm.model.parameters()).dtype
    print(f"{prm_name} ({spec['format']}, dtype {dtype}) on {samples.height} samples "
          f"of {samples['problem_id'].n_unique()} problems ({', '.join(shards)}), batch size {a.batch_size}, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.1f}")

    from pipeline.prm import batching

    seqs = [item.input_ids for item in prm.encode_all(*args, a.batch_size)]
    budget, kv_limit = batching.plan_memory(prm.device, prm.model, batch_size=a.batch_size)
    plans = {batching.PLAIN: batching.plain_plan([len(s) for s in seqs], budget),
             batching.REUSE: prm.prefix_tree().estimate(seqs, budget, kv_limit)}
    print(f"the score stage's default (auto) takes: {batching.choose(*plans.values())}; plans "
          + "; ".join(f"{k}: {v['forward_passes']} passes, {v['computed_tokens']} tokens, cost {v['cost']}"
                      for k, v in plans.items()))

    warm = tuple(x[:8] for x in args)
    prm.score(*warm, batch_size=a.batch_size, reuse_prefix=False)
    prm.score(*warm, batch_size=a.batch_size)

    def plain():
        return prm.score(*args, batch_size=a.batch_size, reuse_prefix=False), None

    def reuse():
        tree = prm.prefix_tree()
        return prm.score(*args, batch_size=a.batch_size, tree=tree), tree.computed_tokens

    totals = {"plain": [0, 0.0, 0.0], "reuse": [0, 0.0, 0.0]}  # tokens, wall s, CPU s
    got: dict[str, list] = {}
    runs: dict[str, list] = {"plain": [], "reuse": []}
    computed = 0
    for r in range(a.rounds):
        order = (("plain", plain), ("reuse", reuse)) if r % 2 == 0 else (("reuse", reuse), ("plain", plain))
        for name, fn in order:
            t, c = time.perf_counter(), time.process_time()
            (scores, tokens), done = fn()
            dt, dc = time.perf_counter() - t, time.process_time() - c
            n = sum(tokens)
            totals[name][0] += n
            totals[name][1] += dt
            totals[name][2] += dc
            got[name] = scores
            runs[name].append(scores)
            computed = done if done is not None else computed
            print(f"round {r} {name:5s}: {n} tokens in {dt:.1f} s = {n / dt:.0f} tokens/s "
                  f"({dc:.1f} s of CPU time)", flush=True)

    def max_diff(a, b):
        return max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))

    diff = max_diff(got["plain"], got["reuse"])
    k = min(a.floor_samples, samples.height)
    alone = prm.score(*(x[:k] for x in args), batch_size=1, reuse_prefix=False)[0]
    plain_tps = totals["plain"][0] / totals["plain"][1]
    reuse_tps = totals["reuse"][0] / totals["reuse"][1]
    scored = totals["plain"][0] // a.rounds
    ratio = reuse_tps / plain_tps
    cpu_ratio = (totals["plain"][2] / totals["plain"][0]) / (totals["reuse"][2] / totals["reuse"][0])
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-3}.get(dtype)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    print(f"plain path:   {plain_tps:.0f} tokens/s")
    print(f"prefix reuse: {reuse_tps:.0f} tokens/s (computes {computed} of the {scored} tokens, "
          f"{computed / scored:.2f})")
    print(f"ratio prefix reuse / plain: {ratio:.2f} (goal >= 2: {'met' if ratio >= 2 else 'NOT met'}); "
          f"per CPU second {cpu_ratio:.2f}")
    print(f"max abs score difference, prefix reuse vs plain ({dtype}): {diff:.2e}"
          + (f" (goal <= {tol:.0e}: {'met' if diff <= tol else 'NOT met'})" if tol else ""))
    print("each path against itself across rounds (same batches): max abs difference "
          + ", ".join(f"{name} {max(max_diff(x, runs[name][0]) for x in runs[name]):.1e}" for name in runs))
    print(f"max abs score difference, plain batch {a.batch_size} vs plain alone (first {k} samples): "
          f"{max_diff(got['plain'][:k], alone):.2e} (prefix reuse vs plain alone: {max_diff(got['reuse'][:k], alone):.2e})")
    if a.reference_dtype:
        del prm
        ref_spec = {**spec, "options": {**spec.get("options", {}), "dtype": a.reference_dtype}}
        ref = loading.open_prm(ref_spec, policy_dir=models.model_dir_of(f"results/models/{model}/info.json"), head_dir=head)
        exact = ref.score(*(x[:k] for x in args), batch_size=1, reuse_prefix=False)[0]
        print(f"max abs score difference from {a.reference_dtype} alone (first {k} samples): plain "
              f"{max_diff(got['plain'][:k], exact):.2e}, prefix reuse {max_diff(got['reuse'][:k], exact):.2e}, "
              f"{dtype} alone {max_diff(alone, exact):.2e}")


if __name__ == "__main__":
    main()
