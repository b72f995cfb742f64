"""The precision a PRM computes in: from its config entry, the same on every device.

A `prms:` entry's `options.dtype` (float32, bfloat16, float16) is the dtype its weights
are loaded in and its forward passes run in. Unset (or "auto") it is DEFAULT, float32,
on every device: a value head fitted on a CPU scores in the precision it was fitted in
on a GPU too, and the same cache scored on two machines gives the same scores up to
float rounding (bfloat16 moves a value head's scores by up to 0.09-0.23, README).

Keys. The dtype is part of what a score or search output stands for: an entry that sets
`options.dtype` carries it in the score rule's params and the search key (as before); an
entry that leaves it unset keeps its params and key and means float32. Every score,
search and value-head output records the dtype it was computed in (`dtype` in its
timing record, pipeline.core.timing).

Folders begun before this rule. An unset dtype used to mean bfloat16 on CUDA and
float32 on a CPU. A score or search folder of such an entry that already holds outputs
keeps their precision (`for_folder`): the dtype its outputs record, or, in records
written before dtypes were recorded, the one their device implied (a GPU: bfloat16; a
CPU: float32). So one cache never mixes precisions, and its params (a rerun trigger of
the protected score and search rules) stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

DEFAULT = "float32"
NAMES = ("float32", "bfloat16", "float16", "float64")
LEGACY_CUDA = "bfloat16"  # what an unset dtype meant on CUDA before this rule


def configured(spec: dict) -> str | None:
    """The entry's own `options.dtype` (None when unset or "auto")."""
    dtype = (spec.get("options") or {}).get("dtype")
    if dtype is None or dtype == "auto":
        return None
    name = str(dtype).removeprefix("torch.")
    return {"float": "float32", "half": "float16"}.get(name, name)


def resolve(spec: dict) -> str:
    """The dtype an entry computes in: its own, else DEFAULT."""
    return configured(spec) or DEFAULT


def check(spec: dict, where: str) -> None:
    dtype = configured(spec)
    if dtype is not None and dtype not in NAMES:
        raise ValueError(f"{where}.options.dtype: {spec['options']['dtype']!r} is not one of {NAMES} (or auto)")


def _is_gpu(device: str) -> bool:
    # pipeline.core.timing.describe_device: a CPU reads "<model> (<n> cores)"; a search's
    # "<policy device>, PRM on <PRM device>" names the PRM's last
    prm = device.rsplit("PRM on ", 1)[-1]
    return not prm.rstrip().endswith("cores)")


def recorded(record: dict[str, Any] | None) -> str | None:
    """The dtype an output was computed in, from its timing record: the recorded one, or
    for a record without it (written before dtypes were recorded, by an entry without a
    dtype) the device's old default; None without a record."""
    if not record:
        return None
    if record.get("dtype"):
        return str(record["dtype"])
    device = record.get("device")
    if not device:
        return None
    return LEGACY_CUDA if _is_gpu(str(device)) else DEFAULT


def for_folder(spec: dict, records: Iterable[dict[str, Any] | None]) -> str:
    """The dtype for a new output beside outputs with these timing records: the entry's
    own when set; else the one the folder's outputs were computed in, when they agree;
    else DEFAULT."""
    own = configured(spec)
    if own is not None:
        return own
    found = {d for d in (recorded(r) for r in records) if d is not None}
    return found.pop() if len(found) == 1 else DEFAULT


def folder_records(folder: str | Path, pattern: str, *, exclude: str | None = None) -> list[dict[str, Any] | None]:
    """The timing records of the finished outputs in `folder` matching `pattern` (hidden
    temporary files and names ending in `exclude` left out)."""
    from pipeline.core import timing

    out = []
    for f in sorted(Path(folder).glob(pattern)):
        if f.name.startswith(".") or (exclude and f.name.endswith(exclude)):
            continue
        try:
            out.append(timing.read_record(f))
        except (OSError, ValueError):  # unreadable or malformed: says nothing about precision
            continue
    return out
