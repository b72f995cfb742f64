"""The PRM interface and the machinery every adapter shares.

An adapter turns each sample into one token sequence plus the token positions where
its steps are scored (`Encoded`); `HFPRM.score` computes the model's output for every
token of every sequence and the adapter's `read` takes the step scores from it. Two
paths compute that output, with the same scores up to float rounding:

* prefix reuse (`pipeline/prm/prefix.py`): the sequences go into a radix tree of token
  ids and every distinct token prefix is computed once, each new segment on top of the
  KV cache of the segments before it, batched by length. The N samples of a problem
  read their shared question once. `PRM.session()` keeps the tree across calls, so a
  tree search scores each child from its parent's cached path;
* plain (`reuse_prefix=False`, and adapters whose model cannot take a KV cache): ONE
  forward pass per sample, samples sorted by length (longest first, so running out of
  memory shows at once), cut into batches, right-padded with an attention mask (causal
  models: padding after the last real token changes nothing before it).

`HFPRM.score` takes, by default (`reuse_prefix="auto"`), the path whose plan costs less
(`pipeline/prm/batching.py`: both are planned before anything runs), and records what
it did in `last_call` (path, forward passes, tokens computed, budget, both estimates),
which the score stage logs and keeps in its timing record. Batches follow
`batching.plan_memory`: `batch_size` samples per pass on a CPU, a token budget from the
free memory and the model's KV size on CUDA (or an explicit `token_budget`).

The tokens a PRM reports per sample are the tokens of the sequence it scored, whether
or not a cached prefix spared computing some of them: the same count for both paths,
and the convention of the `full` FLOPs (no credit for prefix sharing, as for prompts).
Scores must be finite: a NaN/inf is an error, never a zero.

torch and transformers are imported inside functions, so importing this module is free.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.progress import progress
from pipeline.prm import batching
from pipeline.prm import positions as pos_mod
from pipeline.prm import prefix as prefix_mod


class PRM(abc.ABC):
    """A process reward model: one score per step, read from one pass over each sample.

    name            the model (hub id, directory or head directory)
    format          the registry key it was loaded under
    num_parameters  parameters that read every token (for FLOPs accounting)
    """

    name: str
    format: str
    num_parameters: int

    @abc.abstractmethod
    def score(
        self,
        questions: list[str],
        texts: list[str],
        step_ends: list[list[int]],
        *,
        batch_size: int = 8,
    ) -> tuple[list[list[float]], list[int]]:
        """Per-sample per-step scores (step order) and the tokens read per sample."""

    def session(self, *, max_bytes: int | None = None) -> "PRM":
        """An object with this PRM's `score` that may keep what it read for later calls
        (a tree search scores children after their parents), holding at most `max_bytes`
        of KV cache (None: pipeline/prm/batching.py's default for the device); the PRM
        itself when it keeps nothing."""
        return self

    @classmethod
    def open(cls, model: str | None, **options: Any) -> "PRM":
        """What `pipeline.prm.load` calls: build the PRM from a model name and options."""
        return cls(model, **options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(format={self.format!r}, name={self.name!r})"


@dataclass
class Encoded:
    """One sample as the model reads it: token ids and the position of every step."""

    input_ids: list[int]
    positions: list[int]
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return str(device)


def resolve_dtype(dtype: Any, device: str) -> Any:
    """bfloat16 on CUDA, float32 elsewhere, unless `dtype` (a torch dtype or its name) says."""
    import torch

    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if isinstance(dtype, str):
        value = getattr(torch, dtype, None)
        if not isinstance(value, torch.dtype):
            raise ValueError(f"unknown dtype {dtype!r}")
        return value
    return dtype


def load_tokenizer(path: str, *, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """A fast tokenizer (offset mappings need one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"{path}: PRM scoring needs a fast tokenizer (offset mappings); got {type(tok).__name__}")
    return tok


def load_model(
    path: str,
    default_auto: str,
    *,
    device: str,
    dtype: Any,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The class named in the config's `architectures` when transformers has it
    (e.g. LlamaForTokenClassification, MistralForCausalLM), else `default_auto`
    (e.g. AutoModel with remote code for Qwen2ForProcessRewardModel)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    archs = getattr(config, "architectures", None) or []
    cls = getattr(transformers, archs[0], None) if archs else None
    if cls is None or not hasattr(cls, "from_pretrained"):
        cls = getattr(transformers, default_auto)
    model = cls.from_pretrained(path, dtype=dtype, revision=revision, trust_remote_code=trust_remote_code)
    model.to(device)
    model.eval()
    return model


def count_parameters(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id", "unk_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def last_hidden_state(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The final (normed) hidden states [batch, seq, hidden], without computing vocab
    logits: runs the model body (`model.base_model`) when the model has one."""
    body = getattr(model, "base_model", model)
    if body is not model:
        out = body(input_ids=input_ids, attention_mask=attention_mask)
        hidden = getattr(out, "last_hidden_state", None)
        return hidden if hidden is not None else out[0]
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1]


def split_body(model: Any, head: Callable[[Any], Any] | None = None) -> tuple[Any, Callable[[Any], Any]] | None:
    """(body, head) for `HFPRM.split_forward`: the model body (`model.base_model`) and
    `head` (default: the hidden states themselves); None for a model without a body."""
    body = getattr(model, "base_model", model)
    if body is model:
        return None
    return body, head or _identity


def first_layers(model: Any, layers: int) -> Any:
    """A causal LM that runs only the first `layers` decoder blocks of `model` and returns
    their output unnormed: its `base_model(...).last_hidden_state` is the full model's
    `hidden_states[layers]`. Shares every weight with `model` (which stays whole); `layers`
    equal to the model's depth returns `model` itself. Costs layers/depth of a pass.

    Needs a body (`model.base_model`) with a `layers` list and a final `norm` (Llama,
    Mistral, Qwen2 and most decoders in transformers)."""
    import copy

    import torch

    body = getattr(model, "base_model", model)
    blocks = getattr(body, "layers", None)
    if body is model or blocks is None or not hasattr(body, "norm"):
        raise ValueError(f"layer {layers}: {type(model).__name__} has no decoder layers to cut")
    depth = len(blocks)
    if not 1 <= int(layers) <= depth:
        raise ValueError(f"layer {layers}: the policy has {depth} decoder layers (1..{depth})")
    k = int(layers)
    if k == depth:
        return model
    config = copy.deepcopy(body.config)
    config.num_hidden_layers = k  # the body loops over this many; caches size by it
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:k]
    cut = copy.copy(body)
    cut._modules = dict(body._modules)  # its own module table: the original keeps all layers
    cut.layers = torch.nn.ModuleList(list(blocks)[:k])
    cut.norm = torch.nn.Identity()
    cut.config = config
    outer = copy.copy(model)
    outer._modules = {name: cut if module is body else module for name, module in model._modules.items()}
    if getattr(outer, "base_model", None) is not cut:
        raise ValueError(f"layer {layers}: cannot find the body of {type(model).__name__} among its modules")
    return outer


def kv_bytes_per_token(body: Any) -> int:
    """Bytes of KV cache per token of a decoder (layers x keys and values x KV heads x
    head size x element size), from its config; an estimate for budgets."""
    config = body.config.get_text_config(decoder=True) if hasattr(body.config, "get_text_config") else body.config
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or int(getattr(config, "hidden_size", 64)) // heads)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    size = next(body.parameters()).element_size()
    return layers * 2 * kv_heads * head_dim * size


def _identity(x: Any) -> Any:
    return x


def head_logits(model: Any, input_ids: Any, attention_mask: Any) -> Any:
    """The per-position logits of a token-classification-like model."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    logits = getattr(out, "logits", None)
    if logits is None:
        logits = out[0] if isinstance(out, (tuple, list)) else out
    return logits


def check_inputs(prm: PRM, questions: Sequence[str], texts: Sequence[str], step_ends: Sequence[Sequence[int]], batch_size: int) -> None:
    if not (len(questions) == len(texts) == len(step_ends)):
        raise ValueError(
            f"{prm.format} PRM {prm.name}: questions, texts and step_ends differ in length "
            f"({len(questions)}, {len(texts)}, {len(step_ends)})"
        )
    if int(batch_size) < 1:
        raise ValueError(f"{prm.format} PRM {prm.name}: batch_size must be >= 1, got {batch_size}")
    for i, (text, ends) in enumerate(zip(texts, step_ends)):
        problem = pos_mod.validate_step_ends(text, list(ends))
        if problem:
            raise ValueError(f"{prm.format} PRM {prm.name}: sample {i} {problem}")


def run_batches(
    items: Sequence[Encoded],
    budget: batching.Budget | int,
    pad: int,
    device: str,
    fn: Callable[[Any, Any, list[Encoded]], list[Any]],
) -> list[Any]:
    """Call `fn(input_ids, attention_mask, rows)` once per batch of length-sorted,
    right-padded samples (`batching.plain_batches` within `budget`, a Budget or a batch
    size); returns fn's per-row results in the original order."""
    import torch

    if isinstance(budget, int):
        budget = batching.count_budget(budget)
    results: list[Any] = [None] * len(items)
    batches = batching.plain_batches([len(item.input_ids) for item in items], budget)
    for idx in progress(batches, desc="PRM forward passes", total=len(batches), unit="batch"):
        rows = [items[i] for i in idx]
        width = max(len(r.input_ids) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row.input_ids)] = torch.tensor(row.input_ids, dtype=torch.long)
            mask[r, :len(row.input_ids)] = 1
        with torch.inference_mode():
            out = fn(ids.to(device), mask.to(device), rows)
        for i, value in zip(idx, out):
            results[i] = value
    return results


def check_finite(prm: PRM, scores: list[list[float]]) -> None:
    for i, row in enumerate(scores):
        for k, value in enumerate(row):
            if not math.isfinite(value):
                raise ValueError(f"{prm.format} PRM {prm.name}: non-finite score {value} at sample {i}, step {k}")


class HFPRM(PRM):
    """A PRM backed by a Hugging Face model: subclasses provide `encode` and `read`,
    and `forward` (plain path) or `split_forward` (prefix reuse) or both."""

    model: Any
    tokenizer: Any
    device: str

    def encode(self, index: int, question: str, text: str, step_ends: list[int]) -> Encoded:
        raise NotImplementedError

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        """One batched forward pass; what `read` gets."""
        raise NotImplementedError

    def split_forward(self) -> tuple[Any, Callable[[Any], Any]] | None:
        """(body, head): the model body that takes a KV cache (returns the last hidden
        state) and the function of its hidden states that `forward` returns; None when
        the model cannot reuse prefixes (then every call takes the plain path)."""
        return None

    def read(self, out: Any, row: int, item: Encoded) -> Any:
        """The step scores of batch row `row` (a 1-D tensor or list of floats)."""
        raise NotImplementedError

    def error(self, index: int, problem: str) -> ValueError:
        return ValueError(f"{self.format} PRM {self.name}: sample {index} {problem}")

    def encode_all(self, questions, texts, step_ends, batch_size) -> list[Encoded]:
        check_inputs(self, questions, texts, step_ends, batch_size)
        items = []
        for i, (q, t, e) in enumerate(zip(questions, texts, step_ends)):
            item = self.encode(i, q, t, [int(x) for x in e])
            if len(item.positions) != len(e):
                raise self.error(i, f"produced {len(item.positions)} score positions for {len(e)} steps")
            items.append(item)
        return items

    def prefix_tree(self, *, keep: bool = False, max_bytes: int | None = None) -> prefix_mod.PrefixTree | None:
        """A radix tree over this PRM's model (pipeline/prm/prefix.py), or None when
        the model cannot reuse prefixes."""
        parts = self.split_forward()
        if parts is None:
            return None
        body, head = parts

        def run(input_ids, attention_mask, position_ids, past):
            from transformers import DynamicCache

            # plain full-length layers (no config): a sliding-window layer would crop
            # the cache; the model's masks apply any window, on distances that left
            # padding of the past leaves unchanged
            cache = DynamicCache(ddp_cache_data=past)
            out = body(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=True)
            return out.last_hidden_state, out.past_key_values

        return prefix_mod.PrefixTree(run, head, pad=pad_id(self.tokenizer), device=self.device, keep=keep,
                                     kv_bytes_per_token=kv_bytes_per_token(body), max_bytes=max_bytes)

    def run(self, items: Sequence[Encoded], batch_size: int, fn: Callable[[Any, int, Encoded], Any], *,
            tree: prefix_mod.PrefixTree | None = None, reuse_prefix: bool | str = "auto",
            token_budget: int | None = None) -> list[Any]:
        """`fn(output, row, item)` for every item, in the original order, the output
        computed through `tree` (a session's), or by the path `reuse_prefix` names:
        True prefix reuse on a fresh tree, False the plain path, "auto" the one
        `batching.choose` prefers; a model that cannot reuse prefixes takes the plain
        path. Batches: `batching.plan_memory` (`token_budget` overrides). What it did
        goes to `self.last_call`."""
        seqs = [item.input_ids for item in items]
        chosen = ("auto" if reuse_prefix == "auto" else "forced") if tree is None else \
            "session" if tree.keep else "forced"
        if tree is None and reuse_prefix:
            tree = self.prefix_tree()
        budget, kv_limit = batching.plan_memory(
            self.device, self.model, batch_size=int(batch_size), tokens=token_budget,
            max_bytes=tree.max_bytes if tree is not None else None,
            cached_bytes=tree.cached * tree.kv_bytes if tree is not None else 0)
        estimates = {}
        if tree is not None and chosen == "auto":
            estimates = {batching.PLAIN: batching.plain_plan([len(s) for s in seqs], budget),
                         batching.REUSE: tree.estimate(seqs, budget, kv_limit)}
            if batching.choose(estimates[batching.PLAIN], estimates[batching.REUSE]) == batching.PLAIN:
                tree = None
        stats = {"path": batching.PLAIN if tree is None else batching.REUSE, "chosen": chosen,
                 "tokens": int(sum(len(s) for s in seqs)), **budget.describe(),
                 "estimated_cost": {k: v["cost"] for k, v in estimates.items()}}
        if tree is None:
            def step(input_ids, attention_mask, rows):
                out = self.forward(input_ids, attention_mask)
                return [fn(out, r, item) for r, item in enumerate(rows)]

            out = run_batches(items, budget, pad_id(self.tokenizer), self.device, step)
            plain = batching.plain_plan([len(s) for s in seqs], budget)
            stats.update(forward_passes=plain["forward_passes"], computed_tokens=plain["computed_tokens"])
        else:
            before = (tree.forward_passes, tree.computed_tokens)
            tree.peak_cached = tree.cached
            out = tree.run(seqs, budget, lambda o, i: fn(o[None], 0, items[i]), max_bytes=kv_limit)
            stats.update(forward_passes=tree.forward_passes - before[0], computed_tokens=tree.computed_tokens - before[1],
                         kv_limit_bytes=int(kv_limit), peak_kv_bytes=int(tree.peak_cached * tree.kv_bytes))
        self.last_call = stats
        return out

    def score(self, questions, texts, step_ends, *, batch_size: int = 8, reuse_prefix: bool | str = "auto",
              tree: prefix_mod.PrefixTree | None = None, token_budget: int | None = None):
        """Per-step scores and tokens per sample (see PRM.score). `reuse_prefix`: "auto"
        (the cheaper plan), True (prefix reuse) or False (the plain path: one forward
        pass per sample); `tree` a session's tree; `token_budget` padded new tokens per
        forward pass instead of the device's default (see `run`)."""
        items = self.encode_all(questions, texts, step_ends, batch_size)

        def read(out, r, item):
            return [float(v) for v in _tolist(self.read(out, r, item))]

        scores = self.run(items, batch_size, read, tree=tree, reuse_prefix=reuse_prefix, token_budget=token_budget)
        check_finite(self, scores)
        return scores, [len(item.input_ids) for item in items]

    def session(self, *, max_bytes: int | None = None) -> PRM:
        tree = self.prefix_tree(keep=True, max_bytes=max_bytes)
        return self if tree is None else Session(self, tree)


class Session(PRM):
    """`score` of an HFPRM that keeps the KV cache of what it read (least recently used
    evicted beyond `max_bytes` of it): a text whose token prefix was read
    before computes only the tokens after it. Scores and tokens as the PRM's own."""

    def __init__(self, prm: HFPRM, tree: prefix_mod.PrefixTree) -> None:
        self.prm, self.tree = prm, tree
        self.name, self.format, self.num_parameters = prm.name, prm.format, prm.num_parameters

    def score(self, questions, texts, step_ends, *, batch_size: int = 8, token_budget: int | None = None):
        return self.prm.score(questions, texts, step_ends, batch_size=batch_size, tree=self.tree,
                              token_budget=token_budget)

    @property
    def last_call(self) -> dict[str, Any] | None:
        return getattr(self.prm, "last_call", None)


def _tolist(value: Any) -> list[float]:
    if hasattr(value, "detach"):
        return value.detach().float().cpu().tolist()
    return list(value)
