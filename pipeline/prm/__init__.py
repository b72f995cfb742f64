"""Process reward models: one score per reasoning step, read from one pass over each sample
(each distinct token prefix computed once where the plan says that is cheaper:
pipeline/prm/prefix.py; batch budgets and the choice: pipeline/prm/batching.py).

    prm = load("math-shepherd", None)            # default model of the format
    scores, tokens = prm.score(questions, texts, step_ends, batch_size=8)
    # scores[i][k]: step k of sample i, in (0, 1); tokens[i]: tokens the PRM read
    # prm.last_call: the path taken (prefix reuse or plain), forward passes, budget
    session = prm.session()  # the same `score`, keeping the KV cache of what it read
    session.score(...)       # (within a byte budget): a text whose token prefix it
                             # read computes only the rest

Formats (registry FORMATS, format -> "module:Class", imported on first use):
    math-shepherd   P("+") at a "ки" tag after each step (pipeline/prm/tagged.py)
    qwen-prm        Qwen2.5-Math-PRM: P(class 1) at "<extra_0>" after each step
    llemma-prm      Wu et al.'s reward model, a causal LM: sigmoid(mean over the vocabulary
                    of the logits) at the " ки" tag ending each step; input question +
                    solution (no template); the policy's own tags are reused
    value-head      logistic regression on the policy's hidden state at each step end
                    (`model` is the head directory; train with `train_value_head`)
    logprob         exp(mean token log-prob) of each step under the policy
                    (`model` is the policy directory)
Tagged formats keep a tag the policy wrote itself at the end of a step (MetaMath-style
"Step 1: ... ки") and insert one only where a step has none: never two per step.

Step boundaries are `step_ends` from the SAMPLES contract (exclusive character offsets);
pipeline/prm/positions.py maps them to token positions. Scoring raises ValueError naming
the PRM and the sample for a sample without steps (or with unusable step ends), a step
tag that is not a token of the encoded sample, or a non-finite score; `load` already
raises ValueError naming the PRM when the tokenizer lacks the format's tag (or "+"/"-").
torch/transformers load only when a PRM is built.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.prm.base import PRM

FORMATS: dict[str, str] = {
    "math-shepherd": "pipeline.prm.tagged:MathShepherdPRM",
    "qwen-prm": "pipeline.prm.tagged:QwenPRM",
    "llemma-prm": "pipeline.prm.tagged:LlemmaPRM",
    "value-head": "pipeline.prm.value_head:ValueHead",
    "logprob": "pipeline.prm.policy:LogprobPRM",
}


def prm_class(format: str) -> type[PRM]:
    if format not in FORMATS:
        raise ValueError(f"unknown PRM format {format!r}; known: {sorted(FORMATS)}")
    module, _, name = FORMATS[format].partition(":")
    return getattr(importlib.import_module(module), name)


def load(format: str, model: str | None = None, **options: Any) -> PRM:
    """Build the PRM of `format` from `model` (hub id or directory; None = the format's
    default model; the head directory for value-head, the policy for logprob).
    Common options: device, dtype, tokenizer, revision, trust_remote_code; the rest are
    the format's (see its module)."""
    return prm_class(format).open(model, **options)


def train_value_head(*args: Any, **kwargs: Any):
    """See pipeline.prm.value_head.train_value_head."""
    from pipeline.prm.value_head import train_value_head as train

    return train(*args, **kwargs)


def auc(scores, labels) -> float:
    """Mann-Whitney ROC AUC, ties counted half (pipeline.prm.value_head.auc)."""
    from pipeline.prm.value_head import auc as _auc

    return _auc(scores, labels)


__all__ = ["FORMATS", "PRM", "auc", "load", "prm_class", "train_value_head"]
