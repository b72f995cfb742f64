"""The GPU memory arithmetic (pipeline/engine/memory_plan.py): model sizes from config
files and safetensors headers, what a vLLM engine and a PRM take on a GPU, placements,
an engine's start settings from measured free memory, and the GPU inventory. No GPU and
no weights: fake inventories and hand-written checkpoints."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from safetensors.numpy import save_file

from pipeline.engine import memory_plan as mp

GiB = mp.GiB


def test_parameter_counts_of_the_paper_models():
    """The Llama formula on the published geometries gives the Hub's sizes: Llemma-7B's
    three shards hold 13.48 GB in bfloat16 (6.74B), the reward model and Llemma-34B 33.7B."""
    seven = mp.shape_of("tkitsers/Llemma-metamath-7b")
    rm = mp.shape_of("tkitsers/Llemma-reward-model")
    assert round(seven.params / 1e9, 2) == 6.74 and round(rm.params / 1e9, 1) == 33.7
    assert rm.kv_per_token("bfloat16") == 48 * 2 * 8 * 128 * 2  # grouped-query attention: 8 KV heads
    assert seven.kv_per_token("bfloat16") == 32 * 2 * 32 * 128 * 2  # 0.5 MiB per token
    assert rm.tp_sizes() == (1, 2, 4, 8) and mp.shape_of("embedded:smollm2-135m").tp_sizes() == (1,)
    assert mp.shape_of("someone/unknown-model") is None  # not local, not cached, not known


def write_checkpoint(d, config: dict, tensors: dict) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(d / "model.safetensors"))


def test_local_directory_counts_the_stored_tensors(tmp_path):
    config = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
              "num_key_value_heads": 1, "vocab_size": 10}
    write_checkpoint(tmp_path / "m", config, {"a": np.zeros((10, 8), np.float16), "b": np.zeros((3,), np.float16)})
    shape = mp.read_local(tmp_path / "m")
    assert (shape.params, shape.stored_dtype, shape.head_dim, shape.kv_heads) == (83, "float16", 4, 1)
    assert "safetensors headers" in shape.source
    assert mp.shape_of(str(tmp_path / "m")).params == 83


def test_hub_cache_is_read_without_the_network(tmp_path, monkeypatch):
    """A Hub id whose config.json and safetensors index sit in the local HF cache is
    sized from them (params = total bytes / stored dtype)."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    snap = tmp_path / "models--org--cached" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (tmp_path / "models--org--cached" / "refs").mkdir()
    (tmp_path / "models--org--cached" / "refs" / "main").write_text("0" * 40)
    config = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 100, "torch_dtype": "bfloat16"}
    (snap / "config.json").write_text(json.dumps(config))
    (snap / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 2 * 12345}}))
    shape = mp.shape_of("org/cached")
    assert shape is not None and shape.params == 12345 and "Hugging Face cache" in shape.source


def test_engine_need_adds_weights_kv_activations_overhead():
    shape = mp.shape_of("tkitsers/Llemma-metamath-34b")
    need = mp.engine_need(shape, {"dtype": "bfloat16", "max_model_len": 4096})
    parts = dict(need.parts)
    assert parts["weights"] == shape.params * 2
    assert parts["KV cache (4096 tokens)"] == 4096 * 196608
    assert need.total == sum(parts.values()) and 66 * GiB < need.total < 70 * GiB
    half = dict(mp.engine_need(shape, {"dtype": "bfloat16", "max_model_len": 4096}, tp=2).parts)
    assert half["weights"] == parts["weights"] // 2 and half["KV cache (4096 tokens)"] * 2 == parts["KV cache (4096 tokens)"]
    assert "62.9 GiB weights" in need.describe()


def prm_need(gib_total: float) -> mp.Need:
    return mp.Need("PRM x", (("weights", int(gib_total * GiB)),))


