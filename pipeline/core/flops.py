"""FLOPs accounting for inference compute.

Two conventions, both per problem and both linear in token counts:

"paper"  2 x policy parameters per *generated* token, the usual forward-pass estimate
         (one multiply-add per parameter per token). Reward-model / verifier compute is
         left out, as in Wu et al., "Inference Scaling Laws" (arXiv:2408.00724).

"full"   adds the prompt (prefill) tokens, counted once per sample: every sample is
         charged its whole prompt, i.e. no credit for KV-cache prefix sharing between
         samples of the same problem.

The functions use plain arithmetic only, so they work on Python numbers, numpy arrays
and polars expressions alike.
"""

from __future__ import annotations


def paper_flops(params, output_tokens):
    """2 * params * output_tokens (generated tokens only)."""
    return 2 * params * output_tokens


def full_flops(params, output_tokens, prompt_tokens):
    """2 * params * (output_tokens + prompt_tokens) (prefill counted once per sample)."""
    return 2 * params * (output_tokens + prompt_tokens)
