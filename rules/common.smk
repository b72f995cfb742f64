# Config validation first, then the plan (which caches exist) and the get_* helpers.
import json

from snakemake.utils import validate

from pipeline.workflow.overrides import apply_overrides

# `--config` values arrive as strings below the top level; type them before the schema
# reads them (e.g. --config 'sampling={n: 32}').
apply_overrides(config, dict(workflow.config_settings.config))
validate(config, schema="../config/config.schema.yaml", set_default=True)

from pipeline.analysis import allocation
from pipeline.engine import models
from pipeline.workflow import gpu_plan, plan
from pipeline.prm import loading as prm_entries

# What the schema cannot check, before any job: model paths, PRM entries, the adaptive
# allocation's probe (dataset files are parsed and checked by plan.caches, through
# datasets.count_problems).
models.check_sources(config["models"])
prm_entries.check_config(config)
allocation.check_config(config)

# "Every local core" for the engine rules (generate, score, train_value_head, search).
# Snakemake caps a job's threads at --cores, so this means all of them; unlike
# `workflow.cores` it needs no --cores in commands that run no job (`--report`,
# `--summary`, `--list-changes`), which would otherwise stop with "Workflow requires a
# total number of cores to be defined". (A `cores:` key in profiles/default would also
# override profiles/slurm's `cores`: a workflow profile wins key by key.)
ALL_CORES = 1 << 20

CACHES = plan.caches(config)
SEARCHES = plan.searches(config)
ROLLOUTS = plan.rollouts(config, CACHES)
EMBEDDED_MODELS = [m for m, c in config["models"].items() if models.is_embedded(c["path"])]
# Datasets graded by running code in the sandbox (rule grade_code); "(?!)" matches nothing.
CODE_DATASETS = "|".join(re.escape(d) for d in plan.code_datasets(config)) or "(?!)"
PRMS = config.get("prms", {})
# The GPU memory plan (pipeline/workflow/gpu_plan.py): every GPU job's models against the
# GPUs it will have (the rule's gpu / gpu_model / gpu_mem_mib resources, e.g. the SLURM
# profile's, else this machine's); fails here, before any job, when one cannot fit, and
# exports the placements to the jobs' environment. Nothing to plan on a CPU-only machine.
GPU_PLAN = gpu_plan.from_workflow(config, CACHES, SEARCHES, ROLLOUTS,
                                  workflow.resource_settings.overwrite_resources)


def planned_gpus(rule_name):
    """The `gpu` resource of a GPU rule's jobs: what the plan needs (1 where nothing is
    planned); a profile's `gpu` for the rule overrides it, and the plan checks that."""
    return lambda wildcards: GPU_PLAN.gpus(
        rule_name, {k: wildcards.get(k) for k in ("model", "prm", "trained", "search")})


wildcard_constraints:
    dataset="|".join(map(re.escape, plan.all_datasets(config))),
    model="|".join(map(re.escape, config["models"])),
    key="[0-9a-f]{12}",
    shard=r"p\d{5}-\d{5}_s\d{4}-\d{4}",
    embedded="|".join(map(re.escape, EMBEDDED_MODELS)) or "(?!)",
    prm="|".join(map(re.escape, PRMS)) or "(?!)",
    trained="|".join(map(re.escape, plan.trained_prms(config))) or "(?!)",
    search="|".join(map(re.escape, config.get("search", {}))) or "(?!)",
    budget=r"\d+",
    block=r"p\d{5}-\d{5}",


def get_cache(wildcards):
    return plan.find(CACHES, dataset=wildcards.dataset, model=wildcards.model, key=wildcards.key)


def get_cache_prompt(wildcards):
    return json.dumps(get_cache(wildcards).prompt)


def get_execution_spec(wildcards):
    return json.dumps(plan.all_datasets(config)[wildcards.dataset].get("execution", {}), sort_keys=True)


def get_grade_workers(wildcards, threads):
    """Sandboxes at once: most of a sandbox's start is kernel waiting, not CPU, so 4 per core."""
    workers = plan.all_datasets(config)[wildcards.dataset].get("execution", {}).get("workers")
    return workers or 4 * threads


def get_dataset_spec(wildcards):
    return json.dumps(plan.all_datasets(config)[wildcards.dataset])


def get_model_source(wildcards):
    """Only what determines the weights: other model keys must not rerun prepare."""
    name = wildcards.get("model") or wildcards.get("embedded")
    cfg = config["models"][name]
    return json.dumps({k: cfg[k] for k in ("path", "revision") if k in cfg})


