"""The configs for real runs (config/paper-math500.yaml, config/gsm8k.yaml) pass the
schema and plan the expected jobs in a dry run, without the Hub, the models or a GPU:
planning never downloads anything (models and datasets are fetched by jobs)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, planned_jobs

CONFIGS = {
    # config: (dataset, problems)
    "paper-math500": ("math500", 500),
    "gsm8k": ("gsm8k", 1319),
}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", CONFIGS)
def test_schema_accepts(name):
    from snakemake.utils import validate

    config = load(name)
    validate(config, str(REPO / "config" / "config.schema.yaml"), set_default=True)


@pytest.mark.parametrize("name", CONFIGS)
def test_paper_settings(name):
    """The values of the paper's code (thu-wyz/inference_scaling), file by file."""
    c = load(name)
    assert {m["path"] for m in c["models"].values()} == {
        "tkitsers/Llemma-metamath-7b", "tkitsers/Llemma-metamath-34b"}
    # sgl_baseline.py / rebase.py: model_type llemma prompts with the raw problem
    # (GSM8K: question + "\n"), no stop strings (EOS only)
    [prompt] = {m["prompt"] for m in c["models"].values()}
    assert c["prompts"][prompt] == {"format": "plain", "template": "{question}" if name == "paper-math500"
                                    else "{question}\n", "stop": []}
    # hf_score.py: the causal-LM reward model, float16, reading the policy's prompt + solution
    [prm] = c["prms"].values()
    assert (prm["format"], prm["model"]) == ("llemma-prm", "tkitsers/Llemma-reward-model")
    assert prm["options"]["dtype"] == "float16"
    assert prm["options"].get("template", "{question}") == c["prompts"][prompt]["template"]
    # sgl_baseline.sh MAX_TOKENS=1024, --temperature 1.0, SGLang's top_p 1.0
    s = c["sampling"]
    assert (s["temperature"], s["top_p"], s["max_tokens"], s["n"]) == (1.0, 1.0, 1024, 256)
    # rebase.py + hype-parameters/rebase.yaml
    r = c["search"]["rebase"]
    assert r["budgets"] == [16, 32, 64, 128, 256]
    assert {k: r[k] for k in ("algorithm", "temperature", "step_stop", "max_step_tokens", "max_depth", "max_tokens",
                              "blank_line_ends", "dead_ends")} == {
        "algorithm": "rebase", "temperature": 0.2, "step_stop": "Step {depth+2}", "max_step_tokens": 256,
        "max_depth": 25, "max_tokens": 1024, "blank_line_ends": False, "dead_ends": "drop"}


def test_paper_prompts_render_the_raw_problem():
    from pipeline.core import prompts

    c = load("paper-math500")
    [prompt] = {m["prompt"] for m in c["models"].values()}
    question = "Convert the point $(0,3)$ in rectangular coordinates to polar coordinates."
    assert prompts.render(c["prompts"][prompt], question) == question
    g = load("gsm8k")
    [prompt] = {m["prompt"] for m in g["models"].values()}
    assert prompts.render(g["prompts"][prompt], "How many?") == "How many?\n"


@pytest.mark.parametrize("name", CONFIGS)
def test_dry_run_plans_every_stage_offline(tmp_path, name):
    config = load(name)
    dataset, problems = CONFIGS[name]
    # No network: the Hub libraries are told so, and any HTTP(S) would hit a dead proxy.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(tmp_path), "--configfile", str(REPO / "config" / f"{name}.yaml"),
         "--cores", "1"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    jobs = planned_jobs(proc.stdout)
    counts = Counter(rule for rule, _ in jobs)
    models, prms = len(config["models"]), len(config["prms"])
    blocks = math.ceil(problems / config["shards"]["problems"])
    sample_blocks = math.ceil(config["sampling"]["n"] / config["shards"]["samples"])
    assert counts["generate"] == models * blocks * (sample_blocks + 1)  # sampled + greedy
    assert counts["score"] == models * prms * blocks * sample_blocks
    assert counts["search"] == models * prms * len(config["search"]["rebase"]["budgets"]) * blocks
    assert counts["model_info"] == models and counts["embedded_model"] == 0
    assert counts["replay"] == models and counts["replay_prm"] == models * prms
    assert counts["aggregate"] == 1
    # two model sizes: the compute-optimal model size figure is planned
    assert "results/plots/compute_optimal_size.png" in proc.stdout
    assert {w["dataset"] for r, w in jobs if "dataset" in w} == {dataset}
    assert not (tmp_path / "results").exists()
