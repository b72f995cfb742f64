"""Seconds per problem for every curve point, from the stages' own timing records.

The model stages record wall-clock seconds in their outputs (`pipeline.core.timing`); the
aggregate stage gathers them into the `timings` table (`read_timings`) and charges every
`replay` row its seconds per problem (`replay_seconds`):

    sampled strategies (majority, coverage)  n x G, where G = the sampled cache's
        generation seconds per sample = sum of its shards' work_s / sum of their samples
        (= work per problem / N: a point at n of N cached samples costs n / N of the
        cache's generation time per problem)
    greedy                                   the greedy cache's G (its one sample)
    PRM strategies (best_of_n, weighted_majority)  n x (G + S), S = the PRM's scoring
        seconds per sample of that cache (sum of its score shards' work_s / samples)
    tree search (<search>_<rule>, n = budget) the job's work_s / its problems, for the
        problems of that job's block (PRM calls included: they run inside the job)

These are means over a cache, not per-problem measurements: every problem of a point gets
the same G and S. Model load (engine start, PRM weights) is never spread over problems:
each row carries `load_s`, the seconds to load what the point needs once (mean over the
jobs that loaded it: the policy engine, plus the PRM for PRM strategies; a search job
loads both). One-off costs that no point pays per problem (fitting a value head, the
training split's samples) are in `timings` only.

Unmeasured outputs (written before timing existed) are NULL, and so is every number
that needs one: a cache with one unmeasured shard has no G (charging the measured
shards' rate to all samples would be a guess presented as a measurement), so all its
points get NULL seconds; regenerating the shard (delete it and its scores) measures it.
`load_s` is the mean over the measured jobs (NULL when none is).

`device` names where a row's seconds were measured: one device label
(`timing.describe_device`), or "mixed: <a> | <b>" when the numbers it adds up come from
different devices (generation on one GPU type, scoring on another; shards run on
different nodes), so that no mixed number passes for one device's.

timings table (`read_timings`, one row per model-stage output file of the manifest):
    stage          generate | score | train_value_head | search
    dataset, model
    kind           generate: sampled | greedy | train; NULL otherwise
    prm            score, train_value_head, search; NULL for generate
    search         search entry name (search only)
    key            cache key (generate, score) or search key; NULL for train_value_head
    budget         search only
    file           the output's path, relative to the workflow folder
    problems, samples, prompt_tokens, output_tokens, prm_tokens   (pipeline.core.timing)
    load_s, work_s seconds (NULL: the file was written unmeasured)
    device, engine where it ran and with which library versions
    dtype          the PRM's precision (score, train_value_head, search); NULL for
                   generate and for records written before it was recorded
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from pipeline.core import timing
from pipeline.treesearch.results import SELECTIONS

TIMINGS = {
    "stage": pl.String,
    "dataset": pl.String,
    "model": pl.String,
    "kind": pl.String,
    "prm": pl.String,
    "search": pl.String,
    "key": pl.String,
    "budget": pl.Int32,
    "file": pl.String,
    "problems": pl.Int64,
    "samples": pl.Int64,
    "prompt_tokens": pl.Int64,
    "output_tokens": pl.Int64,
    "prm_tokens": pl.Int64,
    "load_s": pl.Float64,
    "work_s": pl.Float64,
    "device": pl.String,
    "engine": pl.String,
    "dtype": pl.String,
}
MEASURED = tuple(c for c in TIMINGS if c not in ("stage", "dataset", "model", "kind", "prm", "search", "key",
                                                  "budget", "file"))
# The strategies the replay stages compute from the caches, without and with a PRM; a
# strategy known to neither (nor a search's) gets NULL seconds until it is added here.
SAMPLED_STRATEGIES = ("greedy", "majority", "coverage")
PRM_STRATEGIES = ("best_of_n", "weighted_majority")
MIXED = "mixed: "
SEPARATOR = " | "

# --------------------------------------------------------------------------- reading


def _row(stage: str, file: str, rec: dict | None, **tags) -> dict:
    row = {c: None for c in TIMINGS}
    row.update(stage=stage, file=file, **tags)
    if rec is not None:
        row.update({c: rec[c] for c in MEASURED})
    return row


def value_head_timing(head_dir: str | Path) -> dict | None:
    """The timing record a value head was fitted with (None: fitted unmeasured)."""
    meta = Path(head_dir) / "value_head.json"
    return timing.parse(json.loads(meta.read_text()).get("training", {}).get("timing"), str(meta))


def read_timings(manifest: dict) -> pl.DataFrame:
    """The `timings` table: the timing record of every model-stage output the manifest
    names (sample shards of every cache, training caches included; score shards; value
    heads; search results), NULL-measured where a file has none."""
    rows = []
    for c in [*manifest.get("caches", []), *manifest.get("training", [])]:
        for f in c["shards"]:
            rows.append(_row("generate", f, timing.read_record(f), dataset=c["dataset"], model=c["model"],
                             kind=c["kind"], key=c["key"]))
    for s in manifest.get("scores", []):
        for f in s["files"]:
            rows.append(_row("score", f, timing.read_record(f), dataset=s["dataset"], model=s["model"],
                             prm=s["prm"], key=s["key"]))
    for h in manifest.get("value_heads", []):
        rows.append(_row("train_value_head", str(Path(h["dir"]) / "value_head.json"), value_head_timing(h["dir"]),
                         dataset=h["dataset"], model=h["model"], prm=h["prm"]))
    for s in manifest.get("search", []):
        for f in s["files"]:
            rows.append(_row("search", f, timing.read_record(f), dataset=s["dataset"], model=s["model"],
                             prm=s["prm"], search=s["search"], key=s["key"], budget=s["budget"]))
    return pl.DataFrame(rows, schema=TIMINGS)


def search_problems(entries: list[dict]) -> pl.DataFrame:
    """(file, problem_id) of every search results file of the manifest's search entries:
    which job's time each problem's search rows are charged."""
    parts = [pl.read_parquet(f, columns=["problem_id"]).unique(maintain_order=True).with_columns(file=pl.lit(f))
             for e in entries for f in e["files"]]
    schema = {"file": pl.String, "problem_id": pl.String}
    return pl.concat(parts).select(*schema) if parts else pl.DataFrame(schema=schema)


# --------------------------------------------------------------------------- arithmetic


def device_label(devices: pl.Expr) -> pl.Expr:
    """A list of device labels -> one label, "mixed: a | b" for several, NULL for none."""
    d = devices.list.drop_nulls().list.unique().list.sort()
    return (
        pl.when(d.list.len() == 0).then(None)
        .when(d.list.len() == 1).then(d.list.first())
        .otherwise(pl.lit(MIXED) + d.list.join(SEPARATOR))
    )


def _rates(timings: pl.DataFrame, stage: str, by: list[str], prefix: str) -> pl.DataFrame:
    """Per group of a stage's files: seconds per sample (NULL if any file is unmeasured),
    mean load seconds over the measured files, and their devices."""
    measured = pl.col("work_s").is_not_null()
    return (
        timings.filter(pl.col("stage") == stage)
        .group_by(by)
        .agg(
            pl.when(measured.all()).then(pl.col("work_s").sum() / pl.col("samples").sum()).alias(f"{prefix}_s"),
            pl.col("load_s").mean().alias(f"{prefix}_load"),
            pl.col("device").drop_nulls().unique().alias(f"{prefix}_dev"),
        )
    )


def _search_costs(timings: pl.DataFrame, problems: pl.DataFrame) -> pl.DataFrame:
    """Per (dataset, model, prm, strategy, n, problem_id) of tree search: its job's work
    seconds per problem, the job's load seconds and device."""
    jobs = timings.filter(pl.col("stage") == "search").select(
        "file", "dataset", "model", "prm", "search", pl.col("budget").cast(pl.Int32).alias("n"),
        (pl.col("work_s") / pl.col("problems")).alias("search_s"),
        pl.col("load_s").alias("search_load"),
        pl.concat_list(pl.col("device")).alias("search_dev"),
    )
    rules = pl.DataFrame({"selection": list(SELECTIONS)})
    return (
        jobs.join(problems, on="file", how="inner")
        .join(rules, how="cross")
        .select(
            "dataset", "model", "prm", (pl.col("search") + "_" + pl.col("selection")).alias("strategy"), "n",
            "problem_id", "search_s", "search_load", "search_dev", pl.lit(True).alias("_search"),
        )
    )


