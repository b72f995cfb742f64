"""How much one PRM forward pass takes, and which path a scoring call takes.

Budgets (`Budget`, made by `plan_memory` at every scoring call):

* CPU (and any device but CUDA): `batch_size` samples per forward pass on the plain path,
  and `batch_size` x the call's longest sequence in padded tokens per pass on the prefix
  reuse path; on 2 cores 32 scored 2-3x faster than 8, and larger batches gain nothing
  there. The KV cache a prefix tree keeps is `DEFAULT_KV_BYTES` unless the caller says.
* CUDA: a TOKEN budget, from the device's free memory and the model's sizes, not a count:
  the KV cache a prefix tree may keep is `KV_SHARE` of the free memory (or the caller's
  `max_bytes`), and `MEMORY_SHARE` of what remains is one forward pass's working memory,
  estimated as (new tokens x `token_bytes`) + (past tokens x 2 x `kv_bytes`) per row
  (`token_bytes`: activations and the KV of a token, `model_bytes`; the past is copied
  into the batch's cache once and concatenated once). Both budgets are rounded down to a
  power of two and capped (`GPU_MAX_TOKENS` new tokens per pass, about where a 7B model
  reaches its best throughput), so a GPU with room to spare always batches the same way
  and the scores (which move with the batch by float rounding) reproduce across runs.

Paths (`choose`, for `reuse_prefix="auto"`, the default of `HFPRM.score`): both plans
are costed before anything runs, each forward pass at `call_cost` (its fixed cost in
tokens: ~32 measured on a 2-core CPU with the embedded model; `GPU_CALL_COST` on CUDA,
where a pass fills the chip only with thousands of tokens) plus its padded new tokens;
prefix reuse is taken when it costs at most `REUSE_MARGIN` of the plain path (its
bookkeeping: on the embedded default it computes 41% of the tokens and scores 2.09x the
plain path's tokens/s, ~1.17x short of the token ratio). A session (tree search) always
reuses: it keeps what it read for the next call.

Pure Python apart from the memory queries (torch imported inside them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_KV_BYTES = 1 << 30  # KV a tree keeps on a CPU: 46k tokens of SmolLM2-135M, 8k of Mistral-7B (bf16)
KV_SHARE = 0.5  # of the free GPU memory: the KV cache a prefix tree may keep (a tree search reads it back)
MEMORY_SHARE = 0.6  # of the free GPU memory left after that: one forward pass's working memory
GPU_MAX_TOKENS = 1 << 15  # padded new tokens per pass on CUDA (a raw 7B forward: 64 x 490 tokens)
GPU_MAX_ROWS = 1024
CPU_CALL_COST = 32  # a forward call's fixed cost in tokens (2-core CPU, SmolLM2-135M: ~26 ms, ~38 tokens)
GPU_CALL_COST = 2048  # on CUDA: a pass of fewer tokens leaves most of the chip idle
REUSE_MARGIN = 0.85
PLAIN, REUSE = "plain", "prefix reuse"


@dataclass(frozen=True)
class Budget:
    """What one forward pass may take. `samples` set (CPU): the plain path takes that
    many samples per pass, prefix reuse that many times the longest sequence of the call
    in padded tokens. `tokens` set (CUDA, or an explicit token budget): at most that
    many padded new tokens per pass, and at most `work_bytes` of estimated working
    memory (None: not checked)."""

    samples: int | None = None
    tokens: int | None = None
    work_bytes: int | None = None
    token_bytes: int = 0  # working memory per new token: activations and its KV
    kv_bytes: int = 0  # KV cache per token
    call_cost: int = CPU_CALL_COST

    def __post_init__(self) -> None:
        if (self.samples is None) == (self.tokens is None):
            raise ValueError("a PRM batch budget has either a sample count or a token budget")
        if (self.samples or self.tokens) < 1:
            raise ValueError(f"a PRM batch budget must be >= 1, got {self.samples or self.tokens}")

    def new_tokens(self, longest: int) -> int:
        """Padded new tokens per forward pass for a call whose longest sequence is `longest`."""
        return self.tokens if self.tokens is not None else self.samples * max(1, longest)

    def fits(self, rows: int, width: int, past: int = 0) -> bool:
        """Whether `rows` rows of `width` new tokens on a past of `past` tokens fit the
        working memory (a single row always runs: the caller lets it)."""
        if self.work_bytes is None:
            return True
        return rows * (width * self.token_bytes + 2 * past * self.kv_bytes) <= self.work_bytes

    def describe(self) -> dict[str, Any]:
        return {"samples_per_pass": self.samples, "token_budget": self.tokens, "work_bytes": self.work_bytes}


def count_budget(batch_size: int) -> Budget:
    """The CPU budget: `batch_size` samples per plain pass."""
    return Budget(samples=int(batch_size))


def token_budget(tokens: int, *, call_cost: int = GPU_CALL_COST) -> Budget:
    """An explicit token budget (any device; tests and benchmarks)."""
    return Budget(tokens=int(tokens), call_cost=call_cost)


def model_bytes(model: Any) -> tuple[int, int]:
    """(KV bytes per token, working bytes per new token) of a decoder, from its config:
    KV = layers x 2 x KV heads x head size x element size; working memory per token =
    its KV plus the activations a layer holds at once (about 8 hidden-sized and 3
    MLP-sized vectors) and a float32 copy of the output. Estimates for budgets."""
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config(decoder=True)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    hidden = int(getattr(config, "hidden_size", 64) or 64)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    layers = int(getattr(config, "num_hidden_layers", 1) or 1)
    inter = int(getattr(config, "intermediate_size", None) or 4 * hidden)
    size = next(model.parameters()).element_size()
    kv = layers * 2 * kv_heads * head_dim * size
    return kv, kv + size * (8 * hidden + 3 * inter) + 4 * hidden


def free_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (what the driver reports free plus what torch's
    allocator holds unused); None for other devices."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    dev = torch.device(device)
    free, _ = torch.cuda.mem_get_info(dev)
    return int(free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev))


def _pow2_floor(x: float) -> int:
    return 1 << max(0, int(x).bit_length() - 1) if x >= 1 else 0


def plan_memory(device: str, model: Any, *, batch_size: int, max_bytes: int | None = None,
                cached_bytes: int = 0, tokens: int | None = None,
                free: int | None = None) -> tuple[Budget, int]:
    """(the forward-pass budget, the KV bytes a prefix tree may keep) for one scoring
    call on `device` (module docstring). `max_bytes`: the tree's KV budget when the
    caller fixed it (None: `DEFAULT_KV_BYTES` on a CPU, `KV_SHARE` of the free memory on
    CUDA); `cached_bytes`: KV the tree already holds (free for its own use); `tokens`: an
    explicit token budget (any device); `free`: the free memory (default: asked)."""
    kv, per_token = model_bytes(model)
    if free is None:
        free = free_bytes(device)
    if free is None:  # CPU: counts, as measured fastest there
        keep = DEFAULT_KV_BYTES if max_bytes is None else int(max_bytes)
        budget = count_budget(batch_size) if tokens is None else token_budget(tokens, call_cost=CPU_CALL_COST)
        return Budget(samples=budget.samples, tokens=budget.tokens, token_bytes=per_token, kv_bytes=kv,
                      call_cost=CPU_CALL_COST), keep
    free = max(0, int(free) + int(cached_bytes))
    keep = _pow2_floor(KV_SHARE * free) if max_bytes is None else int(max_bytes)
    work = MEMORY_SHARE * max(0, free - keep)
    if tokens is None:
        tokens = max(1, min(GPU_MAX_TOKENS, _pow2_floor(work / per_token)))
    work_bytes = min(_pow2_floor(work), GPU_MAX_TOKENS * (per_token + 4 * kv))
    return Budget(tokens=int(tokens), work_bytes=max(1, work_bytes), token_bytes=per_token, kv_bytes=kv,
                  call_cost=GPU_CALL_COST), keep


def plain_batches(lengths: Sequence[int], budget: Budget, max_rows: int = GPU_MAX_ROWS) -> list[list[int]]:
    """The plain path's batches: indices sorted by length, longest first (running out of
    memory shows at once), cut every `samples` rows (CPU) or where the next row would
    exceed the token budget or the working memory (a longer sequence runs alone)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if budget.samples is not None:
        return [order[s:s + budget.samples] for s in range(0, len(order), budget.samples)]
    batches, i = [], 0
    while i < len(order):
        width, j = lengths[order[i]], i + 1
        while (j < len(order) and j - i < max_rows and (j - i + 1) * width <= budget.tokens
               and budget.fits(j - i + 1, width)):
            j += 1
        batches.append(order[i:j])
        i = j
    return batches


def plain_plan(lengths: Sequence[int], budget: Budget) -> dict[str, int]:
    """Forward passes, padded tokens and cost of the plain path."""
    batches = plain_batches(lengths, budget)
    padded = sum(len(b) * lengths[b[0]] for b in batches)
    return {"forward_passes": len(batches), "computed_tokens": int(sum(lengths)), "padded_tokens": padded,
            "cost": len(batches) * budget.call_cost + padded}


def choose(plain: dict[str, int], reuse: dict[str, int]) -> str:
    """PLAIN or REUSE: prefix reuse when its estimated cost is at most REUSE_MARGIN of
    the plain path's (module docstring)."""
    return REUSE if reuse["cost"] <= REUSE_MARGIN * plain["cost"] else PLAIN
