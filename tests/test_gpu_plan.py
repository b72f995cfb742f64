"""The GPU memory plan of a config's jobs (pipeline/workflow/gpu_plan.py), without a GPU:
targets from fake rule resources and fake local inventories, models sized from their
published configs. Two dry runs check it where users meet it: `snakemake -n` with the
SLURM profile passes the paper config on 80 GB GPUs and fails on one 40 GB GPU per
search job, naming the job and its numbers."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, planned_jobs

from pipeline.engine import memory_plan as mp
from pipeline.workflow import gpu_plan, plan

GiB = mp.GiB
PAPER = yaml.safe_load((REPO / "config" / "paper-math500.yaml").read_text())


def validated(config: dict) -> dict:
    from snakemake.utils import validate

    config = copy.deepcopy(config)
    validate(config, str(REPO / "config" / "config.schema.yaml"), set_default=True)
    return config


def build(config: dict, resources: dict | None = None, local: mp.GPUs = mp.GPUs(0, None, "none")) -> gpu_plan.Plan:
    config = validated(config)
    caches = plan.caches(config)
    return gpu_plan.build(config, caches, plan.searches(config), plan.rollouts(config, caches),
                          gpu_plan.targets(resources or {}, local))


def slurm(mib: int, count: int | None = None) -> dict:
    res = {"gpu_model": "a100", "gpu_mem_mib": mib, **({"gpu": count} if count else {})}
    return {rule: dict(res) for rule in gpu_plan.GPU_RULES}


def test_paper_config_fits_80gb_gpus_with_the_prm_on_its_own():
    p = build(PAPER, slurm(81920))
    p.check()
    for model in PAPER["models"]:
        assert p.gpus("generate", {"model": model}) == 1
        assert p.gpus("score", {"model": model, "prm": "llemma-34b-prm"}) == 1
        assert p.gpus("search", {"model": model, "prm": "llemma-34b-prm", "search": "rebase"}) == 2
    search = [g for g in p.groups if g.rule == "search"]
    assert all((g.placement.tp, g.placement.prm_gpu, g.placement.shared) == (1, 1, False) for g in search)
    env = json.loads(p.environment())
    for g in search:
        assert all(env[k] == {"gpus": 2, "tp": 1, "prm_gpu": 1, "reserve": 0} for k in g.keys)
    assert "PRM on its own GPU 1" in p.summary()


def test_one_40gb_gpu_per_job_fails_naming_the_search_jobs_and_numbers():
    p = build(PAPER, slurm(40960, count=1))
    failed = {(g.rule, g.match["model"]) for g in p.failures()}
    # the 34B policy does not fit one 40 GB GPU either, nor the 33.7B PRM
    assert failed == {(r, m) for r in ("generate", "score", "search") for m in ("llemma-7b", "llemma-34b")} - {
        ("generate", "llemma-7b")}
    with pytest.raises(ValueError) as err:
        p.check()
    text = str(err.value)
    assert "rule search (model llemma-7b, PRM llemma-34b-prm, search rebase; 25 jobs) on 1 x 40.0 GiB" in text
    assert ("PRM tkitsers/Llemma-reward-model (33.74B parameters, float16): 62.9 GiB weights + 3.1 GiB prefix KV "
            "cache + 3.1 GiB forward pass (4096 tokens) + 1.0 GiB overhead = 70.1 GiB" in text)
    assert "policy tkitsers/Llemma-metamath-7b (6.74B parameters, bfloat16): 12.6 GiB weights" in text
    assert "80 GiB GPUs: 2 GPUs: policy on GPU 0; PRM on its own GPU 1" in text
    assert "set `gpu: 2` for rule generate" in text  # the 34B policy, tensor parallel over two


def test_a_cpu_machine_plans_nothing_and_reads_no_model(monkeypatch):
    monkeypatch.setattr(mp, "shape_of", lambda *a, **k: pytest.fail("sized a model on a CPU run"))
    p = gpu_plan.from_workflow(PAPER, [], [], [], {}, env={"PIPELINE_GPUS": "0"})
    assert p.gpus("search", {"model": "llemma-7b"}) == 1 and not p.failures()


def test_local_gpus_are_the_target_without_resources():
    config = copy.deepcopy(PAPER)
    p = build(config, local=mp.GPUs(2, 80 * GiB, "fake"))
    assert p.gpus("search", {"model": "llemma-34b", "prm": "llemma-34b-prm", "search": "rebase"}) == 2
    one = build(config, local=mp.GPUs(1, 80 * GiB, "fake"))
    text = "\n".join(gpu_plan.explain(g) for g in one.failures())
    assert "rule search" in text and "this machine has 1" in text


def test_an_unknown_model_is_reported_not_failed():
    config = copy.deepcopy(PAPER)
    config["prms"]["llemma-34b-prm"]["model"] = "someone/unknown-prm"
    p = build(config, slurm(81920))
    p.check()
    assert any("someone/unknown-prm is unknown" in w and "huggingface-cli download" in w for w in p.warnings)
    assert p.gpus("search", {"model": "llemma-7b", "prm": "llemma-34b-prm", "search": "rebase"}) == 1


def test_suggests_a_smaller_prm_dtype_and_the_setting_that_blocks():
    config = copy.deepcopy(PAPER)
    config["prms"] = {"shepherd": {"format": "math-shepherd", "batch_size": 8}}  # float32: 27 GiB of weights
    config["models"] = {"llemma-7b": config["models"]["llemma-7b"]}
    config["search"]["rebase"]["prm_device"] = "shared"
    p = build(config, slurm(40960, count=1))
    [g] = [g for g in p.failures() if g.rule == "search"]
    text = gpu_plan.explain(g)
    assert "math-shepherd-mistral-7b-prm (7.24B parameters, float32): 27.0 GiB weights" in text
    assert "prms.shepherd.options.dtype: bfloat16" in text
    assert "search.rebase.prm_device: auto (not shared)" not in text  # two GPUs needed either way
    assert build(config, slurm(81920, count=1)).failures() == []  # shared on one 80 GB GPU


PROFILE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}


def dry_run_with_profile(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **PROFILE_ENV}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"), "--directory",
         str(tmp_path), "--profile", str(REPO / "profiles" / "slurm"), "--configfile",
         str(REPO / "config" / "paper-math500.yaml"), *args],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)


def test_dry_run_with_the_slurm_profile_passes_and_requests_the_planned_gpus(tmp_path):
    proc = dry_run_with_profile(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gpus = {rule: set() for rule in ("generate", "score", "search")}
    for block in proc.stdout.split("\n\n"):
        for rule in gpus:
            if f"rule {rule}:" in block:
                gpus[rule].add(block.split("gpu=")[1].split(",")[0])
    assert gpus == {"generate": {"1"}, "score": {"1"}, "search": {"2"}}
    assert len([j for j in planned_jobs(proc.stdout) if j[0] == "search"]) == 50
    assert "GPU memory plan:" in proc.stderr


def test_dry_run_on_one_40gb_gpu_per_search_job_fails_naming_it(tmp_path):
    proc = dry_run_with_profile(tmp_path, "--set-resources", "search:gpu=1", "search:gpu_model=a100",
                                "search:gpu_mem_mib=40960")
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "GPU memory plan: 2 job groups do not fit" in out
    assert "rule search (model llemma-34b, PRM llemma-34b-prm, search rebase; 25 jobs) on 1 x 40.0 GiB" in out
    assert "= 70.1 GiB" in out and "80 GiB GPUs: 2 GPUs" in out
    assert not (tmp_path / "results").exists()


def test_a_search_job_places_its_models_by_the_exported_plan(monkeypatch):
    from pipeline import search

    p = build(PAPER, slurm(81920))
    monkeypatch.setenv(gpu_plan.ENV, p.environment())
    [s] = [s for s in plan.searches(validated(PAPER)) if s.model == "llemma-34b"]
    got = search.gpu_placement(s.spec(), 8, gpus=2)
    assert (got.prm_device, got.policy_gpus, got.shared, got.reserve) == ("cuda:1", 1, False, 0)
    with pytest.raises(ValueError, match="places this search job on 2 GPUs.*1 are visible"):
        search.gpu_placement(s.spec(), 8, gpus=1)
    # shared on one large GPU: the engine keeps the PRM's KV budget and batch free on GPU 0
    auto = copy.deepcopy(PAPER)
    auto["search"]["rebase"].pop("prm_device")  # the paper config keeps the PRM on its own GPU
    monkeypatch.setenv(gpu_plan.ENV, build(auto, slurm(141 * 1024, count=1)).environment())
    [small] = [s for s in plan.searches(validated(auto)) if s.model == "llemma-7b"]
    shared = search.gpu_placement(small.spec(), 8, gpus=1)
    assert (shared.prm_device, shared.policy_gpus, shared.shared) == ("cuda:0", 1, True)
    assert 5 * GiB < shared.reserve < 8 * GiB
    # no plan (a job run by hand): the PRM on the last of several GPUs; nothing on a CPU
    monkeypatch.delenv(gpu_plan.ENV)
    assert search.gpu_placement(s.spec(), 8, gpus=4).prm_device == "cuda:3"
    assert search.gpu_placement(s.spec(), 8, gpus=0) == search.GPUPlacement(longest=4096)


def test_the_plan_reserves_what_the_prms_cuda_budgets_take():
    """The plan's working memory for a PRM (pipeline/prm/memory.py) and the budgets the PRM
    takes from free memory at run time (pipeline/prm/batching.py) are one computation: with
    the reserve free, a scoring call gets a pass of at least one whole sequence, and a
    loaded model of the same geometry asks the engine for the same reserve."""
    from types import SimpleNamespace

    from pipeline.prm import batching
    from pipeline.prm import memory as prm_memory

    rm = mp.shape_of("tkitsers/Llemma-reward-model")
    spec = {"format": "llemma-prm", "options": {"dtype": "float16"}}
    need = prm_memory.need(spec, rm, longest=4096)
    reserve = need.total - dict(need.parts)["weights"] - prm_memory.HF_OVERHEAD
    config = SimpleNamespace(num_attention_heads=rm.heads, num_key_value_heads=rm.kv_heads, hidden_size=rm.hidden,
                             head_dim=rm.head_dim, num_hidden_layers=rm.layers, intermediate_size=rm.intermediate)
    model = SimpleNamespace(config=config, parameters=lambda: iter([SimpleNamespace(element_size=lambda: 2)]))
    for longest in (4096, 3000, 512):
        free = prm_memory.need(spec, rm, longest=longest).total - dict(need.parts)["weights"] - prm_memory.HF_OVERHEAD
        budget, keep = batching.plan_memory("cuda:0", model, batch_size=8, free=free)
        assert budget.tokens >= longest and budget.fits(1, longest), (longest, budget)
        assert keep + budget.work_bytes <= free
    assert prm_memory.working_set(SimpleNamespace(model=model), 4096) == reserve + prm_memory.HF_OVERHEAD
    # a float32 entry: twice the weights and twice the working memory
    wide = prm_memory.need({"format": "llemma-prm"}, rm, longest=4096)
    assert dict(wide.parts)["weights"] == 2 * dict(need.parts)["weights"]
    assert dict(wide.parts)["prefix KV cache"] > 1.9 * dict(need.parts)["prefix KV cache"]


def test_prm_device_is_placement_only():
    """Setting search.<name>.prm_device changes neither the search key nor the job spec
    (the protected search rule's params), and the dtype stays where it was."""
    config = copy.deepcopy(PAPER)
    config["search"]["rebase"].pop("prm_device")  # the paper config sets it: compare with none
    before = plan.searches(config)
    changed = copy.deepcopy(config)
    for value in ("separate", "shared", "auto"):
        changed["search"]["rebase"]["prm_device"] = value
        after = plan.searches(changed)
        assert [(s.key, s.spec()) for s in after] == [(s.key, s.spec()) for s in before]
    assert all(s.spec()["prm"]["options"] == {"dtype": "float16"} for s in before)
