"""Sampling with vLLM into a sharded Parquet cache (schema: `schemas.SAMPLES`).

A cache lives in results/samples/{dataset}/{model}/{key}/ where `key` hashes
everything that determines the samples (model identity, prompt template, sampling
parameters, dataset definition) but not N: sample i of problem j is the same file row
whether N is 16 or 256, so raising N only generates the missing sample blocks.

A shard is a block of problems x a block of sample indices, produced by one engine
and ONE `LLM.generate` call (prefix caching shares the prompt between a problem's
samples). vLLM's per-request seed crashes the CPU build, so each shard seeds the
engine from (key, shard), which makes every shard reproducible on its own. Each shard
stores how long its engine took to start and to generate, and on what device, as
Parquet metadata (`pipeline.core.timing`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core import integrity, io, prompts, schemas, timing
from pipeline.engine import models
from pipeline.engine.vllm_engine import (
    engine_seed,
    make_engine,
    planned,
    sampling_params,
    started_gpus,
)

SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")


def cache_key(
    *, model_identity: str, prompt: dict, sampling: dict, dataset: dict, engine_args: dict
) -> str:
    """Short stable hash of what determines the samples (not N, not shard sizes).

    `limit` is left out: problems are prefix-stable, so more problems only add shards.
    Engine arguments are in, because some (dtype, max_model_len) change the samples.
    """
    dataset = {k: v for k, v in dataset.items() if k != "limit"}
    blob = json.dumps(
        {
            "model": model_identity,
            "prompt": prompt,
            "sampling": {k: sampling[k] for k in SAMPLING_KEYS},
            "dataset": dataset,
            "engine_args": engine_args,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def greedy_sampling(sampling: dict) -> dict:
    """Greedy decoding parameters derived from the sampling ones (same token cap)."""
    return {**sampling, "temperature": 0.0, "top_p": 1.0, "seed": 0}


def blocks(total: int, size: int) -> list[tuple[int, int]]:
    """[start, stop) ranges of `size` covering range(total); the last may be short."""
    return [(a, min(a + size, total)) for a in range(0, total, size)]


def shard_name(problems: tuple[int, int], samples: tuple[int, int]) -> str:
    return f"p{problems[0]:05d}-{problems[1]:05d}_s{samples[0]:04d}-{samples[1]:04d}"


def to_rows(problem_ids: list[str], outputs: list[Any], first_sample: int) -> pl.DataFrame:
    """vLLM RequestOutputs (one per problem, in order) -> SAMPLES rows."""
    rows: dict[str, list] = {c: [] for c in schemas.SAMPLES}
    for pid, out in zip(problem_ids, outputs, strict=True):
        prompt_tokens = len(out.prompt_token_ids)
        for j, c in enumerate(sorted(out.outputs, key=lambda c: c.index)):
            rows["problem_id"].append(pid)
            rows["sample_idx"].append(first_sample + j)
            rows["text"].append(c.text)
            rows["step_ends"].append(prompts.step_ends(c.text))
            rows["prompt_tokens"].append(prompt_tokens)
            rows["output_tokens"].append(len(c.token_ids))
            rows["finish_reason"].append(c.finish_reason)
            rows["cumulative_logprob"].append(
                float("nan") if c.cumulative_logprob is None else c.cumulative_logprob
            )
    df = pl.DataFrame(rows, schema=schemas.SAMPLES)
    # A model may legitimately stop at once (it then has no answer and is graded
    # wrong), but a shard with no text at all means the stop strings match the start
    # of every solution: a prompt bug that would silently read as 0% accuracy.
    if df.height and (df["text"].str.strip_chars() == "").all():
        raise RuntimeError(
            f"all {df.height} generations are empty (problems {problem_ids[0]}..): the "
            "prompt's stop strings probably match at the start of every solution"
        )
    return df


def sample(
    llm: Any,
    problems: pl.DataFrame,
    *,
    prompt: dict,
    sampling: dict,
    sample_range: tuple[int, int],
) -> pl.DataFrame:
    """Samples `sample_range` of every problem with one generate call (SAMPLES rows)."""
    tokenizer = llm.get_tokenizer() if prompt.get("format") == "chat" else None
    texts = [prompts.render(prompt, q, tokenizer) for q in problems["question"]]
    params = sampling_params(
        sampling, n=sample_range[1] - sample_range[0], stop=prompt.get("stop", [])
    )
    outputs = llm.generate(texts, params)
    return to_rows(problems["problem_id"].to_list(), outputs, sample_range[0])


def generate_shard(
    *,
    model_dir: str,
    problems_path: str,
    problem_range: tuple[int, int],
    sample_range: tuple[int, int],
    prompt: dict,
    sampling: dict,
    key: str,
    out: str,
    engine_args: dict | None = None,
) -> None:
    """Generate one shard and write it atomically to `out`."""
    problems = pl.read_parquet(problems_path).slice(
        problem_range[0], problem_range[1] - problem_range[0]
    )
    if problems.height != problem_range[1] - problem_range[0]:
        raise ValueError(
            f"{problems_path} has too few problems for shard {problem_range} "
            f"(dataset shrank? delete the stale shard request or raise limit)"
        )
    seed = engine_seed(key, shard_name(problem_range, sample_range))
    watch = timing.Stopwatch()
    with watch.phase("load"):
        llm = make_engine(model_dir, seed=seed, engine_args=engine_args, gpus=(planned(key) or {}).get("tp"))
    with watch.phase("work"):
        df = sample(llm, problems, prompt=prompt, sampling=sampling, sample_range=sample_range)
    measured = timing.record(
        watch, device=timing.describe_device(gpus=started_gpus(llm, engine_args)),
        problems=problems.height, samples=df.height, prompt_tokens=df["prompt_tokens"].sum(),
        output_tokens=df["output_tokens"].sum(),
    )
    # The key's meaning travels with the cache; identical content from every shard,
    # written before the shard so that no shard ever exists without it. Shards of one
    # cache may run at once, so key.json has several writers (sole_writer=False).
    io.write_json(
        {"key": key, "prompt": prompt, "sampling": sampling, "engine_args": engine_args or {}},
        Path(out).parent / "key.json",
        sole_writer=False,
    )
    io.write_parquet(df, out, metadata=timing.as_metadata(measured))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="generate one sample shard with vLLM")
    ap.add_argument("--model-info", required=True, help="info.json from the prepare stage")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--shard", required=True, help="p{a}-{b}_s{c}-{d}")
    ap.add_argument("--spec", required=True, help="JSON: key, prompt, sampling, engine_args")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    integrity.check_inputs([a.problems])
    spec = json.loads(a.spec)
    p, s = a.shard.split("_")
    pa, pb = (int(x) for x in p[1:].split("-"))
    sa, sb = (int(x) for x in s[1:].split("-"))
    generate_shard(
        model_dir=models.model_dir_of(a.model_info),
        problems_path=a.problems,
        problem_range=(pa, pb),
        sample_range=(sa, sb),
        prompt=spec["prompt"],
        sampling=spec["sampling"],
        key=spec["key"],
        out=a.out,
        engine_args=spec.get("engine_args"),
    )


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
