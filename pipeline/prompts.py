"""Prompt templates, one per model entry (config key `prompts:`).

A template is
    format:   "plain" (the text as is: few-shot prompting of a base-style model) or
              "chat" (the text becomes the user turn of the model's chat template)
    template: text containing "{question}" exactly once
    system:   optional system message ("chat" only)
    stop:     strings that end a solution (e.g. the blank line before the next
              few-shot question)

Solutions must come out one reasoning step per line and end with "The answer is X.":
the few-shot examples teach that, and `step_ends` relies on it.
"""

from __future__ import annotations

from typing import Any


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
