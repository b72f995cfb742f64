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
rounding: attention over a cached prefix sums in another order (tests/test_batching.py:
1e-6 in float32 and 1e-4 in bfloat16 for llemma-prm and logprob; tests/test_prefix.py:
1e-5 for every format; the benchmarks report the value head's, whose standardised
features amplify the rounding).

Memory. The KV cache a tree holds never exceeds its budget (`max_bytes`; default
`pipeline/prm/batching.py`: 1 GiB on a CPU, a share of the free memory on CUDA), at any
moment of a call. A segment keeps its KV cache while a later segment needs it: within
one call, segments with children; in a session (tree search), every segment it has room
for, evicted least recently used first (leaves first). A call whose shared prefixes
(with the cached paths they extend) could need more is cut into chunks of rows sorted by
their token ids (so rows that share stay together); before each chunk a session evicts
what the chunk does not read down to what the chunk must keep, and a segment nothing
extends keeps its KV only where it fits (a session drops the segments it could not keep
once their scores are read). Each forward pass additionally uses its own working memory,
bounded by the call's batch budget (`pipeline/prm/batching.py`): padded new tokens per
pass, and on CUDA the estimated bytes of its new tokens and copied past.

Needs a decoder whose body (`base_model`) takes `past_key_values` and explicit
`position_ids` and caches into transformers' DynamicCache layers ([batch, heads, seq,
dim] keys and values): Llama, Mistral, Qwen2 and most causal LMs in transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.core.progress import progress
from pipeline.prm import batching

