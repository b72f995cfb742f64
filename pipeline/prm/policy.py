"""PRMs read off the POLICY model itself (no separate reward model).

Both encode a sample as `prompt_template` (default "Question: {question}\\nAnswer:\\n")
followed by the solution up to its last step end, read in one pass per sample, and pin
step k to the last token ending at or before its end (positions.step_token_positions).

Why a short context rather than the few-shot prompt the solution was sampled with: the
sampling prompt is a long prefix shared by every sample of every problem, and
re-encoding it per sample would multiply the cost of scoring by the prefix length for
features that barely change. The short question/answer context is the same for
training and scoring (it is saved with a value head), which is what matters.

logprob   score = exp(mean over the step's tokens of log p(token | everything before)),
          the geometric-mean token probability, in (0, 1]. A step's tokens are those
          after the previous step's token up to and including its own token; a step that
          owns no token (a token straddling two boundaries) is scored by its own token.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from pipeline.prm import positions as P
from pipeline.prm.base import (
    HFPRM,
    Encoded,
    count_parameters,
    last_hidden_state,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    split_body,
)

DEFAULT_PROMPT = "Question: {question}\nAnswer:\n"
LOGIT_CHUNK = 512  # positions per vocab projection (bounds the [positions, vocab] tensor)


def policy_identity(policy: str | Path, revision: str | None = None) -> str:
    """What pins the policy's weights: for a local directory a hash of config.json and the
    names and sizes of its weight files; for a hub id the id (and revision)."""
    path = Path(policy)
    if not path.is_dir():
        return f"{policy}@{revision}" if revision else str(policy)
    digest = hashlib.sha256()
    config = path / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for f in sorted(path.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".pt") and f.is_file():
            digest.update(f"{f.name}:{f.stat().st_size}".encode())
    return "sha256:" + digest.hexdigest()


class PolicyPRM(HFPRM):
    """Shared encoding and model handling for the policy-based PRMs."""

    format = ""

    def __init__(
        self,
        policy: str | Path,
        *,
        prompt_template: str | None = None,
        device: str | None = None,
        dtype: Any = None,
        tokenizer: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        _loaded: tuple[Any, Any] | None = None,
    ) -> None:
        if policy is None:
            raise ValueError(f"{self.format} PRM needs the policy model directory")
        self.policy = str(policy)
        self.revision = revision
        self.name = getattr(self, "name", None) or self.policy
        self.prompt_template = DEFAULT_PROMPT if prompt_template is None else prompt_template
        if "{question}" not in self.prompt_template:
            raise ValueError(f"{self.format} PRM: prompt_template must contain {{question}}")
        if _loaded is not None:
            self.model, self.tokenizer = _loaded
            self.device = str(next(self.model.parameters()).device)
        else:
            self.device = resolve_device(device)
            self.tokenizer = load_tokenizer(tokenizer or self.policy, revision=revision, trust_remote_code=trust_remote_code)
            self.model = load_model(self.policy, "AutoModelForCausalLM", device=self.device,
                                    dtype=resolve_dtype(dtype, self.device), revision=revision,
                                    trust_remote_code=trust_remote_code)
        self.num_parameters = count_parameters(self.model)

    def encode(self, index, question, text, step_ends):
        prefix = self.prompt_template.replace("{question}", question.strip())
        full = prefix + text[:step_ends[-1]]
        enc = self.tokenizer(full, add_special_tokens=True, return_offsets_mapping=True)
        found = P.step_token_positions(enc["offset_mapping"], [len(prefix)] + [len(prefix) + e for e in step_ends])
        for k, p in enumerate(found[1:]):
            if p < 0:
                raise self.error(index, f"step {k}: no token ends at or before character {step_ends[k]}")
        return Encoded(list(enc["input_ids"]), found[1:], {"prompt_end": found[0]})

    def forward(self, input_ids, attention_mask):
        return last_hidden_state(self.model, input_ids, attention_mask)

    def split_forward(self):
        return split_body(self.model)

    def step_hidden(self, questions, texts, step_ends, *, batch_size: int = 8):
        """Per sample, the hidden state the model returns at every step token ([steps, hidden],
        float32, CPU): the policy's last, or block k's once a value head with `layer` cut
        the model; and the tokens read per sample (computed as `score` computes)."""
        items = self.encode_all(questions, texts, step_ends, batch_size)
        feats = self.run(items, batch_size, lambda out, r, item: out[r, item.positions].float().cpu())
        return feats, [len(item.input_ids) for item in items]


class LogprobPRM(PolicyPRM):
    format = "logprob"

    def read(self, out, row, item):
        import torch

        hidden = out[row]
        first = max(item.extra["prompt_end"] + 1, 1)  # first token whose log-prob is known
        last = item.positions[-1]
        ids = torch.tensor(item.input_ids, device=hidden.device)
        head = self.model.get_output_embeddings()
        logps = []
        for lo in range(first, last + 1, LOGIT_CHUNK):
            hi = min(lo + LOGIT_CHUNK, last + 1)
            logits = head(hidden[lo - 1:hi - 1]).float().log_softmax(dim=-1)
            logps.append(logits.gather(1, ids[lo:hi, None])[:, 0])
        logp = torch.cat(logps) if logps else torch.zeros(0, device=hidden.device)
        scores = []
        prev = item.extra["prompt_end"]
        for p in item.positions:
            lo, hi = max(prev + 1, first), p
            if hi < lo:
                lo = hi = max(p, first)
            segment = logp[lo - first:hi - first + 1]
            scores.append(math.exp(float(segment.mean())) if segment.numel() else float("nan"))
            prev = max(prev, p)
        return scores