def replay_seconds(replay: pl.DataFrame, timings: pl.DataFrame, search_files: pl.DataFrame | None = None) -> pl.DataFrame:
    """`replay` rows with `seconds` (per problem), `load_s` and `device` (module
    docstring), from the `timings` table and, for tree search, `search_problems`.

    `replay` needs dataset, model, prm, strategy, n, problem_id; rows are kept in order
    and any former seconds/load_s/device columns are replaced."""
    base = replay.drop([c for c in ("seconds", "load_s", "device") if c in replay.columns])
    files = search_files if search_files is not None else pl.DataFrame(schema={"file": pl.String, "problem_id": pl.String})
    gen = _rates(timings, "generate", ["dataset", "model", "kind"], "gen")
    prm = _rates(timings, "score", ["dataset", "model", "prm"], "prm")
    tree = _search_costs(timings, files)
    keys = ["dataset", "model", "prm", "strategy", "n", "problem_id"]
    df = (
        base.with_row_index("_row")
        .with_columns(kind=pl.when(pl.col("strategy") == "greedy").then(pl.lit("greedy")).otherwise(pl.lit("sampled")))
        .join(tree, on=keys, how="left")
        .join(gen, on=["dataset", "model", "kind"], how="left")
        .join(prm, on=["dataset", "model", "prm"], how="left")
    )
    n = pl.col("n").cast(pl.Float64)
    uses_prm = pl.col("prm").is_not_null()
    searched = pl.col("_search").fill_null(False)
    empty = pl.lit([], dtype=pl.List(pl.String))
    replayed = (~uses_prm & pl.col("strategy").is_in(SAMPLED_STRATEGIES)) | (
        uses_prm & pl.col("strategy").is_in(PRM_STRATEGIES))
    sampled_s = n * pl.when(uses_prm).then(pl.col("gen_s") + pl.col("prm_s")).otherwise(pl.col("gen_s"))
    sampled_load = pl.when(uses_prm).then(pl.col("gen_load") + pl.col("prm_load")).otherwise(pl.col("gen_load"))
    sampled_dev = pl.concat_list(pl.col("gen_dev").fill_null(empty),
                                 pl.when(uses_prm).then(pl.col("prm_dev").fill_null(empty)).otherwise(empty))
    return (
        df.with_columns(
            seconds=pl.when(searched).then(pl.col("search_s")).when(replayed).then(sampled_s),
            load_s=pl.when(searched).then(pl.col("search_load")).when(replayed).then(sampled_load),
            device=device_label(pl.when(searched).then(pl.col("search_dev")).when(replayed).then(sampled_dev)),
        )
        .sort("_row")
        .select(*base.columns, "seconds", "load_s", "device")
    )