def get_built_model(wildcards):
    if wildcards.model in EMBEDDED_MODELS:
        return f"results/models/{wildcards.model}/hf"
    return []


def get_built_model_arg(wildcards, input):
    return f"--model-dir {input.built}" if input.built else ""


def get_generate_spec(wildcards):
    return json.dumps(get_cache(wildcards).spec())


def shard_paths(cache):
    return [
        f"results/samples/{cache.dataset}/{cache.model}/{cache.key}/{s}.parquet"
        for s in cache.shards
    ]


def get_shards(wildcards):
    return shard_paths(get_cache(wildcards))


def get_replay_inputs(wildcards):
    sampled = plan.find(CACHES, dataset=wildcards.dataset, model=wildcards.model, kind="sampled")
    inputs = {
        "grades": f"results/grades/{sampled.dataset}/{sampled.model}/{sampled.key}.parquet",
        "shards": shard_paths(sampled),
        "info": f"results/models/{wildcards.model}/info.json",
    }
    if plan.model_sampling(config, wildcards.model)[1]:
        greedy = plan.find(CACHES, dataset=wildcards.dataset, model=wildcards.model, kind="greedy")
        inputs["greedy_grades"] = f"results/grades/{greedy.dataset}/{greedy.model}/{greedy.key}.parquet"
        inputs["greedy_shards"] = shard_paths(greedy)
    return inputs


def get_greedy_args(wildcards, input):
    if "greedy_grades" not in input.keys():
        return ""
    return f"--greedy-grades {input.greedy_grades} --greedy-shards {' '.join(input.greedy_shards)}"


def get_manifest():
    return {
        "problems": {d: f"results/problems/{d}.parquet" for d in config["datasets"]},
        "models": {m: f"results/models/{m}/info.json" for m in config["models"]},
        "caches": [
            {
                "dataset": c.dataset,
                "model": c.model,
                "kind": c.kind,
                "key": c.key,
                "n": plan.model_sampling(config, c.model)[0] if c.kind == "sampled" else 1,
                "sampling": c.sampling,
                "shards": shard_paths(c),
                "grades": f"results/grades/{c.dataset}/{c.model}/{c.key}.parquet",
            }
            for c in CACHES
            if c.kind != "train"
        ],
        "replay": {
            f"{d}/{m}": f"results/replay/{d}/{m}.parquet"
            for d in config["datasets"]
            for m in config["models"]
        },
        "replay_prm": {
            f"{d}/{m}/{p}": f"results/replay_prm/{d}/{m}/{p}.parquet"
            for d in config["datasets"]
            for m in config["models"]
            for p in plan.model_prms(config, m)
        },
        "scores": [
            {"dataset": c.dataset, "model": c.model, "key": c.key, "prm": p, "files": score_paths(c, p)}
            for c in CACHES
            if c.kind == "sampled"
            for p in plan.model_prms(config, c.model)
        ],
        "search": search_manifest(),
        # Read only for their timing records (the `timings` table): the training
        # samples of the value heads and the heads fitted on them.
        "training": [
            {"dataset": c.dataset, "model": c.model, "kind": c.kind, "key": c.key, "shards": shard_paths(c)}
            for c in CACHES
            if c.kind == "train"
        ],
        "value_heads": [
            {"dataset": f"{p}-train", "model": m, "prm": p, "dir": f"results/prms/{m}/{p}"}
            for m in config["models"]
            for p in plan.trained_prms(config)
            if p in plan.model_prms(config, m)
        ],
    }


def get_search(wildcards):
    return plan.find(SEARCHES, dataset=wildcards.dataset, model=wildcards.model, prm=wildcards.prm,
                     name=wildcards.search, key=wildcards.key)


def get_search_spec(wildcards):
    spec = get_search(wildcards).spec()
    return json.dumps({**spec, "prm": {k: v for k, v in spec["prm"].items() if k != "batch_size"}})


def get_search_head(wildcards):
    # ancient: a head retrained from the same training spec (same search key) must not
    # rerun paid-for searches; a changed spec changes the key instead.
    head = get_value_head(wildcards)
    return ancient(head) if head else []


def search_manifest():
    return [
        {"dataset": s.dataset, "model": s.model, "prm": s.prm, "search": s.name, "key": s.key,
         "algorithm": s.job["algorithm"], "budget": b, "files": s.paths(b)}
        for s in SEARCHES
        for b in s.budgets
    ]


