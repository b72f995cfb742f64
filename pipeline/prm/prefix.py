"""Prefix reuse for PRM scoring: a radix tree of token ids whose nodes hold the KV cache.

Every PRM call re-reads text it has read before: the N samples of a problem share their
question, and every tree-search child shares its parent's whole path. `PrefixTree`
computes each distinct token prefix once:

* every sample is tokenized as a whole (exactly as the plain path tokenizes it), and the
  token sequences are inserted into a radix tree: a segment is a run of tokens shared by
  the same set of sequences. Reuse therefore follows the longest common TOKEN prefix,
  never a character prefix, so a token that merges across a boundary ("." + "\\n" as one
  token) is simply not shared, and the model reads exactly the tokens it reads alone;
* segments are computed in waves (a segment once its parent is), each wave in batches of
  similar length: a batch row is a segment's new tokens, right-padded, with the KV cache
  of its parent chain as `past_key_values` (left-padded to the batch's longest past,
  masked out) and explicit position ids, so every real token attends to exactly the
  tokens before it in its own sequence, at the positions it has in that sequence;
* a sequence's output (what the adapter's `read` gets) is the concatenation of its
  segments' outputs, so `read` is the same function for both paths.

Scores equal the plain path's (one padded forward pass per sample) up to floating-point
rounding: attention over a cached prefix sums in another order (tests: 1e-5 in float32;
the benchmark reports the bfloat16 difference).

Memory. A segment keeps its KV cache only while a later segment needs it: within one
call, segments with children; in a session (tree search), every segment, evicted least
recently used first (leaves first) beyond `max_bytes` of KV cache. A call whose shared
prefixes could hold more is cut into chunks of rows sorted by their token ids (so rows
that share stay together).

Needs a decoder whose body (`base_model`) takes `past_key_values` and explicit
`position_ids` and caches into transformers' DynamicCache layers ([batch, heads, seq,
dim] keys and values): Llama, Mistral, Qwen2 and most causal LMs in transformers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.core.progress import progress

DEFAULT_MAX_BYTES = 1 << 30  # KV cache a tree keeps: 46k tokens of SmolLM2-135M, 8k of Mistral-7B (bf16)


class Segment:
    """A run of tokens in the radix tree: its tokens, where it starts in every sequence
    through it, its children (by first token), and once computed the adapter output of
    its tokens ([len, ...]) and, while needed, their KV cache ([layers, 2, heads, len, dim])."""

    __slots__ = ("tokens", "parent", "start", "children", "out", "kv", "used")

    def __init__(self, tokens: list[int], parent: Segment | None) -> None:
        self.tokens = tokens
        self.parent = parent
        self.start = parent.end if parent is not None else 0
        self.children: dict[int, Segment] = {}
        self.out: Any = None
        self.kv: Any = None
        self.used = 0

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)

    def chain(self) -> list[Segment]:
        """The segments from the root's first child down to this one."""
        out = []
        node: Segment | None = self
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        return out[::-1]


def _common(a: Sequence[int], b: Sequence[int], offset: int) -> int:
    """Length of the common prefix of `a` and `b[offset:]`."""
    n = min(len(a), len(b) - offset)
    k = 0
    while k < n and a[k] == b[offset + k]:
        k += 1
    return k