DEFAULT_MAX_BYTES = batching.DEFAULT_KV_BYTES


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
    to what the adapter's `read` gets (identity for hidden-state PRMs). `max_bytes`: the
    KV cache the tree may hold (None: decided per call, `batching.plan_memory`).
    """

    def __init__(self, body: Callable[..., tuple[Any, Any]], head: Callable[[Any], Any], *, pad: int,
                 device: str, kv_bytes_per_token: int, max_bytes: int | None = None,
                 keep: bool = False) -> None:
        self.body, self.head, self.pad, self.device = body, head, pad, device
        self.kv_bytes = max(1, int(kv_bytes_per_token))
        self.max_bytes, self.keep = max_bytes, keep
        self.max_tokens = self._tokens_of(DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
        self.root = Segment([], None)
        self.clock = 0
        self.cached = 0  # tokens whose KV cache the tree holds
        self.peak_cached = 0  # the most it held at once (tests, reports)
        self.computed_tokens = 0  # tokens run through the model (for reports)
        self.forward_passes = 0
        self._reserved = 0  # KV tokens still to store for segments a later one extends

    def _tokens_of(self, max_bytes: int) -> int:
        return max(0, int(max_bytes) // self.kv_bytes)

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

    def _lookup(self, ids: Sequence[int]) -> tuple[int, list[Segment]]:
        """How many leading tokens of `ids` the tree holds the KV cache of, and the
        segments that hold them (a segment matched in part counted whole)."""
        node, i, segs = self.root, 0, []
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None or child.kv is None:
                break
            k = _common(child.tokens, ids, i)
            segs.append(child)
            i += k
            if k < len(child.tokens):
                break
            node = child
        return i, segs

    def cached_tokens(self) -> int:
        return sum(len(s.tokens) for s in self._walk() if s.kv is not None)

    def _walk(self):
        stack = list(self.root.children.values())
        while stack:
            s = stack.pop()
            yield s
            stack.extend(s.children.values())

    def _reset(self) -> None:
        self.root = Segment([], None)
        self.cached = 0

    # -- computing -------------------------------------------------------------------
    def run(self, sequences: Sequence[Sequence[int]], budget: batching.Budget | int,
            fn: Callable[[Any, int], Any], *, max_bytes: int | None = None) -> list[Any]:
        """`fn(output [len, ...], i)` for every sequence i, its output computed through
        the tree (shared prefixes once), in forward passes within `budget` (a Budget, or
        a CPU batch size). `max_bytes`: this call's KV budget (default the tree's).
        In a session (`keep`), what was computed stays cached for later calls, within
        the KV budget."""
        import torch

        if any(len(s) == 0 for s in sequences):
            raise ValueError("PRM prefix reuse: an empty token sequence")
        if isinstance(budget, int):
            budget = batching.count_budget(budget)
        if max_bytes is not None or self.max_bytes is not None:
            self.max_tokens = self._tokens_of(self.max_bytes if max_bytes is None else max_bytes)
        with torch.inference_mode():
            return self._run(sequences, budget, fn)

    def _run(self, sequences, budget, fn):
        results: list[Any] = [None] * len(sequences)
        if self.keep:
            self.evict(self.max_tokens)  # the budget may have shrunk since the last call
        for chunk in self._chunks(sequences):
            self.clock += 1
            ends = {i: self.insert(sequences[i]) for i in chunk}
            for end in ends.values():
                for s in end.chain():
                    s.used = self.clock
            # KV the chunk must keep: its new segments that others extend
            self._reserved = sum(len(s.tokens) for wave in self._waves() for s in wave if s.children)
            if self.keep:
                self.evict(self.max_tokens - self._reserved, protect=self.clock)
            longest = max(len(sequences[i]) for i in chunk)
            for n, wave in enumerate(self._waves(), 1):
                batches = self.batches(wave, budget, longest)
                show = len(batches) > 1
                for batch in (progress(batches, desc=f"PRM forward passes (wave {n})", unit="batch")
                              if show else batches):
                    self._forward_batch(batch)
            for i in chunk:
                chain = ends[i].chain()
                out = chain[0].out if len(chain) == 1 else _cat([s.out for s in chain])
                results[i] = fn(out, i)
            if not self.keep:
                self._reset()
            else:  # a segment without its KV cache cannot be extended: read, then dropped
                for end in ends.values():
                    if end.kv is None and not end.children and end.parent is not None \
                            and end.parent.children.get(end.tokens[0]) is end:
                        del end.parent.children[end.tokens[0]]
        return results

    def _chunks(self, sequences: Sequence[Sequence[int]], max_tokens: int | None = None):
        """Rows in token order, cut so that what each chunk must keep in KV cache stays
        within `max_tokens` (default the tree's): the cached segments its rows read plus
        its new shared prefixes. In token order the shared prefixes of a run of rows are
        the prefixes of each row up to its common prefix with the row before, and those
        up to the previous common length (or what is cached) are counted already: a row
        adds max(0, common - max(previous common, cached)). A single row always fits: it
        keeps nothing new. A generator: each chunk is formed on the tree as the chunks
        before it left it."""
        limit = self.max_tokens if max_tokens is None else max_tokens
        order = sorted(range(len(sequences)), key=lambda i: sequences[i])
        current: list[int] = []
        pinned, seen, common = 0, set(), 0
        for i in order:
            matched, segs = self._lookup(sequences[i])
            cached = sum(len(s.tokens) for s in segs if id(s) not in seen)
            shared, k = 0, common
            if current and sequences[current[-1]] != sequences[i]:  # equal rows share one segment
                k = _common(sequences[current[-1]], sequences[i], 0)
                shared = max(0, k - max(common, matched))
            if current and pinned + cached + shared > limit:
                yield current
                matched, segs = self._lookup(sequences[i])  # the tree that chunk left
                current, pinned, seen = [], 0, set()
                cached, shared, k = sum(len(s.tokens) for s in segs), 0, 0
            current.append(i)
            pinned += cached + shared
            seen.update(id(s) for s in segs)
            common = k
        if current:
            yield current

    def _waves(self):
        """The segments to compute, a wave at a time (a segment once its parent is); the
        next wave is found once the caller has gone through this one."""
        wave = []
        stack = [self.root]
        while stack:  # uncomputed segments below computed ones
            node = stack.pop()
            for c in node.children.values():
                (stack if c.out is not None else wave).append(c)
        while wave:
            yield wave
            wave = [c for s in wave for c in s.children.values() if c.out is None]

    @staticmethod
    def batches(segs: list[Segment], budget: batching.Budget, longest: int) -> list[list[Segment]]:
        """A wave's forward passes within `budget` (`batch_by_length`)."""
        return batch_by_length(segs, budget.new_tokens(longest), budget.call_cost, budget.fits)

    def estimate(self, sequences: Sequence[Sequence[int]], budget: batching.Budget,
                 max_bytes: int | None = None) -> dict[str, int]:
        """What `run` would do for `sequences` on a fresh tree (not a session), computing
        nothing: forward passes, computed and padded tokens, and the cost
        `batching.choose` compares (`call_cost` per pass plus padded tokens)."""
        scratch = PrefixTree(self.body, self.head, pad=self.pad, device=self.device, kv_bytes_per_token=self.kv_bytes,
                             max_bytes=self.max_bytes if max_bytes is None else max_bytes)
        passes = computed = padded = 0
        for chunk in scratch._chunks(sequences):
            for i in chunk:
                scratch.insert(sequences[i])
            longest = max(len(sequences[i]) for i in chunk)
            for wave in scratch._waves():
                computed += sum(len(s.tokens) for s in wave)
                for batch in scratch.batches(wave, budget, longest):
                    passes += 1
                    padded += len(batch) * max(len(s.tokens) for s in batch)
            scratch._reset()
        return {"forward_passes": passes, "computed_tokens": computed, "padded_tokens": padded,
                "cost": passes * budget.call_cost + padded}

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
        del past
        out = self.head(hidden)
        # which rows keep their KV: those a later segment extends (budgeted by the
        # chunking), and in a session the others while they fit
        keep = []
        for r, s in enumerate(batch):
            m = len(s.tokens)
            if s.children:
                self._reserved -= m
            elif not (self.keep and self.cached + self._reserved + m <= self.max_tokens):
                continue
            keep.append(r)
            self.cached += m
        self.peak_cached = max(self.peak_cached, self.cached)
        if keep:
            layers = _cache_layers(cache)
            rows = slice(None) if len(keep) == n else torch.tensor(keep, device=layers[0][0].device)
            kv = torch.stack([torch.stack([k[rows, :, past_len:], v[rows, :, past_len:]]) for k, v in layers])
            for j, r in enumerate(keep):
                batch[r].kv = kv[:, :, j, :, :len(batch[r].tokens)].clone()
            del kv
        for r, s in enumerate(batch):
            s.out = out[r, :len(s.tokens)].clone()
        self.computed_tokens += sum(len(s.tokens) for s in batch)
        self.forward_passes += 1

    def _past(self, batch: list[Segment], past_len: int) -> Any:
        """The batch's KV cache: each row's parent chain, left-padded to `past_len`,
        as a list of (keys, values) per layer (the chain's segments copied in place)."""
        import torch

        first = next(s.parent.kv for s in batch if s.start)
        if first is None:
            raise RuntimeError("PRM prefix reuse: a cached prefix lost its KV cache")
        layers, _, heads, _, dim = first.shape
        past = torch.zeros((layers, 2, len(batch), heads, past_len, dim), dtype=first.dtype, device=first.device)
        for r, s in enumerate(batch):
            if not s.start:
                continue
            offset = past_len - s.start
            for c in s.parent.chain():
                if c.kv is None:
                    raise RuntimeError("PRM prefix reuse: a cached prefix lost its KV cache")
                past[:, :, r, :, offset + c.start:offset + c.end] = c.kv
        return [(past[i, 0], past[i, 1]) for i in range(layers)]

    # -- eviction --------------------------------------------------------------------
    def evict(self, max_tokens: int, *, protect: int | None = None) -> None:
        """Drop least recently used leaf segments until at most `max_tokens` are cached,
        sparing the segments last used at clock `protect` (the chunk being computed)."""
        import heapq

        if self.cached <= max_tokens:
            return
        heap = [(s.used, id(s), s) for s in self._walk() if not s.children and s.used != protect]
        heapq.heapify(heap)
        while heap and self.cached > max_tokens:
            _, _, s = heapq.heappop(heap)
            parent = s.parent
            del parent.children[s.tokens[0]]
            if s.kv is not None:
                self.cached -= len(s.tokens)
            if parent.parent is not None and not parent.children and parent.used != protect:
                heapq.heappush(heap, (parent.used, id(parent), parent))


MAX_ROWS = 256  # rows per forward pass (bounds the batching search)
CALL_COST = batching.CPU_CALL_COST


def batch_by_length(segs: list[Segment], max_tokens: int, call_cost: int = CALL_COST,
                    fits: Callable[[int, int, int], bool] | None = None) -> list[list[Segment]]:
    """Segments in batches of at most `max_tokens` padded tokens (rows x longest row;
    a longer segment runs alone) and, with `fits(rows, width, past)`, within the working
    memory, longest first, cut where they cost least: a batch costs `call_cost` plus its
    padded tokens, minimised exactly over the cuts of the length-sorted list (dynamic
    programming)."""
    segs = sorted(segs, key=lambda s: (-len(s.tokens), -s.start))
    n = len(segs)
    best = [0] + [float("inf")] * n  # best[j]: cost of the first j segments
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        i, past = j - 1, 0
        while i >= 0:  # the last batch is segs[i:j], its width len(segs[i])
            width = len(segs[i].tokens)
            past = max(past, segs[i].start)
            if i < j - 1 and ((j - i) * width > max_tokens or j - i > MAX_ROWS
                              or (fits is not None and not fits(j - i, width, past))):
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
