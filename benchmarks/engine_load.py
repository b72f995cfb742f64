"""Where a vLLM job's engine start goes: one engine, built as the generate stage builds it.

    python benchmarks/engine_load.py [--model results/models/smollm2-135m/hf]
        [--engine-args '{"enforce_eager": true}'] [--no-freeze]

Needs the model directory (a finished `prepare` of the embedded default). Prints the
seconds spent importing vLLM, importing its `LLM` entry point (lazy in vLLM 0.32),
building the engine (`pipeline.engine.vllm_engine.make_engine`) and, inside that, loading the
weights, the garbage collector's full collections (vLLM runs five while it starts),
allocating the KV cache (`kv_cache_memory_bytes`, zero-filled by vLLM) and any
warm-up/profiling forward pass; the rest is configuration and tokenizer setup. Then
one seeded 32-token generation, whose text it prints (an engine start that changes
nothing computed prints the same text).

`--no-freeze` skips `vllm_engine._freeze_heap` (the start before it). One engine per
process: compare by running both, alternating, e.g.

    for i in 1 2 3; do for f in "" --no-freeze; do python benchmarks/engine_load.py $f; done; done
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

PHASES = {  # vLLM 0.32 functions whose cumulative time is a phase of the start
    "load weights": "load_model",
    "gc.collect": "<built-in method gc.collect>",
    "allocate KV cache": "allocate_kv_cache",
    "warm-up / profile run": "profile_run",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="results/models/smollm2-135m/hf")
    ap.add_argument("--engine-args", default='{"enforce_eager": true}', help="JSON, as a model's engine_args")
    ap.add_argument("--no-freeze", action="store_true", help="skip vllm_engine._freeze_heap (the start before it)")
    a = ap.parse_args()

    t0 = time.perf_counter()
    import vllm  # noqa: F401

    t1 = time.perf_counter()
    from vllm import LLM  # noqa: F401

    t2 = time.perf_counter()
    from pipeline.engine import vllm_engine

    if a.no_freeze:
        vllm_engine._freeze_heap = lambda: None
    profile = cProfile.Profile()
    profile.enable()
    llm = vllm_engine.make_engine(a.model, seed=0, engine_args=json.loads(a.engine_args))
    profile.disable()
    t3 = time.perf_counter()

    stats = pstats.Stats(profile).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    print(f"engine args {a.engine_args}, heap frozen before the start: {not a.no_freeze}")
    print(f"import vllm:             {t1 - t0:6.1f} s")
    print(f"import vllm.LLM:         {t2 - t1:6.1f} s")
    print(f"make_engine:             {t3 - t2:6.1f} s, of which")
    for label, name in PHASES.items():
        # the outermost call of that name (its cumulative time includes the inner ones);
        # gc.collect is a builtin called from several places: the sum
        spent = (sum(v[3] for k, v in stats.items() if k[2] == name) if name.startswith("<")
                 else max((v[3] for k, v in stats.items() if k[2] == name), default=0.0))
        print(f"  {label:22s} {spent:6.1f} s")
    imports = max((v[3] for k, v in stats.items() if k[2] == "_find_and_load"), default=0.0)
    print(f"  {'imports inside':22s} {imports:6.1f} s")
    print(f"total:                   {t3 - t0:6.1f} s")
    from vllm import SamplingParams

    out = llm.generate(["Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:\n"],
                       SamplingParams(temperature=0.7, top_p=0.95, max_tokens=32), use_tqdm=False)
    print(f"seeded generation: {out[0].outputs[0].text!r}")


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
