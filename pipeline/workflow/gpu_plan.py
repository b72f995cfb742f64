"""The GPU memory plan: every GPU job of a config, checked against the GPUs it will have
before any job starts (rules/common.smk runs it at parse time, so `snakemake -n` fails).

Job groups. The jobs of one rule that run the same models need the same memory, so the
plan sizes groups: `generate` per policy model, `rollouts` per policy model,
`train_value_head` per (model, value head), `score` per (model, PRM), `search` per
(model, PRM, search entry). Sizes come from pipeline.engine.memory_plan (the policy in
vLLM at tensor-parallel size tp; a PRM in transformers on one GPU, in its dtype
(pipeline.prm.precision), with the working memory its CUDA batch budgets need for a
forward pass of one whole sequence of the policy's max_model_len tokens:
pipeline/prm/memory.py, pipeline/prm/batching.py).

Targets: the GPUs a rule's jobs get. A rule whose resources (the SLURM profile's
`set-resources`, or --set-resources) name `gpu_model`, `gpu_mem_mib` (memory of one GPU,
MiB) or `gpu` is planned for that: `gpu` GPUs per job when given, else as many as the plan
needs (the rule's `gpu` resource then asks for exactly that), of `gpu_mem_mib` each. Any
other rule runs here: on this machine's GPUs (memory_plan.local_gpus), or on the CPU when
it has none (nothing to plan: every job keeps `gpu: 1`, as before).

Placement (memory_plan.place): the fewest GPUs that fit; in a search job the PRM on its
own GPU or beside the policy (`search.<name>.prm_device`: auto, separate or shared). A
group that cannot fit fails the plan (`check`), naming the rule, its models, their
numbers and what would fit: more GPUs per job, tensor parallelism, the PRM on its own
GPU, larger GPUs, a smaller dtype. A model whose size no source knows, or a target whose
GPU memory is unknown, is not checked (`warnings` say which).

The placements reach the jobs through the environment (`ENV`, JSON: cache, rollout or
search key -> gpus, tp, prm_gpu, reserve): Snakemake's jobs inherit the environment of
the process that parsed the workflow (a SLURM job step parses it again), so neither the
shell command nor the params of the protected rules change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.engine import memory_plan as mp
from pipeline.prm import memory as prm_memory
from pipeline.prm import precision

GPU_RULES = ("generate", "rollouts", "train_value_head", "score", "search")
ENV = mp.PLAN_ENV
TARGET_KEYS = ("gpu", "gpu_model", "gpu_mem_mib")
LARGER_GPUS_GIB = (24, 40, 48, 80, 94, 141, 192)  # common GPU sizes, for "what would fit"


@dataclass(frozen=True)
class Target:
    """The GPUs each job of a rule gets: `count` fixed or None (as many as the plan needs,
    up to `most`), of `mem` bytes each (None: unknown); `count` 0 = the CPU."""

    count: int | None
    most: int
    mem: int | None
    where: str

    @property
    def cpu(self) -> bool:
        return self.count == 0

    def describe(self) -> str:
        size = mp.gib(self.mem) if self.mem else "unknown memory"
        n = f"{self.count}" if self.count is not None else f"up to {self.most}"
        return f"{n} x {size} per job ({self.where})"


def targets(rule_resources: dict[str, dict[str, Any]], local: mp.GPUs) -> dict[str, Target]:
    """The target of every GPU rule from its set resources (raw values), else this machine."""
    out = {}
    for rule in GPU_RULES:
        res = {k: v for k, v in (rule_resources.get(rule) or {}).items() if k in TARGET_KEYS}
        if res:
            where = "resources of rule " + rule + ": " + ", ".join(f"{k} {v}" for k, v in sorted(res.items()))
            count = _int(res.get("gpu"), f"{rule}: gpu")
            mib = _int(res.get("gpu_mem_mib"), f"{rule}: gpu_mem_mib")
            out[rule] = Target(count, count or mp.MAX_GPUS, mib * mp.MiB if mib else None, where)
        elif local.count == 0:
            out[rule] = Target(0, 0, None, f"this machine: {local.label}")
        else:
            out[rule] = Target(None, local.count, local.mem, f"this machine: {local.describe()}")
    return out


def _int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    try:
        return int(str(value).strip("'\""))
    except ValueError:
        raise ValueError(f"GPU plan: resource {where} = {value!r} is not a whole number") from None


@dataclass
class Group:
    """The jobs of one rule that run the same models."""

    rule: str
    match: dict[str, str]  # wildcard values of its jobs
    keys: tuple[str, ...]  # cache, rollout or search keys of its jobs (ENV)
    jobs: int
    target: Target
    policy: tuple[mp.Shape, dict] | None = None
    prm: mp.Need | None = None
    prefer: str = "auto"
    tp: int | None = None
    unknown: list[str] = field(default_factory=list)
    placement: mp.Placement | None = None
    # for "what would fit": how to rebuild the PRM need in another dtype
    prm_entry: tuple[str, dict, mp.Shape, int, int] | None = None

    def label(self) -> str:
        names = {"model": "model", "prm": "PRM", "trained": "value head", "search": "search"}
        what = ", ".join(f"{names[k]} {v}" for k, v in self.match.items())
        return f"rule {self.rule} ({what}; {self.jobs} job{'s' if self.jobs != 1 else ''})"

    @property
    def checked(self) -> bool:
        return not self.target.cpu and self.target.mem is not None and not self.unknown

    def gpus(self) -> int:
        if self.target.cpu:
            return 1
        if self.target.count is not None:
            return self.target.count
        return self.placement.gpus if self.placement is not None else 1


class Plan:
    """The groups of a config's GPU jobs with their targets and placements, and the
    warnings about groups it could not check."""

    def __init__(self, groups: list[Group], warnings: list[str]) -> None:
        self.groups, self.warnings = groups, warnings

    def gpus(self, rule: str, wildcards: dict[str, str]) -> int:
        """GPUs per job of `rule` with these wildcard values (1 where nothing is planned)."""
        for g in self.groups:
            if g.rule == rule and all(wildcards.get(k) == v for k, v in g.match.items()):
                return g.gpus()
        return 1

    def failures(self) -> list[Group]:
        return [g for g in self.groups if g.checked and g.placement is None]

    def check(self) -> None:
        """Raise ValueError naming every group that cannot fit, with its numbers."""
        failed = self.failures()
        if failed:
            raise ValueError("GPU memory plan: " + (f"{len(failed)} job groups do" if len(failed) > 1 else "a job group does")
                             + " not fit the GPUs they will have (estimates: pipeline/engine/memory_plan.py; README, "
                             "\"GPU memory plan\")\n" + "\n".join(explain(g) for g in failed))

    def environment(self) -> str:
        """ENV's value: what each vLLM job of a checked group needs to place its models."""
        out = {}
        for g in self.groups:
            if g.placement is None:
                continue
            p = g.placement
            reserve = (p.needs[-1].total - dict(p.needs[-1].parts)["weights"]) if p.shared else 0
            for key in g.keys:
                out[key] = {"gpus": p.gpus, "tp": p.tp, "prm_gpu": p.prm_gpu, "reserve": reserve}
        return json.dumps(out, sort_keys=True)

    def summary(self) -> str:
        lines = []
        for g in self.groups:
            if g.target.cpu:
                continue
            if g.placement is not None:
                lines.append(f"  {g.label()}: {g.placement.describe()}")
            elif not g.checked:
                lines.append(f"  {g.label()}: not checked ({'; '.join(g.unknown) or 'GPU memory unknown'})")
        return ("GPU memory plan:\n" + "\n".join(lines)) if lines else ""


