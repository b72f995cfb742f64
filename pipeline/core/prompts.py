"""Prompt templates, one per model entry (config key `prompts:`).

A template is
    format:   "plain" (the text as is: few-shot prompting of a base-style model) or
              "chat" (the text becomes the user turn of the model's chat template)
    template: text containing "{question}" exactly once
    system:   optional system message ("chat" only)
    stop:     strings that end a solution (e.g. the blank line before the next
              few-shot question)

Solutions must come out one reasoning step per line and end with "The answer is X.":
the few-shot examples teach that, and `step_ends` relies on it (`split_steps` cuts a text
at those ends).

`render` strips the question's outer whitespace before it fills the template. The paper's
code (thu-wyz/inference_scaling sgl_baseline.py) prompts with the raw MATH problem and
the GSM8K `question + "\n"`; none of the 500 MATH500 problems and none of the 1319 GSM8K
test questions has outer whitespace, so on those datasets the prompts are identical.

`step_stop(template, depth)` fills a tree search's step stop string (config
`search.<name>.step_stop`): "{depth}" is the number of steps the node already has (0 at
the root), "{depth+K}" / "{depth-K}" add or subtract an integer K. The paper's REBASE
(rebase.py) stops a step at "Step " + str(depth + 2), i.e. "Step {depth+2}": step k+1
ends where the policy begins to write "Step k+2".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_DEPTH = re.compile(r"\{depth(?:([+-])(\d+))?\}")


def render(template: dict[str, Any], question: str, tokenizer: Any = None) -> str:
    """The prompt text for one question."""
    text = template["template"].replace("{question}", question.strip())
    if template.get("format", "plain") == "plain":
        return text
    if tokenizer is None:
        raise ValueError("chat prompts need the model's tokenizer")
    messages = []
    if template.get("system"):
        messages.append({"role": "system", "content": template["system"]})
    messages.append({"role": "user", "content": text})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def step_stop(template: str, depth: int) -> str:
    """The step stop string for a node with `depth` steps (see the module docstring)."""
    def fill(m: re.Match) -> str:
        k = int(m.group(2) or 0)
        return str(depth + (k if m.group(1) != "-" else -k))

    return _DEPTH.sub(fill, template)


def check_step_stop(template: str) -> str | None:
    """Why `template` is not a usable step stop string, or None."""
    rest = _DEPTH.sub("", template)
    if "{" in rest or "}" in rest:
        return (f"{template!r} has a placeholder other than {{depth}}, {{depth+K}} or {{depth-K}} "
                "(no spaces inside the braces)")
    if not step_stop(template, 0):
        return "is empty"
    return None


def step_ends(text: str) -> list[int]:
    """Character offsets (exclusive) where each step ends: one step per non-empty line.

    Leading/trailing whitespace of a line belongs to no step boundary decision: a
    boundary sits right after the last visible character of its line, which is where
    a PRM step tag would be inserted.
    """
    ends: list[int] = []
    pos = 0
    for line in text.split("\n"):
        stripped = line.rstrip()
        if stripped.strip():
            ends.append(pos + len(stripped))
        pos += len(line) + 1
    return ends


def split_steps(text: str, step_ends: Sequence[int]) -> list[str]:
    """The steps as stripped strings: step i runs from the previous end to its end."""
    steps = []
    prev = 0
    for end in step_ends:
        steps.append(text[prev:end].strip())
        prev = end
    return steps