def get_manifest_files():
    m = get_manifest()
    files = list(m["problems"].values()) + list(m["models"].values()) + list(m["replay"].values())
    files += list(m["replay_prm"].values())
    for c in m["caches"]:
        files += c["shards"] + [c["grades"]]
    for s in m["scores"]:
        files += s["files"]
    for s in m["search"]:
        files += s["files"]
    for c in m["training"]:
        files += c["shards"]
    files += [h["dir"] for h in m["value_heads"]]
    return files


def get_manifest_json(wildcards):
    return json.dumps(get_manifest())


def get_config_json(wildcards):
    return json.dumps(config, sort_keys=True)


def get_size_figure():
    """The compute-optimal model size figure, an aggregate output once 2+ models are set."""
    if len(config["models"]) < 2:
        return {}
    return {
        "plot_size": report(
            "results/plots/compute_optimal_size.png",
            caption="../report/compute_optimal_size.rst",
            category="Figures",
            labels={"figure": "compute-optimal model size vs budget"},
        )
    }


def get_size_figure_arg(wildcards, output):
    return f"--plot-size {output.plot_size}" if "plot_size" in output.keys() else ""


def get_prm_spec(wildcards):
    # batch_size is left out (it travels as a resource): params are a rerun trigger,
    # and a batch size that fits another GPU must not rescore paid-for samples.
    spec = PRMS[wildcards.get("prm") or wildcards.get("trained")]
    return json.dumps({k: v for k, v in spec.items() if k != "batch_size"})


def get_prm_batch_size(wildcards):
    return PRMS[wildcards.get("prm") or wildcards.get("trained")].get("batch_size", 32)


def get_training_inputs(wildcards):
    # ancient: the training cache's key and the PRM spec (params) pin what the head is
    # fitted on; a re-made identical input (a regenerated damaged shard, re-prepared
    # problems) must not refit the head, which would rescore every paid-for score shard.
    # A missing head, or a changed spec or training cache, still (re)fits it.
    cache = plan.find(CACHES, dataset=f"{wildcards.trained}-train", model=wildcards.model, kind="train")
    inputs = {
        "problems": ancient(f"results/problems/{cache.dataset}.parquet"),
        "grades": ancient(f"results/grades/{cache.dataset}/{cache.model}/{cache.key}.parquet"),
        "shards": ancient(shard_paths(cache)),
        "info": ancient(f"results/models/{wildcards.model}/info.json"),
    }
    found = [r for r in ROLLOUTS if r.prm == wildcards.trained and r.model == wildcards.model]
    if found:
        inputs["rollouts"] = ancient(found[0].path)
    return inputs


def get_rollouts_arg(wildcards, input):
    return f"--rollouts {input.rollouts}" if "rollouts" in input.keys() else ""


def get_rollout_inputs(wildcards):
    # ancient: the key pins the training samples; a re-made identical shard must not
    # redo paid-for rollouts
    cache = plan.find(CACHES, dataset=wildcards.dataset, model=wildcards.model, kind="train")
    return {
        "problems": ancient(f"results/problems/{cache.dataset}.parquet"),
        "shards": ancient(shard_paths(cache)),
        "info": ancient(f"results/models/{wildcards.model}/info.json"),
    }


def get_rollout_spec(wildcards):
    found = plan.find(ROLLOUTS, dataset=wildcards.dataset, model=wildcards.model, key=wildcards.key)
    return json.dumps(found.spec())


def get_value_head(wildcards):
    if PRMS[wildcards.prm]["format"] == "value-head":
        return f"results/prms/{wildcards.model}/{wildcards.prm}"
    return []


def get_head_arg(wildcards, input):
    return f"--head {input.head}" if input.head else ""


def score_paths(cache, prm):
    return [
        f"results/scores/{cache.dataset}/{cache.model}/{cache.key}/{prm}/{s}.parquet"
        for s in cache.shards
    ]


def get_prm_replay_inputs(wildcards):
    sampled = plan.find(CACHES, dataset=wildcards.dataset, model=wildcards.model, kind="sampled")
    return {
        "grades": f"results/grades/{sampled.dataset}/{sampled.model}/{sampled.key}.parquet",
        "shards": shard_paths(sampled),
        "scores": score_paths(sampled, wildcards.prm),
        "info": f"results/models/{wildcards.model}/info.json",
    }


def get_replay_settings(wildcards):
    r = {"num_draws": 1000, "seed": 0, **config.get("replay", {})}
    return f"--num-draws {r['num_draws']} --seed {r['seed']}"
