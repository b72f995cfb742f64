"""GPU memory of a config's PRM entry: which model it loads and what that takes on a GPU.

`model_of` names the weights a `prms:` entry loads (its `model`, the format's default
model, or the policy itself for value-head and logprob); `need` sizes them on one GPU:
the weights in the entry's dtype (pipeline.prm.precision), `HF_OVERHEAD` (CUDA context,
allocator slack) and the working memory pipeline/prm/batching.py's CUDA budgets take
from the free memory: `batching.gpu_reserve`, the free memory at which a forward pass
takes at least one whole sequence of the policy's `max_model_len` tokens, of which the
prefix tree's KV cache gets `batching.KV_SHARE` (shown as "prefix KV cache") and the
rest the forward pass. The PRM's `batch_size` is a CPU setting (samples per pass) and
plays no part on CUDA. `working_set` is the same reserve for a loaded PRM (a search job
keeps it free when the PRM shares GPU 0 with the policy engine and no plan gave the
number), the plan's reserve being the same: `need`'s total less the weights.
"""

from __future__ import annotations

from pipeline.engine import memory_plan
from pipeline.prm import batching, precision

POLICY_FORMATS = ("value-head", "logprob")
HF_OVERHEAD = memory_plan.HF_OVERHEAD


def model_of(spec: dict, policy_path: str, policy_revision: str | None = None) -> tuple[str, str | None]:
    """(path, revision) of the weights the entry loads."""
    fmt = spec["format"]
    if fmt in POLICY_FORMATS:
        return policy_path, policy_revision
    if spec.get("model"):
        return spec["model"], (spec.get("options") or {}).get("revision")
    from pipeline.prm import prm_class

    return prm_class(fmt).default_model, (spec.get("options") or {}).get("revision")


def reserve_parts(per_token: int, longest: int) -> tuple[tuple[str, int], ...]:
    """The working memory beside the weights, by part (module docstring)."""
    reserve = batching.gpu_reserve(per_token, longest)
    kv = int(batching.KV_SHARE * reserve)
    return (("prefix KV cache", kv), (f"forward pass ({int(longest)} tokens)", reserve - kv))


def need(spec: dict, shape: memory_plan.Shape, *, longest: int, dtype: str | None = None) -> memory_plan.Need:
    """The entry on one GPU in its dtype (or `dtype`): weights, working memory, overhead."""
    dtype = dtype or precision.resolve(spec)
    _, per_token = batching.token_bytes(layers=shape.layers, kv_heads=shape.kv_heads, head_dim=shape.head_dim,
                                        hidden=shape.hidden, intermediate=shape.intermediate,
                                        element_size=memory_plan.dtype_bytes(dtype))
    return memory_plan.Need(f"PRM {shape.name} ({shape.describe()}, {dtype})", (
        ("weights", shape.weights(dtype)), *reserve_parts(per_token, longest), ("overhead", HF_OVERHEAD)))


def working_set(prm, longest: int) -> int:
    """Bytes a loaded PRM takes on its GPU beyond its weights (`need`'s total less the
    weights, the plan's reserve), from the loaded model's own sizes."""
    _, per_token = batching.model_bytes(prm.model)
    return sum(v for _, v in reserve_parts(per_token, longest)) + HF_OVERHEAD
