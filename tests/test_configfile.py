"""A config given with --configfile is the whole experiment (nothing of the embedded
default is merged under it), the default runs when no config file is given, and a
`--config` override changes only the value it names.

Each dry run happens in a folder that holds the repository's `config/` (as a run from
the checkout does), so the embedded default is there to be (wrongly) merged."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import REPO, planned_jobs, snakemake_env

SHIPPED = ["config.yaml", "gsm8k.yaml", "paper-math500.yaml", "humaneval.yaml"]


def plan(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    (workdir / "config").symlink_to(REPO / "config")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
         "--directory", str(workdir), "--cores", "1", *args],
        capture_output=True, text=True, cwd=workdir,
        env={**snakemake_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
             "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def outputs(stdout: str) -> list[str]:
    return [p for line in re.findall(r"^\s+output: (.*)$", stdout, re.M) for p in line.split(", ")]


def named(paths: list[str]) -> dict[str, set[str]]:
    """The datasets, models, PRMs and searches that the planned outputs' paths name."""
    found = {"datasets": set(), "models": set(), "prms": set(), "searches": set()}
    for p in paths:
        parts = p.split("/")
        if parts[:2] == ["results", "problems"]:
            found["datasets"].add(parts[2].removesuffix(".parquet"))
        elif parts[:2] in (["results", "samples"], ["results", "grades"], ["results", "replay"]):
            found["datasets"].add(parts[2])
            found["models"].add(parts[3].removesuffix(".parquet"))
        elif parts[:2] == ["results", "models"]:
            found["models"].add(parts[2])
        elif parts[:2] == ["results", "scores"]:
            found["datasets"].add(parts[2])
            found["models"].add(parts[3])
            found["prms"].add(parts[5])
        elif parts[:2] in (["results", "replay_prm"], ["results", "prms"]):
            found["models"].add(parts[-2] if parts[1] == "prms" else parts[3])
            found["prms"].add(parts[-1].removesuffix(".parquet"))
        elif parts[:2] == ["results", "search"]:
            found["datasets"].add(parts[2])
            found["models"].add(parts[3])
            found["prms"].add(parts[4])
            found["searches"].add(parts[5])
    return found


def expected(config: dict) -> dict[str, set[str]]:
    trained = [n for n, p in config.get("prms", {}).items() if p["format"] == "value-head"]
    return {
        "datasets": set(config["datasets"]) | {f"{p}-train" for p in trained},
        "models": set(config["models"]),
        "prms": set(config.get("prms", {})),
        "searches": set(config.get("search", {})),
    }


def run_config(stdout: str) -> dict:
    """The config the run uses: the aggregate job's `--config` argument (printed shell command)."""
    [line] = [ln for ln in stdout.splitlines() if "-m pipeline.aggregate" in ln]
    args = shlex.split(line.split(":", 1)[1])
    return json.loads(args[args.index("--config") + 1])


@pytest.mark.parametrize("name", SHIPPED)
def test_plans_exactly_what_the_config_names(tmp_path, name):
    config = yaml.safe_load((REPO / "config" / name).read_text())
    # the default runs with no config file; any other is given on the command line
    proc = plan(tmp_path) if name == "config.yaml" else plan(tmp_path, "--configfile", f"config/{name}")
    assert named(outputs(proc.stdout)) == expected(config)
    used = run_config(proc.stdout)
    for section in ("datasets", "models", "prms", "search", "sampling", "prompts"):
        assert set(used.get(section, {})) == set(config.get(section, {})), section


def test_gsm8k_plans_only_the_paper_jobs(tmp_path):
    """GSM8K x the two Llemma models x the paper's PRM x REBASE's five widths: 1,319
    problems in 11 blocks of 128, N = 256 in 8 blocks of 32 plus one greedy block."""
    proc = plan(tmp_path, "--configfile", "config/gsm8k.yaml")
    counts = Counter(rule for rule, _ in planned_jobs(proc.stdout))
    assert counts == {"problems": 1, "model_info": 2, "generate": 2 * 11 * 9, "grade": 4, "score": 2 * 11 * 8,
                      "search": 2 * 5 * 11, "replay": 2, "replay_prm": 2, "aggregate": 1, "all": 1}


def test_extending_the_default_on_purpose(tmp_path):
    """`--configfile config/config.yaml extra.yaml` is the default plus extra.yaml."""
    extra = tmp_path / "extra.yaml"
    extra.write_text("datasets:\n  fresh: {source: arith, split: test, seed: 1, levels: [1, 1, 1, 2], "
                     "max_number: 10, limit: 64}\n")
    proc = plan(tmp_path, "--configfile", "config/config.yaml", str(extra))
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    want = expected(default)
    want["datasets"].add("fresh")
    assert named(outputs(proc.stdout)) == want


def test_a_config_override_changes_only_its_value(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain = run_config(plan(tmp_path / "a").stdout)
    overridden = run_config(plan(tmp_path / "b", "--config", "sampling={n: 32}").stdout)
    assert overridden["sampling"]["n"] == 32  # typed: Snakemake hands nested values over as strings
    overridden["sampling"]["n"] = plain["sampling"]["n"]
    assert overridden == plain


def test_typed_overrides():
    from pipeline.workflow.overrides import apply_overrides

    config = {"sampling": {"n": 16, "greedy": True}, "prompts": {"p": {"template": "Q: {question}"}}}
    apply_overrides(config, {"sampling": {"n": "32", "greedy": "false", "top_p": "0.9"},
                             "prompts": {"p": {"template": "Question: {question}"}},
                             "search": {"rebase": {"budgets": ["2", "4"]}}})
    assert config == {"sampling": {"n": 32, "greedy": False, "top_p": 0.9},
                      "prompts": {"p": {"template": "Question: {question}"}},
                      "search": {"rebase": {"budgets": [2, 4]}}}