class PrefixTree:
    """The radix tree of one scoring call or of a session (see the module docstring).

    `body(input_ids, attention_mask, position_ids, past_key_values)` runs the model body
    and returns (last hidden state [B, T, H], cache); `head(hidden)` maps hidden states
    to what the adapter's `read` gets (identity for hidden-state PRMs).
    """

    def __init__(self, body: Callable[..., tuple[Any, Any]], head: Callable[[Any], Any], *, pad: int,
                 device: str, kv_bytes_per_token: int, max_bytes: int = DEFAULT_MAX_BYTES,
                 keep: bool = False) -> None:
        self.body, self.head, self.pad, self.device = body, head, pad, device
        self.max_tokens, self.keep = max(1, int(max_bytes) // max(1, int(kv_bytes_per_token))), keep
        self.root = Segment([], None)
        self.clock = 0
        self.computed_tokens = 0  # tokens run through the model (for reports)

    # -- the tree ------------------------------------------------------------------
    def insert(self, ids: Sequence[int]) -> Segment:
        """The segment that ends exactly where `ids` ends (splitting one if needed)."""
        node, i = self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                new = Segment(list(ids[i:]), node)
                node.children[ids[i]] = new
                return new
            k = _common(child.tokens, ids, i)
            if k < len(child.tokens):
                child = self._split(child, k)
            node, i = child, i + k
        return node

    def _split(self, seg: Segment, k: int) -> Segment:
        """Cut `seg` after its first k tokens; returns the new head segment."""
        head = Segment(seg.tokens[:k], seg.parent)
        head.used = seg.used
        seg.parent.children[seg.tokens[0]] = head
        seg.tokens = seg.tokens[k:]
        seg.parent, seg.start = head, head.end
        head.children[seg.tokens[0]] = seg
        if seg.out is not None:
            head.out, seg.out = seg.out[:k].clone(), seg.out[k:].clone()
        if seg.kv is not None:
            head.kv, seg.kv = seg.kv[:, :, :, :k].clone(), seg.kv[:, :, :, k:].clone()
        return head

    def cached_tokens(self) -> int:
        return sum(len(s.tokens) for s in self._walk() if s.kv is not None)

    def _walk(self):
        stack = list(self.root.children.values())
        while stack:
            s = stack.pop()
            yield s
            stack.extend(s.children.values())

    # -- computing -------------------------------------------------------------------
    def run(self, sequences: Sequence[Sequence[int]], batch_size: int,
            fn: Callable[[Any, int], Any]) -> list[Any]:
        """`fn(output [len, ...], i)` for every sequence i, its output computed through
        the tree (shared prefixes once). In a session (`keep`), what was computed stays
        cached for later calls, within the byte budget."""
        import torch

        with torch.inference_mode():
            return self._run(sequences, batch_size, fn)

    def _run(self, sequences, batch_size, fn):
        results: list[Any] = [None] * len(sequences)
        for chunk in self._chunks(sequences):
            self.clock += 1
            ends = {}
            for i in chunk:
                if len(sequences[i]) == 0:
                    raise ValueError("PRM prefix reuse: an empty token sequence")
                ends[i] = self.insert(sequences[i])
            for i in chunk:
                for s in ends[i].chain():
                    s.used = self.clock
            # a forward pass holds at most what the plain path's largest batch holds
            self._compute(batch_size * max(len(sequences[i]) for i in chunk))
            for i in chunk:
                chain = ends[i].chain()
                out = chain[0].out if len(chain) == 1 else _cat([s.out for s in chain])
                results[i] = fn(out, i)
            if not self.keep:
                self.root = Segment([], None)
        if self.keep:
            self.evict(self.max_tokens)
        return results

    def _chunks(self, sequences: Sequence[Sequence[int]]) -> list[list[int]]:
        """Rows in token order, cut so that each chunk's shared prefixes (at most the sum
        of the common prefixes of neighbours) stay within `max_tokens`. A session does
        not chunk: it keeps what it computes and evicts afterwards."""
        if self.keep:
            return [list(range(len(sequences)))]
        order = sorted(range(len(sequences)), key=lambda i: sequences[i])
        chunks, current, shared = [], [], 0
        for a, b in itertools.zip_longest(order, order[1:]):
            current.append(a)
            if b is None:
                break
            k = _common(sequences[a], sequences[b], 0)
            if shared + k > self.max_tokens:
                chunks.append(current)
                current, shared = [], 0
            else:
                shared += k
        if current:
            chunks.append(current)
        return chunks

    def _compute(self, max_tokens: int) -> None:
        wave = []
        stack = [self.root]
        while stack:  # uncomputed segments below computed ones
            node = stack.pop()
            for c in node.children.values():
                (stack if c.out is not None else wave).append(c)
        waves = 0
        while wave:
            waves += 1
            self._forward(wave, max_tokens, desc=f"PRM forward passes (wave {waves})")
            wave = [c for s in wave for c in s.children.values() if c.out is None]

    def _forward(self, segs: list[Segment], max_tokens: int, desc: str) -> None:
        batches = batch_by_length(segs, max_tokens)
        show = len(batches) > 1
        for batch in (progress(batches, desc=desc, unit="batch") if show else batches):
            self._forward_batch(batch)

    def _forward_batch(self, batch: list[Segment]) -> None:
        import torch

        n = len(batch)
        width = max(len(s.tokens) for s in batch)
        past_len = max(s.start for s in batch)
        ids = torch.full((n, width), self.pad, dtype=torch.long)
        for r, s in enumerate(batch):
            ids[r, :len(s.tokens)] = torch.tensor(s.tokens, dtype=torch.long)
        # Padded query tokens continue their row's positions and may attend to the
        # row's real tokens: they come after every real token, so no real token sees
        # them, and no query row is fully masked (fully masked rows give NaN in SDPA).
        starts = torch.tensor([s.start for s in batch], dtype=torch.long)
        position_ids = starts[:, None] + torch.arange(width)[None, :]
        mask = torch.ones((n, past_len + width), dtype=torch.long)
        for r, s in enumerate(batch):
            mask[r, :past_len - s.start] = 0  # left padding of a shorter past
        past = self._past(batch, past_len) if past_len else None
        hidden, cache = self.body(ids.to(self.device), mask.to(self.device), position_ids.to(self.device), past)
        out = self.head(hidden)
        if any(self.keep or s.children for s in batch):
            layers = _cache_layers(cache)
            kv = torch.stack([torch.stack([k[:, :, past_len:], v[:, :, past_len:]]) for k, v in layers])
        for r, s in enumerate(batch):
            m = len(s.tokens)
            s.out = out[r, :m].clone()
            if self.keep or s.children:
                s.kv = kv[:, :, r, :, :m].clone()
        self.computed_tokens += sum(len(s.tokens) for s in batch)

    def _past(self, batch: list[Segment], past_len: int) -> Any:
        """The batch's KV cache: each row's parent chain, left-padded to `past_len`,
        as a list of (keys, values) per layer."""
        import torch

        chains: dict[int, Any] = {}
        for s in batch:
            p = s.parent
            if id(p) not in chains and p.parent is not None:
                parts = [c.kv for c in p.chain()]
                if any(x is None for x in parts):
                    raise RuntimeError("PRM prefix reuse: a cached prefix lost its KV cache")
                chains[id(p)] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=3)
        first = next(iter(chains.values()))
        layers, _, heads, _, dim = first.shape
        past = torch.zeros((layers, 2, len(batch), heads, past_len, dim), dtype=first.dtype, device=first.device)
        for r, s in enumerate(batch):
            if s.start:
                past[:, :, r, :, past_len - s.start:] = chains[id(s.parent)]
        return [(past[i, 0], past[i, 1]) for i in range(layers)]

    # -- eviction --------------------------------------------------------------------
    def evict(self, max_tokens: int) -> None:
        """Drop least recently used leaf segments until at most `max_tokens` are cached."""
        import heapq

        total = self.cached_tokens()
        if total <= max_tokens:
            return
        heap = [(s.used, id(s), s) for s in self._walk() if not s.children]
        heapq.heapify(heap)
        while heap and total > max_tokens:
            _, _, s = heapq.heappop(heap)
            parent = s.parent
            del parent.children[s.tokens[0]]
            if s.kv is not None:
                total -= len(s.tokens)
            if parent.parent is not None and not parent.children:
                heapq.heappush(heap, (parent.used, id(parent), parent))


