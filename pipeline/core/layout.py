"""The results folder's files: what each one is, what it is computed from, and what a
damaged one takes to regenerate.

Every output the workflow writes lives at a fixed place under `results/` (the rules in
rules/*.smk name them; this module mirrors them for the tools that inspect a results
folder without Snakemake: `pipeline.core.integrity` and `python -m pipeline.verify`).
`parse` turns a path into an `Entry` (its kind and the fields of its name); `inputs`
gives what the rule that writes it reads, each with whether the rule marks it
`ancient()` (re-making such an input never reruns the consumer); `regeneration` is the
set of files to remove and remake, so that Snakemake redoes a damaged file and nothing
it would refuse to redo.

Why a damaged file cannot simply be deleted and the workflow rerun (checked with
Snakemake 9): Snakemake does not remake a missing file while the outputs made from it
are up to date, so the file must be asked for by name (a run with it as target,
"phase 1"); and a file re-made in a run makes every consumer rerun *in that run*,
ancient() or not ("Input files updated by another job"), while in a later run only
consumers that read it without ancient() rerun (its modification time is newer). A
consumer whose output is protected (samples, scores, searches, rollouts) would be
refused (or, as root, recomputed). So the regeneration set T grows from the damaged
files until no protected file, and no file that protected ones are made from, would
rerun in the normal run after phase 1 ("phase 2"): for a sample shard, its score
shards; for a value head, every score shard it made; for a training shard, the
training grades; for the dequantised model, its info.json.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

# A training cache's dataset is "<prm>-train" (pipeline.workflow.plan).
TRAIN_SUFFIX = "-train"

_NAME = r"[^/]+"
_KEY = r"[0-9a-f]{12}"
_SHARD = r"p\d{5}-\d{5}_s\d{4}-\d{4}"
_BLOCK = r"p\d{5}-\d{5}"


@dataclass(frozen=True)
class Kind:
    name: str
    pattern: re.Pattern
    is_dir: bool = False
    protected: bool = False  # protected() in its rule: Snakemake never overwrites it
    rule: str = ""


def _kind(name: str, pattern: str, **kw) -> Kind:
    return Kind(name, re.compile(pattern), **kw)


KINDS: tuple[Kind, ...] = (
    _kind("problems", rf"problems/(?P<d>{_NAME})\.parquet", rule="problems"),
    _kind("model_dir", rf"models/(?P<m>{_NAME})/hf", is_dir=True, rule="embedded_model"),
    _kind("info", rf"models/(?P<m>{_NAME})/info\.json", rule="model_info"),
    _kind("samples", rf"samples/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<key>{_KEY})/(?P<shard>{_SHARD})\.parquet",
          protected=True, rule="generate"),
    _kind("grades", rf"grades/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<key>{_KEY})\.parquet", rule="grade"),
    _kind("scores", rf"scores/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<key>{_KEY})/(?P<prm>{_NAME})/(?P<shard>{_SHARD})"
          r"\.parquet", protected=True, rule="score"),
    _kind("rollouts", rf"rollouts/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<key>{_KEY})/rollouts\.parquet",
          protected=True, rule="rollouts"),
    _kind("value_head", rf"prms/(?P<m>{_NAME})/(?P<prm>{_NAME})", is_dir=True, rule="train_value_head"),
    _kind("leaves", rf"search/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<prm>{_NAME})/(?P<search>{_NAME})/(?P<key>{_KEY})/"
          rf"(?P<budget>\d+)/(?P<block>{_BLOCK})\.leaves\.parquet", protected=True, rule="search"),
    _kind("search", rf"search/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<prm>{_NAME})/(?P<search>{_NAME})/(?P<key>{_KEY})/"
          rf"(?P<budget>\d+)/(?P<block>{_BLOCK})\.parquet", protected=True, rule="search"),
    _kind("replay", rf"replay/(?P<d>{_NAME})/(?P<m>{_NAME})\.parquet", rule="replay"),
    _kind("replay_prm", rf"replay_prm/(?P<d>{_NAME})/(?P<m>{_NAME})/(?P<prm>{_NAME})\.parquet", rule="replay_prm"),
    _kind("database", r"inference\.duckdb", rule="aggregate"),
)
KIND = {k.name: k for k in KINDS}
# The caches that cost model time (the "shards"): what a damaged-file message
# and `verify` call paid-for.
CACHES = ("samples", "scores", "search", "leaves", "rollouts", "value_head", "model_dir")


@dataclass(frozen=True)
class Entry:
    """One file (or directory output) of a results folder: `rel` is its path below the
    results folder, `fields` the parts of its name (d, m, key, shard, prm, ...)."""

    kind: str
    rel: str
    fields: dict = field(compare=False, hash=False)

    @property
    def protected(self) -> bool:
        return KIND[self.kind].protected

    def get(self, name: str) -> str | None:
        return self.fields.get(name)


def parse(rel: str | PurePosixPath) -> Entry | None:
    """The Entry of a path below the results folder (posix, relative), or None."""
    rel = str(rel)
    for kind in KINDS:
        m = kind.pattern.fullmatch(rel)
        if m:
            return Entry(kind.name, rel, m.groupdict())
    return None


def locate(path: str | Path) -> tuple[Path, Entry] | None:
    """(results folder, Entry) of a path anywhere on disk whose tail is a results-folder
    file (e.g. results/samples/.../p00000-00064_s0000-0008.parquet), else None."""
    parts = Path(path).parts
    for i in range(len(parts)):
        found = parse(PurePosixPath(*parts[i:]))
        if found and i > 0:
            return Path(*parts[:i]), found
    return None


# --------------------------------------------------------------------------- the rules' inputs


def inputs(e: Entry, index: "Index") -> list[tuple[Entry, bool]]:
    """What the rule writing `e` reads, among the files in `index`: (entry, ancient).
    Mirrors rules/*.smk; where a rule reads one cache of several (replays), every
    cache of that dataset and model is named (a superset, harmless for what uses it)."""
    f, k = e.fields, e.kind
    d, m = f.get("d"), f.get("m")
    if k == "info":
        return [(x, False) for x in index.find("model_dir", m=m)]
    if k == "samples":
        return [(x, True) for x in index.find("problems", d=d) + index.find("info", m=m)]
    if k == "grades":
        return [(x, False) for x in index.find("problems", d=d) + index.find("samples", d=d, m=m, key=f["key"])]
    if k == "scores":
        return ([(x, False) for x in index.find("samples", d=d, m=m, key=f["key"], shard=f["shard"])]
                + [(x, False) for x in index.find("value_head", m=m, prm=f["prm"])]
                + [(x, True) for x in index.find("problems", d=d) + index.find("info", m=m)])
    if k == "rollouts":
        return [(x, True) for x in index.find("problems", d=d) + index.find("samples", d=d, m=m)
                + index.find("info", m=m)]
    if k == "value_head":  # every input ancient (rules/common.smk, get_training_inputs)
        train = f"{f['prm']}{TRAIN_SUFFIX}"
        return [(x, True) for x in index.find("problems", d=train) + index.find("grades", d=train, m=m)
                + index.find("samples", d=train, m=m) + index.find("info", m=m) + index.find("rollouts", d=train, m=m)]
    if k in ("search", "leaves"):
        return [(x, True) for x in index.find("problems", d=d) + index.find("info", m=m)
                + index.find("value_head", m=m, prm=f["prm"])]
    if k == "replay":
        return [(x, False) for x in index.find("grades", d=d, m=m) + index.find("samples", d=d, m=m)
                + index.find("info", m=m)]
    if k == "replay_prm":
        return [(x, False) for x in index.find("grades", d=d, m=m) + index.find("samples", d=d, m=m)
                + index.find("scores", d=d, m=m, prm=f["prm"]) + index.find("info", m=m)]
    if k == "database":
        return [(x, False) for x in index.entries if x.kind not in ("database", "model_dir")]
    return []  # problems, model_dir: made from the config alone


def job_outputs(e: Entry, index: "Index") -> list[Entry]:
    """The other outputs of the job that writes `e` (a tree search writes two files)."""
    if e.kind in ("search", "leaves"):
        other = "leaves" if e.kind == "search" else "search"
        fields = {n: e.fields[n] for n in ("d", "m", "prm", "search", "key", "budget", "block")}
        return index.find(other, **fields)
    return []


class Index:
    """The results-folder files that exist, by kind, and who reads each (inverted `inputs`)."""

    def __init__(self, entries: Iterable[Entry]):
        self.entries = sorted(set(entries), key=lambda e: e.rel)
        self.by_kind: dict[str, list[Entry]] = {}
        for e in self.entries:
            self.by_kind.setdefault(e.kind, []).append(e)
        self._consumers: dict[Entry, list[tuple[Entry, bool]]] | None = None

    def find(self, kind: str, **fields: str | None) -> list[Entry]:
        return [e for e in self.by_kind.get(kind, []) if all(e.fields.get(n) == v for n, v in fields.items())]

    def consumers(self, e: Entry) -> list[tuple[Entry, bool]]:
        if self._consumers is None:
            self._consumers = {}
            for c in self.entries:
                for x, ancient in inputs(c, self):
                    self._consumers.setdefault(x, []).append((c, ancient))
        return self._consumers.get(e, [])

    def feeds_protected(self, e: Entry, _seen: frozenset = frozenset()) -> bool:
        """Whether a protected file is made from `e`, directly or through files that are
        not protected (rerunning `e` in a run would rerun it)."""
        for c, _ in self.consumers(e):
            if c.protected or (c not in _seen and self.feeds_protected(c, _seen | {e})):
                return True
        return False


def regeneration(damaged: Iterable[Entry], index: Index) -> tuple[list[Entry], dict[Entry, str]]:
    """The files to remove and remake with Snakemake as targets (phase 1; see the module
    docstring), so that the normal run after it (phase 2) redoes only what is computed
    from them and reruns nothing protected. Returns (T sorted, why each was added)."""
    why: dict[Entry, str] = {}
    todo = list(damaged)
    for e in todo:
        why.setdefault(e, "damaged")
    while todo:
        e = todo.pop()
        for other in job_outputs(e, index):
            if other not in why:
                why[other] = f"written by the same job as {e.rel}"
                todo.append(other)
        for c, ancient in index.consumers(e):
            if ancient or c in why:
                continue  # read through ancient(): a re-made input never reruns it
            # c would rerun in phase 2 (its input is newer): fine for a derived table,
            # not for a protected file or one that protected files are made from
            if c.protected:
                why[c] = f"computed from {e.rel} (protected: Snakemake would refuse to recompute it)"
                todo.append(c)
            elif index.feeds_protected(c):
                why[c] = f"computed from {e.rel}; protected files are made from it"
                todo.append(c)
    return sorted(why, key=lambda x: x.rel), why