def explain(g: Group) -> str:
    """Why a group does not fit, and what would."""
    t = g.target
    lines = [f"- {g.label()} on {t.describe()}, {mp.gib(mp.USABLE * t.mem)} usable per GPU:"]
    if g.policy is not None:
        lines.append("    " + mp.engine_need(g.policy[0], g.policy[1], g.tp or 1).describe())
    if g.prm is not None:
        lines.append("    " + g.prm.describe())
    lines.append("    would fit: " + "; ".join(suggestions(g)))
    return "\n".join(lines)


def _place(g: Group, mem: int, *, count: int | None = None, prm: mp.Need | None = None,
           policy: tuple[mp.Shape, dict] | None = None, prefer: str | None = None, tp: int | None = None,
           keep_tp: bool = True, most: int = mp.MAX_GPUS) -> mp.Placement | None:
    return mp.place(mem, policy=policy or g.policy, prm=prm or g.prm, count=count,
                    prefer=prefer or g.prefer, tp=g.tp if keep_tp else tp, max_gpus=most)


def suggestions(g: Group) -> list[str]:
    t, out = g.target, []
    more = _place(g, t.mem)
    if more is not None:
        how = (f"set `gpu: {more.gpus}` for rule {g.rule} in the profile's set-resources, or leave `gpu` out and "
               "the plan requests it" if t.count is not None else f"this machine has {t.most}")
        out.append(f"{more.describe()} per job ({how})")
    if g.tp is not None:
        free = _place(g, t.mem, count=t.count, keep_tp=False)
        if free is not None:
            out.append(f"drop models.{g.match['model']}.engine_args.tensor_parallel_size {g.tp}: {free.describe()}")
    if g.prefer != "auto" and g.rule == "search":
        other = _place(g, t.mem, count=t.count, prefer="auto")
        if other is not None:
            out.append(f"search.{g.match['search']}.prm_device: auto (not {g.prefer}): {other.describe()}")
    if g.prm_entry is not None:
        name, spec, shape, longest = g.prm_entry
        if precision.resolve(spec) == "float32":
            half = prm_memory.need(spec, shape, longest=longest, dtype="bfloat16")
            fit = _place(g, t.mem, count=t.count, prm=half, most=t.most) or _place(g, t.mem, prm=half)
            if fit is not None:
                out.append(f"prms.{name}.options.dtype: bfloat16 (the PRM takes {mp.gib(half.total)} instead of "
                           f"{mp.gib(g.prm.total)}): {fit.describe()}")
        if g.prm.total > mp.USABLE * t.mem:
            out.append(f"the PRM alone needs {mp.gib(g.prm.total)} of one GPU (a PRM is never split across GPUs): "
                       f"GPUs of at least {mp.gib(g.prm.total / mp.USABLE)}")
    if g.policy is not None and mp.engine_dtype(*g.policy) == "float32":
        shape, args = g.policy
        half = (shape, {**args, "dtype": "bfloat16"})
        fit = _place(g, t.mem, count=t.count, policy=half, most=t.most) or _place(g, t.mem, policy=half)
        if fit is not None:
            out.append(f"models.{g.match['model']}.engine_args.dtype: bfloat16: {fit.describe()}")
    larger = [size for size in LARGER_GPUS_GIB if size * mp.GiB > t.mem]
    # the smallest larger GPU with as many GPUs as this target offers, then with any count
    for count, most in ((t.count, t.most), (None, mp.MAX_GPUS)):
        fit = next(((size, f) for size in larger
                    if (f := _place(g, size * mp.GiB, count=count, most=most)) is not None), None)
        if fit is not None and f"{fit[0]} GiB GPUs: {fit[1].describe()}" not in out:
            out.append(f"{fit[0]} GiB GPUs: {fit[1].describe()}")
    return out or [f"nothing on up to {mp.MAX_GPUS} GPUs of {LARGER_GPUS_GIB[-1]} GiB: a smaller model or dtype"]