MAX_ROWS = 256  # rows per forward pass (bounds the batching search)
CALL_COST = 32  # a forward call's fixed cost in tokens (measured on CPU: ~26 ms, ~38 tokens)


def batch_by_length(segs: list[Segment], max_tokens: int, call_cost: int = CALL_COST) -> list[list[Segment]]:
    """Segments in batches of at most `max_tokens` padded tokens (rows x longest row;
    a longer segment runs alone), longest first, cut where they cost least: a batch
    costs `call_cost` plus its padded tokens, minimised exactly over the cuts of the
    length-sorted list (dynamic programming)."""
    segs = sorted(segs, key=lambda s: (-len(s.tokens), -s.start))
    n = len(segs)
    best = [0] + [float("inf")] * n  # best[j]: cost of the first j segments
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        i = j - 1
        while i >= 0:  # the last batch is segs[i:j], its width len(segs[i])
            width = len(segs[i].tokens)
            if i < j - 1 and ((j - i) * width > max_tokens or j - i > MAX_ROWS):
                break
            cost = best[i] + call_cost + (j - i) * width
            if cost < best[j]:
                best[j], cut[j] = cost, i
            i -= 1
    batches, j = [], n
    while j > 0:
        batches.append(segs[cut[j]:j])
        j = cut[j]
    return batches[::-1]


def _cat(parts: list[Any]) -> Any:
    import torch

    return torch.cat(parts, dim=0)


def _cache_layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) of every layer of a transformers cache, each [batch, heads, seq, dim]."""
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"PRM prefix reuse: unsupported cache type {type(cache).__name__}")
    out = []
    for layer in layers:
        k, v = getattr(layer, "keys", None), getattr(layer, "values", None)
        if k is None or v is None or k.dim() != 4:
            raise TypeError(f"PRM prefix reuse: unsupported cache layer {type(layer).__name__}")
        out.append((k, v))
    return out
