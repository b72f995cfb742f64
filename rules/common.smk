# Config validation first, then the plan (which caches exist) and the get_* helpers.
import json

from snakemake.utils import validate

validate(config, schema="../config/config.schema.yaml", set_default=True)

from pipeline import models, plan

CACHES = plan.caches(config)
EMBEDDED_MODELS = [m for m, c in config["models"].items() if models.is_embedded(c["path"])]


wildcard_constraints:
    dataset="|".join(map(re.escape, config["datasets"])),
    model="|".join(map(re.escape, config["models"])),
    key="[0-9a-f]{12}",
    shard=r"p\d{5}-\d{5}_s\d{4}-\d{4}",
    embedded="|".join(map(re.escape, EMBEDDED_MODELS)) or "(?!)",


def get_cache(wildcards):
    return plan.find(CACHES, dataset=wildcards.dataset, model=wildcards.model, key=wildcards.key)


def get_dataset_spec(wildcards):
    return json.dumps(config["datasets"][wildcards.dataset])


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
    if config["sampling"]["greedy"]:
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
                "n": config["sampling"]["n"] if c.kind == "sampled" else 1,
                "sampling": c.sampling,
                "shards": shard_paths(c),
                "grades": f"results/grades/{c.dataset}/{c.model}/{c.key}.parquet",
            }
            for c in CACHES
        ],
        "replay": {
            f"{d}/{m}": f"results/replay/{d}/{m}.parquet"
            for d in config["datasets"]
            for m in config["models"]
        },
    }


def get_manifest_files():
    m = get_manifest()
    files = list(m["problems"].values()) + list(m["models"].values()) + list(m["replay"].values())
    for c in m["caches"]:
        files += c["shards"] + [c["grades"]]
    return files


def get_manifest_json(wildcards):
    return json.dumps(get_manifest())


def get_config_json(wildcards):
    return json.dumps(config, sort_keys=True)
