"""Character offsets -> token positions, from a fast tokenizer's offset mapping.

Every PRM reads one score per step from one forward pass, so each step must be pinned
to one token position of the encoded input. Two cases:

* step ends (value-head, logprob): the step's token is the LAST token whose character
  span ends at or before the step end. A token straddling the boundary (a tokenizer that
  merges "." and "\\n" into one token) therefore belongs to the next step; the step's
  token is then the one before it.
* tags (math-shepherd, qwen-prm, llemma-prm): the input is built with a tag string
  inserted after every step, and the step's token is the last token that lies inside
  (overlaps) the tag's character span, optionally required to have the tag's token id.
  A policy trained on Math-Shepherd-style data writes the tag itself ("Step 1: ... ки");
  `tag_steps` keeps such a tag where it ends a step and inserts one only where none is.

Offsets come from `tokenizer(..., return_offsets_mapping=True)`; tokens with an empty
span (BOS/EOS that the tokenizer adds, spans (0, 0)) never pin a step. Fast tokenizers
give non-decreasing span ends, which the linear scans below rely on.

Pure Python, no torch: used by all adapters and tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

Offsets = Sequence[tuple[int, int]]


def step_token_positions(offsets: Offsets, char_ends: Sequence[int]) -> list[int]:
    """For each character end (increasing), the index of the last non-empty token whose
    span ends at or before it; -1 where no token does."""
    positions: list[int] = []
    last = -1
    j = 0
    n = len(offsets)
    for end in char_ends:
        while j < n:
            start, stop = offsets[j]
            if stop > start:
                if stop > end:
                    break
                last = j
            j += 1
        positions.append(last)
    return positions


def tag_token_positions(
    offsets: Offsets,
    tag_spans: Sequence[tuple[int, int]],
    input_ids: Sequence[int] | None = None,
    tag_id: int | None = None,
) -> list[int]:
    """For each tag span [start, end) (increasing), the index of the last non-empty token
    overlapping it and ending at or before its end; -1 where there is none, or where
    `tag_id` is given and that token is not the tag token.

    A token such as SentencePiece's "▁ки" may include the space before the tag in its
    span: overlap, not containment, is what counts.
    """
    if tag_id is not None and input_ids is None:
        raise ValueError("tag_id needs input_ids")
    ends = step_token_positions(offsets, [end for _, end in tag_spans])
    positions: list[int] = []
    for (start, end), pos in zip(tag_spans, ends):
        if pos < 0:
            positions.append(-1)
            continue
        tok_start, tok_end = offsets[pos]
        overlaps = tok_start < end and tok_end > start
        if not overlaps or (tag_id is not None and input_ids[pos] != tag_id):
            positions.append(-1)
        else:
            positions.append(pos)
    return positions


def insert_tags(text: str, step_ends: Sequence[int], tag: str, sep: str = "") -> tuple[str, list[tuple[int, int]]]:
    """`text` with `sep + tag` inserted at every step end; text after the last step end is
    dropped (it cannot change a causal model's scores). Returns the string and each
    tag's character span (the tag itself, without `sep`)."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    prev = 0
    for end in step_ends:
        chunk = text[prev:end] + sep
        parts.append(chunk)
        length += len(chunk)
        parts.append(tag)
        spans.append((length, length + len(tag)))
        length += len(tag)
        prev = end
    return "".join(parts), spans


def tag_steps(text: str, step_ends: Sequence[int], tag: str, sep: str = "") -> tuple[str, list[tuple[int, int]]]:
    """`insert_tags`, except that a step which already ends with `sep + tag` (the policy
    wrote the tag itself) keeps its own tag and gets no second one. A tag the policy
    wrote without `sep` before it ("5.ки") is not reused: it may tokenize differently,
    so the step gets `sep + tag` after it. Returns the string and each step's tag span."""
    own = sep + tag
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    prev = 0
    for end in step_ends:
        chunk = text[prev:end]
        if not (chunk.endswith(own) and chunk[: -len(own)].strip()):
            chunk += own
        parts.append(chunk)
        length += len(chunk)
        spans.append((length - len(tag), length))
        prev = end
    return "".join(parts), spans


def join_with_tags(steps: Sequence[str], tag: str) -> tuple[str, list[tuple[int, int]]]:
    """Steps joined with `tag` after every step, the last included (Qwen PRM style):
    "s1<tag>s2<tag>". Returns the string and each tag's character span."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    length = 0
    for step in steps:
        parts.append(step)
        length += len(step)
        parts.append(tag)
        spans.append((length, length + len(tag)))
        length += len(tag)
    return "".join(parts), spans


def find_last_occurrences(haystack: str, needle: str, count: int) -> list[tuple[int, int]] | None:
    """Spans of the last `count` non-overlapping occurrences of `needle`, in order; None
    when there are fewer (used to find tags after a chat template rendered them)."""
    spans: list[tuple[int, int]] = []
    pos = len(haystack)
    while len(spans) < count:
        found = haystack.rfind(needle, 0, pos)
        if found < 0:
            return None
        spans.append((found, found + len(needle)))
        pos = found
    return spans[::-1]


def validate_step_ends(text: str, step_ends: Sequence[int]) -> str | None:
    """Why `step_ends` is unusable for `text`, or None when it is fine."""
    if len(step_ends) == 0:
        return "has no step boundaries"
    prev = 0
    for k, end in enumerate(step_ends):
        end = int(end)
        if end <= prev or end > len(text):
            return (
                f"has step end {end} at step {k} outside ({prev}, {len(text)}] "
                "(step ends must be strictly increasing offsets within the text)"
            )
        prev = end
    return None
