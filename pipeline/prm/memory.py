"""GPU memory of a config's PRM entry: which model it loads and what that takes on a GPU.

`model_of` names the weights a `prms:` entry loads (its `model`, the format's default
model, or the policy itself for value-head and logprob); `need` sizes them with
pipeline.engine.memory_plan.hf_need in the entry's dtype (pipeline.prm.precision), with
the prefix tree's KV budget (pipeline.prm.prefix.DEFAULT_MAX_BYTES: what a scoring
session keeps) and one forward pass of `batch_size` rows of the longest sequence;
`working_set` is what a loaded PRM still allocates as it scores (a search job keeps it
free when the PRM shares GPU 0 with the policy engine and no plan gave the number).
"""

from __future__ import annotations

from pipeline.engine import memory_plan
from pipeline.prm import precision
from pipeline.prm import prefix as prefix_mod

POLICY_FORMATS = ("value-head", "logprob")


def model_of(spec: dict, policy_path: str, policy_revision: str | None = None) -> tuple[str, str | None]:
    """(path, revision) of the weights the entry loads."""
    fmt = spec["format"]
    if fmt in POLICY_FORMATS:
        return policy_path, policy_revision
    if spec.get("model"):
        return spec["model"], (spec.get("options") or {}).get("revision")
    from pipeline.prm import prm_class

    return prm_class(fmt).default_model, (spec.get("options") or {}).get("revision")


def need(spec: dict, shape: memory_plan.Shape, *, batch_size: int, longest: int,
         dtype: str | None = None) -> memory_plan.Need:
    """The entry on one GPU: weights in its dtype (or `dtype`), the KV budget, a batch."""
    return memory_plan.hf_need(shape, dtype or precision.resolve(spec), tokens_per_pass=int(batch_size) * int(longest),
                               longest=int(longest), kv_budget=prefix_mod.DEFAULT_MAX_BYTES)


def working_set(prm, batch_size: int, longest: int) -> int:
    """Bytes a loaded PRM still allocates on its GPU as it scores (its KV budget, a
    batch's activations, allocator slack): `need` of its own config, less the weights
    already there."""
    model = prm.model
    config = model.config.to_dict() if hasattr(model.config, "to_dict") else dict(model.config)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    shape = memory_plan.shape_from_config(config, name=prm.name, source="the loaded model", params=prm.num_parameters)
    full = memory_plan.hf_need(shape, dtype, tokens_per_pass=int(batch_size) * int(longest), longest=int(longest),
                               kv_budget=prefix_mod.DEFAULT_MAX_BYTES)
    return full.total - dict(full.parts)["weights"]
