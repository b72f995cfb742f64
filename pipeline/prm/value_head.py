"""value-head: logistic regression on the policy's own hidden state at each step end.

score = sigmoid(w . (h - mean) / std + b), h the policy's hidden state at the token that
ends the step: by default the final (normed) one; with `layer` = k the output of the
first k decoder blocks (transformers' `hidden_states[k]`), computed by running only those
blocks (pipeline.prm.base.first_layers, k/depth of a pass; the FLOPs count only them).
Middle layers of a small policy tell right steps from wrong ones better than its last
(README, "Why this default"). h is read from one forward pass over
`prompt_template.format(question) + solution` (default "Question: {q}\\nAnswer:\\n{solution}",
a short context: see pipeline/prm/policy.py for why).

Training (`train_value_head`) is outcome supervision by default: every step of a sample
gets the sample's final correctness label. `labels_per_step` replaces that with one
target in [0, 1] per step (e.g. Math-Shepherd completion estimates). Features are
standardised with the training mean/std; the fit is full-batch L-BFGS (strong Wolfe line
search, at most `epochs` iterations, `lr` its step size) on the mean binary cross-entropy
plus `l2 / 2 * |w|^2` (the bias is not penalised), from w = 0 and b = logit(mean target).

Saved as a directory: value_head.safetensors (weight, bias, mean, std, float32) and
value_head.json (format, policy path (relative to the head when local), policy identity, prompt template, layer
(null: the final hidden state), training stats).
Loading checks the policy's identity (pipeline.prm.policy.policy_identity) unless
check_policy=False; `policy=` points a head at a moved copy of its policy.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.prm.base import count_parameters, first_layers
from pipeline.prm.policy import PolicyPRM, policy_identity

WEIGHTS = "value_head.safetensors"
META = "value_head.json"


class ValueHead(PolicyPRM):
    format = "value-head"

    def __init__(
        self,
        policy: str | Path,
        weight: Any,
        bias: Any,
        mean: Any,
        std: Any,
        *,
        prompt_template: str | None = None,
        name: str | None = None,
        identity: str | None = None,
        training: dict[str, Any] | None = None,
        layer: int | None = None,
        **options: Any,
    ) -> None:
        import torch

        self.name = name or f"value-head:{policy}"
        super().__init__(policy, prompt_template=prompt_template, **options)
        self.layer = None if layer is None else int(layer)
        if self.layer is not None:
            self.model = first_layers(self.model, self.layer)
            self.num_parameters = count_parameters(self.model)
        self.identity = identity or policy_identity(policy, self.revision)
        self.weight = torch.as_tensor(weight, dtype=torch.float32).reshape(-1).cpu().clone()
        self.bias = torch.as_tensor(bias, dtype=torch.float32).reshape(()).cpu().clone()
        # fresh copies: tensors memory-mapped from safetensors can take other kernel paths
        # and round differently, breaking exact save/load round trips
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1).cpu().clone()
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1).cpu().clone()
        self.training = dict(training or {})
        hidden = self.model.get_output_embeddings().weight.shape[-1]
        for what, t in (("weight", self.weight), ("mean", self.mean), ("std", self.std)):
            if t.numel() != hidden:
                raise ValueError(f"{self.name}: {what} has {t.numel()} entries, the policy's hidden size is {hidden}")
        self.num_parameters = self.num_parameters + hidden + 1

    # -- scoring -----------------------------------------------------------------
    def head(self, hidden: Any) -> Any:
        """Scores for hidden states [..., hidden] (float32)."""
        dev = hidden.device
        z = (hidden.float() - self.mean.to(dev)) / self.std.to(dev)
        return (z @ self.weight.to(dev) + self.bias.to(dev)).sigmoid()

    def read(self, out, row, item):
        return self.head(out[row, item.positions])

    # -- persistence -------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {"weight": self.weight.contiguous(), "bias": self.bias.reshape(1).contiguous(),
             "mean": self.mean.contiguous(), "std": self.std.contiguous()},
            str(path / WEIGHTS),
        )
        meta = {
            "format": self.format,
            # a local policy relative to the head, so a copied results folder still finds it
            "policy": (os.path.relpath(Path(self.policy).resolve(), path.resolve())
                       if Path(self.policy).is_dir() else self.policy),
            "policy_revision": self.revision,
            "policy_identity": self.identity,
            "prompt_template": self.prompt_template,
            "layer": self.layer,
            "hidden_size": int(self.weight.numel()),
            "training": self.training,
        }
        (path / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: str | Path, *, policy: str | Path | None = None, check_policy: bool = True,
             **options: Any) -> "ValueHead":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / META).is_file() or not (path / WEIGHTS).is_file():
            raise FileNotFoundError(f"{path}: not a value head directory (needs {META} and {WEIGHTS})")
        meta = json.loads((path / META).read_text())
        tensors = load_file(str(path / WEIGHTS))
        if policy is None:
            policy = meta["policy"]
            if not Path(policy).is_absolute() and (path / policy).is_dir():  # saved relative to the head
                policy = str((path / policy).resolve())
        policy = str(policy)
        revision = options.pop("revision", meta.get("policy_revision"))
        if check_policy:
            found = policy_identity(policy, revision)
            if found != meta["policy_identity"]:
                raise ValueError(
                    f"value head {path} was trained on a policy with identity {meta['policy_identity']}, "
                    f"but {policy} has {found} (pass check_policy=False to override)"
                )
        return cls(policy, tensors["weight"], tensors["bias"][0], tensors["mean"], tensors["std"],
                   prompt_template=meta["prompt_template"], name=str(path), identity=meta["policy_identity"],
                   training=meta.get("training"), revision=revision, layer=meta.get("layer"), **options)

    @classmethod
    def open(cls, model, **options):
        if model is None:
            raise ValueError("value-head PRM needs the value head directory as `model`")
        return cls.load(model, **options)


def train_value_head(
    policy_dir: str | Path,
    questions: Sequence[str],
    texts: Sequence[str],
    step_ends: Sequence[Sequence[int]],
    labels: Sequence[bool | float] | None,
    *,
    prompt_template: str | None = None,
    epochs: int = 100,
    lr: float = 1.0,
    l2: float = 1e-3,
    seed: int = 0,
    labels_per_step: Sequence[Sequence[float]] | None = None,
    batch_size: int = 8,
    layer: int | None = None,
    **options: Any,
) -> ValueHead:
    """Fit a value head on the policy's step hidden states (see the module docstring).

    `labels`: per-sample final correctness (every step gets it); ignored, and may be None,
    when `labels_per_step` gives one target per step. `layer`: read the output of the
    policy's first `layer` decoder blocks (None: the final hidden state). `options`: device, dtype,
    tokenizer, revision, trust_remote_code (as for loading the policy).
    """
    import torch

    encoder = PolicyPRM.__new__(PolicyPRM)
    encoder.format = "value-head"
    encoder.name = f"value-head:{policy_dir}"
    PolicyPRM.__init__(encoder, policy_dir, prompt_template=prompt_template, **options)
    if layer is not None:
        encoder.model = first_layers(encoder.model, layer)

    n = len(texts)
    if labels_per_step is not None:
        if len(labels_per_step) != n:
            raise ValueError(f"labels_per_step has {len(labels_per_step)} entries for {n} samples")
        targets = []
        for i, (row, ends) in enumerate(zip(labels_per_step, step_ends)):
            if len(row) != len(ends):
                raise ValueError(f"labels_per_step: sample {i} has {len(row)} labels for {len(ends)} steps")
            targets.append([float(v) for v in row])
    else:
        if labels is None or len(labels) != n:
            raise ValueError(f"labels must give one label per sample ({n})")
        targets = [[float(label)] * len(ends) for label, ends in zip(labels, step_ends)]
    flat = [v for row in targets for v in row]
    if any(not (0.0 <= v <= 1.0) for v in flat):
        raise ValueError("labels must lie in [0, 1]")

    feats, tokens = encoder.step_hidden(list(questions), list(texts), [list(e) for e in step_ends], batch_size=batch_size)
    x = torch.cat(feats).double()
    y = torch.tensor(flat, dtype=torch.float64)
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    z = (x - mean) / std

    torch.manual_seed(seed)
    prior = min(max(float(y.mean()), 1e-4), 1 - 1e-4)
    w = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(math.log(prior / (1 - prior)), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=lr, max_iter=int(epochs), history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z @ w + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
        final = float(closure().detach())

    with torch.no_grad():
        train_scores = torch.sigmoid(z @ w + b).tolist()
    hard = [1 if v >= 0.5 else 0 for v in flat]
    training = {
        "samples": n, "steps": len(flat), "tokens": int(sum(tokens)), "loss": final,
        "train_auc": auc(train_scores, hard) if 0 < sum(hard) < len(hard) else None,
        "supervision": "per-step" if labels_per_step is not None else "outcome",
        "epochs": int(epochs), "lr": lr, "l2": l2, "seed": seed, "layer": layer,
    }
    return ValueHead(policy_dir, w.detach().float(), b.detach().float(), mean.float(), std.float(),
                     prompt_template=encoder.prompt_template, revision=encoder.revision, training=training, layer=layer,
                     _loaded=(encoder.model, encoder.tokenizer))


def auc(scores: Sequence[float], labels: Sequence[bool | int | float]) -> float:
    """ROC AUC as the Mann-Whitney statistic: P(score of a positive > score of a
    negative), ties counting half (pipeline.core.auc). Labels are truthy = positive.
    Raises ValueError when either class is empty or a score is not finite."""
    from pipeline.core.auc import auc as mann_whitney

    positive = [bool(label) for label in labels]
    value = mann_whitney(scores, positive)
    if value is None:
        n_pos = sum(positive)
        raise ValueError(f"auc needs both classes (positives {n_pos}, negatives {len(positive) - n_pos})")
    return value
