"""benchmarks/gpu_prm.py runs on a machine with only torch, transformers, tokenizers,
numpy and safetensors: its CPU smoke mode, in a subprocess in which importing polars,
vllm, duckdb or snakemake fails, writes the full report (every path of the throughput
table, the tree rounds, the float32 check) with the paths agreeing."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

REPO = Path(__file__).resolve().parents[1]
BLOCKED = ("polars", "vllm", "duckdb", "snakemake")
SITECUSTOMIZE = f'''
import sys

BLOCKED = {BLOCKED!r}


class Blocker:
    """Makes the packages a bare GPU machine lacks fail to import."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by tests/test_gpu_prm.py)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
'''


def test_gpu_benchmark_smoke_without_the_workflow_packages(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # only the blocker on the path: the script finds the checkout itself, as on a bare machine
    env = {**os.environ, "PYTHONPATH": str(site)}
    check = subprocess.run([sys.executable, "-c", "import polars"], env=env, capture_output=True, text=True)
    assert check.returncode != 0 and "blocked by tests/test_gpu_prm.py" in check.stderr
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_prm.py"), "--smoke", "--shape", "llemma-7b",
                          "--out", str(out)], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((out / "gpu_prm.json").read_text())
    assert report["env"]["smoke"] and report["env"]["blocked_present"] == []
    res = report["llemma-7b"]
    assert res["format"] == "llemma-prm"
    rows = {r["path"].split(" (")[0].split(",")[0]: r for r in res["throughput"]["rows"]}
    assert set(rows) == {"plain", "prefix reuse", "default", "raw forward"}
    assert all(r["tokens_per_s"] > 0 and r["tflops_counted"] >= 0 for r in rows.values())
    assert rows["prefix reuse"]["computed_tokens"] < rows["plain"]["computed_tokens"] == rows["plain"]["tokens"]
    assert res["throughput"]["default_path"] in ("plain", "prefix reuse")
    assert res["throughput"]["max_abs_reuse_minus_plain"] <= 1e-6
    tree = res["tree"]
    assert len(tree["plain"]["seconds_per_round"]) == len(tree["session"]["seconds_per_round"]) == tree["rounds"]
    assert tree["session"]["computed_tokens"] < tree["plain"]["computed_tokens"]
    assert tree["max_abs_session_minus_plain"] <= 1e-6
    assert res["precision"]["float32_max_abs_reuse_minus_plain"] <= 1e-6
    assert "| plain |" in run.stdout and "tree rounds" in run.stdout
