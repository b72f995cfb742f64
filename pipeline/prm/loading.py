"""Opening a config's PRM entry, and what the schema cannot check about one.

`open_prm` gives the scorer object of a `prms:` entry (pipeline.prm.load), bound to the
policy model where the format reads the policy itself (value-head, logprob); the score,
train and search stages all open their PRM here, and a value head the workflow fitted is
checked against its checksums first (pipeline.core.integrity). `check_config` runs at
workflow-parse time, so a wrong entry fails before any engine starts, naming the key.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core import integrity, layout
from pipeline.engine import models
from pipeline.prm import labels, precision


def open_prm(spec: dict, *, policy_dir: str, head_dir: str | None):
    """The PRM object for a config entry, bound to the policy where the format needs it."""
    from pipeline import prm

    fmt, options = spec["format"], dict(spec.get("options", {}))
    if fmt == "value-head":
        if head_dir is not None and (layout.locate(head_dir) or (Path(head_dir) / integrity.DIR_RECORD).exists()):
            integrity.check(head_dir)  # a head the workflow fitted must match its SHA256SUMS
        return prm.load(fmt, head_dir, policy=policy_dir, **options)
    if fmt == "logprob":
        return prm.load(fmt, policy_dir, **options)
    return prm.load(fmt, spec.get("model"), **options)


# Options of a value-head entry that say how to load the policy (the rest tune the fit).
LOAD_OPTIONS = ("device", "dtype", "tokenizer", "revision", "trust_remote_code")
TAGGED_FORMATS = ("math-shepherd", "qwen-prm", "llemma-prm")
POLICY_FORMATS = ("value-head", "logprob")  # read the policy model itself


def check_config(config: dict) -> None:
    """What the schema cannot say about `prms:`, checked at workflow-parse time so a
    wrong entry fails before any engine starts, naming the key."""
    for name, spec in config.get("prms", {}).items():
        fmt, where = spec["format"], f"prms.{name}"
        precision.check(spec, where)
        if fmt == "value-head" and "train" not in spec:
            raise ValueError(f"{where}: format 'value-head' needs `train` (the samples the workflow fits the head on)")
        if fmt != "value-head" and "train" in spec:
            raise ValueError(f"{where}.train: only value-head PRMs are fitted by the workflow, not format {fmt!r}")
        if fmt == "value-head":
            labels.check_config(name, spec)
        if fmt in POLICY_FORMATS and "model" in spec:
            raise ValueError(
                f"{where}.model: format {fmt!r} reads each policy model itself; remove `model` "
                f"(an external PRM needs one of {TAGGED_FORMATS})"
            )
        model = spec.get("model")
        if model is not None and (Path(model).expanduser().exists() or models._looks_local(model)):
            d = Path(model).expanduser()
            if not d.is_dir() or not (d / "config.json").is_file():
                raise FileNotFoundError(f"{where}.model: {model} is not a Hugging Face model directory (no config.json)")