# --------------------------------------------------------------------------- building


def _policy(config: dict, model: str, built: Path) -> tuple[tuple[mp.Shape, dict] | None, list[str], int]:
    cfg = config["models"][model]
    args = dict(cfg.get("engine_args") or {})
    shape = mp.shape_of(cfg["path"], cfg.get("revision"), built_dir=built / model / "hf")
    longest = int(args.get("max_model_len") or mp.DEFAULT_MAX_MODEL_LEN)
    if shape is None:
        return None, [f"the size of model {cfg['path']} is unknown ({_unknown_hint(cfg['path'])})"], longest
    return (shape, args), [], longest


def _unknown_hint(path: str) -> str:
    return (f"put its config.json and model.safetensors.index.json into the Hugging Face cache, e.g. "
            f"`huggingface-cli download {path} config.json model.safetensors.index.json`")


def build(config: dict, caches: list, searches: list, rollouts: list, targets_by_rule: dict[str, Target],
          *, built: str | Path = "results/models") -> Plan:
    """The plan of a config's GPU jobs (sizes computed only for rules that run on GPUs)."""
    built = Path(built)
    prms = config.get("prms", {})
    groups: list[Group] = []
    warnings: list[str] = []
    policies: dict[str, Any] = {}

    def policy(model: str):
        if model not in policies:
            policies[model] = _policy(config, model, built)
        return policies[model]

    def prm_part(name: str, model: str) -> tuple[mp.Need | None, list[str], Any]:
        spec = prms[name]
        mcfg = config["models"][model]
        path, revision = prm_memory.model_of(spec, mcfg["path"], mcfg.get("revision"))
        built_dir = built / model / "hf" if path == mcfg["path"] else None
        shape = mp.shape_of(path, revision, built_dir=built_dir)
        _, _, longest = policy(model)
        if shape is None:
            return None, [f"the size of PRM {name}'s model {path} is unknown ({_unknown_hint(path)})"], None
        need = prm_memory.need(spec, shape, longest=longest)
        return need, [], (name, spec, shape, longest)

    def add(rule: str, match: dict, keys: list[str], jobs: int, *, with_policy: bool, prm: tuple | None = None,
            prefer: str = "auto") -> None:
        target = targets_by_rule[rule]
        g = Group(rule, match, tuple(keys), jobs, target, prefer=prefer)
        groups.append(g)
        if target.cpu or target.mem is None:  # nothing to plan, or nothing to check against
            return
        if with_policy:
            pol, unknown, _ = policy(match["model"])
            g.policy, g.unknown = pol, list(unknown)
            if pol is not None and pol[1].get("tensor_parallel_size") is not None:
                g.tp = int(pol[1]["tensor_parallel_size"])
        if prm is not None:
            need, unknown, entry = prm_part(*prm)
            g.prm, g.prm_entry = need, entry
            g.unknown += unknown
        if g.unknown:
            return
        g.placement = mp.place(target.mem, policy=g.policy, prm=g.prm, count=target.count, prefer=prefer,
                               tp=g.tp, max_gpus=target.most)

    for model in config["models"]:
        model_caches = [c for c in caches if c.model == model]
        add("generate", {"model": model}, [c.key for c in model_caches], sum(len(c.shards) for c in model_caches),
            with_policy=True)
        model_rollouts = [r for r in rollouts if r.model == model]
        if model_rollouts:
            add("rollouts", {"model": model}, [r.key for r in model_rollouts], len(model_rollouts), with_policy=True)
        for name, spec in prms.items():
            if spec["format"] == "value-head":
                add("train_value_head", {"model": model, "trained": name}, [], 1, with_policy=False,
                    prm=(name, model))
            sampled = [c for c in model_caches if c.kind == "sampled"]
            add("score", {"model": model, "prm": name}, [], sum(len(c.shards) for c in sampled), with_policy=False,
                prm=(name, model))
        for entry_name, entry in config.get("search", {}).items():
            for name in entry.get("prms", list(prms)):
                found = [s for s in searches if s.model == model and s.prm == name and s.name == entry_name]
                if not found:
                    continue
                add("search", {"model": model, "prm": name, "search": entry_name}, [s.key for s in found],
                    sum(len(s.budgets) * len(s.blocks) for s in found), with_policy=True,
                    prm=(name, model), prefer=entry.get("prm_device", "auto"))
    for g in groups:
        if g.target.cpu:
            continue
        if g.unknown:
            warnings += [f"GPU plan: {g.label()} not checked: {u}" for u in g.unknown]
        elif g.target.mem is None:
            warnings.append(f"GPU plan: {g.label()} not checked: the GPU memory of {g.target.where} is unknown "
                            "(set gpu_mem_mib, MiB per GPU, beside gpu_model)")
    return Plan(groups, sorted(set(warnings)))


def rule_resources(overwrite_resources: dict) -> dict[str, dict[str, Any]]:
    """Raw values of Snakemake's set resources (workflow.resource_settings.overwrite_resources)."""
    return {rule: {name: getattr(r, "raw", r) for name, r in res.items()} for rule, res in (overwrite_resources or {}).items()}


def from_workflow(config: dict, caches: list, searches: list, rollouts: list, overwrite_resources: dict,
                  env: dict | None = None) -> Plan:
    """What rules/common.smk calls: the plan for this run's targets, checked, its
    placements exported to the jobs' environment (ENV), warnings and summary printed."""
    import sys

    env = os.environ if env is None else env
    by_rule = targets(rule_resources(overwrite_resources), mp.local_gpus(env))
    if all(t.cpu for t in by_rule.values()):
        env[ENV] = "{}"  # no placements (and none inherited from an outer run)
        return Plan([], [])  # everything runs on the CPU: nothing to plan, nothing to read
    plan = build(config, caches, searches, rollouts, by_rule)
    for w in plan.warnings:
        print(w, file=sys.stderr)
    plan.check()
    env[ENV] = plan.environment()
    summary = plan.summary()
    if summary:
        print(summary, file=sys.stderr)
    return plan