def test_place_prefers_a_prm_gpu_of_its_own_then_fewest_gpus():
    policy = (mp.shape_of("tkitsers/Llemma-metamath-7b"), {"dtype": "bfloat16", "max_model_len": 4096})
    small = mp.place(80 * GiB, policy=policy, prm=prm_need(20))
    assert (small.gpus, small.tp, small.prm_gpu, small.shared) == (1, 1, 0, True)
    assert small.utilization == pytest.approx(0.9 - 20 / 80, abs=0.01)  # leaves the PRM its share
    big = mp.place(80 * GiB, policy=policy, prm=prm_need(70))
    assert (big.gpus, big.tp, big.prm_gpu, big.shared, big.utilization) == (2, 1, 1, False, 0.9)
    assert mp.place(80 * GiB, policy=policy, prm=prm_need(70), prefer="shared") is None  # no GPU holds both
    assert mp.place(80 * GiB, policy=policy, prm=prm_need(20), prefer="separate").gpus == 2
    assert mp.place(80 * GiB, policy=policy, prm=prm_need(73)) is None  # a PRM is never split
    assert mp.place(40 * GiB, policy=policy, prm=prm_need(20), count=1) is None


def test_place_uses_tensor_parallelism_for_a_large_policy():
    policy = (mp.shape_of("tkitsers/Llemma-metamath-34b"), {"dtype": "bfloat16", "max_model_len": 4096})
    alone = mp.place(40 * GiB, policy=policy)
    assert (alone.gpus, alone.tp, alone.prm_gpu) == (2, 2, None)
    searched = mp.place(40 * GiB, policy=policy, prm=prm_need(30))
    assert (searched.gpus, searched.tp, searched.prm_gpu) == (3, 2, 2)
    assert mp.place(40 * GiB, policy=policy, tp=1) is None  # a fixed tensor-parallel size is kept
    assert "tensor parallel 2" in searched.describe() and "PRM on its own GPU 2" in searched.describe()


def test_engine_settings_follow_free_memory():
    shape = mp.shape_of("tkitsers/Llemma-metamath-7b")
    args = {"dtype": "bfloat16", "max_model_len": 4096}
    free80 = (80 * GiB, 80 * GiB)
    assert mp.engine_settings(shape, args, [free80]) == {"tensor_parallel_size": 1, "gpu_memory_utilization": 0.9}
    # a PRM already loaded on GPU 0 (30 GiB) and 5 GiB kept for its batches
    got = mp.engine_settings(shape, args, [(50 * GiB, 80 * GiB)], reserve=5 * GiB)
    assert got == {"tensor_parallel_size": 1, "gpu_memory_utilization": pytest.approx(45 / 80, abs=0.01)}
    assert got["gpu_memory_utilization"] <= 45 / 80
    # the 34B policy needs two 40 GiB GPUs; configured settings are kept
    big = mp.shape_of("tkitsers/Llemma-metamath-34b")
    assert mp.engine_settings(big, args, [(40 * GiB, 40 * GiB)] * 2)["tensor_parallel_size"] == 2
    assert mp.engine_settings(big, {**args, "tensor_parallel_size": 2, "gpu_memory_utilization": 0.9},
                              [(40 * GiB, 40 * GiB)] * 2) == {}
    assert mp.engine_settings(None, args, [free80] * 4)["tensor_parallel_size"] == 4  # unknown size: all it got
    with pytest.raises(ValueError, match="62.9 GiB weights.*available on 1 GPU"):
        mp.engine_settings(big, args, [(40 * GiB, 40 * GiB)])


def test_inventory_from_the_environment_and_nvidia_smi(tmp_path):
    assert mp.local_gpus({"PIPELINE_GPUS": "2x81920"}) == mp.GPUs(2, 80 * GiB, "$PIPELINE_GPUS")
    assert mp.local_gpus({"PIPELINE_GPUS": "0"}).count == 0
    with pytest.raises(ValueError, match="PIPELINE_GPUS"):
        mp.local_gpus({"PIPELINE_GPUS": "two"})
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA A100-SXM4-80GB, 81920'\necho '1, NVIDIA A100-SXM4-40GB, 40960'\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    both = mp.local_gpus(env)
    one = mp.local_gpus({**env, "CUDA_VISIBLE_DEVICES": "0"})
    assert (both.count, both.mem) == (2, 40 * GiB)  # the smallest
    assert (one.count, one.mem) == (1, 80 * GiB)
