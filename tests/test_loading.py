"""PRM weights go to their device in their dtype without a whole copy in host memory
(pipeline/prm/base.py, load_model).

A random Llama (~180 MB, stored in bfloat16, no tensor above 2% of it) is loaded as
float16, in a fresh subprocess each time, while a thread samples the process's private
anonymous memory (RssAnon in /proc/self/status: what a host copy of the weights takes;
the checkpoint's own pages are file-backed page cache, shared and reclaimable). The
device a GPU run loads to is not host memory; on a CPU-only machine `meta` stands in for
it (a device that holds no data, while the loader still reads every tensor of the
checkpoint into host memory on its way there: every byte of host memory the load leaves
behind or passes through is the loader's). Each process first loads a tiny checkpoint the
same way, so that lazy imports and one-time allocations are not counted. Measured three
ways:

* load_model to `meta`: the peak stays below 10% of the model (a few tensors in flight);
* the way it loaded before (the whole model converted in host memory, then moved): the
  peak is the whole model, so the measurement does see a host copy;
* load_model to the CPU, where the converted model itself must live in host memory: the
  peak exceeds the final model by less than 10% (no second copy on the way).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, threading, time
import torch

def anon():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

path, warmup, how, device = sys.argv[1:5]
import transformers
from pipeline.prm.base import load_model

def load(path):
    if how == "load_model":
        return load_model(path, "AutoModelForCausalLM", device=device, dtype=torch.float16)
    # the loading this replaced: the whole model built in host memory, then moved
    model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float16)
    return model.to(device)

# the same code path on a tiny checkpoint first: transformers imports its modeling code and
# makes its one-time allocations lazily (about 95 MiB), which are no copy of the weights
del_me = load(warmup)
del del_me
base = anon()
peak = [base]
done = threading.Event()

def watch():
    while not done.is_set():
        peak[0] = max(peak[0], anon())
        time.sleep(0.001)

t = threading.Thread(target=watch, daemon=True)
t.start()
model = load(path)
done.set()
t.join()
peak[0] = max(peak[0], anon())
p = next(model.parameters())
print(json.dumps({"peak": peak[0] - base, "final": anon() - base, "device": str(p.device), "dtype": str(p.dtype)}))
"""


def llama(path: Path, layers: int, hidden: int, intermediate: int, heads: int) -> tuple[int, int]:
    """Save a random bfloat16 Llama at `path`; its size and its largest tensor's, in bytes as float16."""
    config = transformers.LlamaConfig(vocab_size=2048, hidden_size=hidden, intermediate_size=intermediate,
                                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path)
    sizes = [p.numel() * 2 for p in model.parameters()]
    return sum(sizes), max(sizes)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[Path, Path, int]:
    """A random bfloat16 Llama of 88M parameters (176 MB) whose largest tensor is 1.8% of it, and a
    tiny one (1 layer, 0.3M parameters) to warm up the loading code on."""
    root = tmp_path_factory.mktemp("loading")
    size, largest = llama(root / "llama-bf16", layers=12, hidden=768, intermediate=2048, heads=12)
    assert largest < 0.02 * size
    llama(root / "tiny-bf16", layers=1, hidden=64, intermediate=128, heads=4)
    return root / "llama-bf16", root / "tiny-bf16", size


def measure(path: Path, warmup: Path, how: str, device: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(path), str(warmup), how, device],
                          capture_output=True, text=True,
                          cwd=REPO, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{how} -> {device}: peak {out['peak'] / 2**20:.0f} MiB, after {out['final'] / 2**20:.0f} MiB")
    return out


def test_loading_streams_weights_to_their_device(checkpoint):
    path, warmup, size = checkpoint
    streamed = measure(path, warmup, "load_model", "meta")
    assert (streamed["device"], streamed["dtype"]) == ("meta", "torch.float16")
    assert streamed["peak"] < 0.10 * size, f"{streamed['peak'] / size:.0%} of the model in host memory"
    before = measure(path, warmup, "whole-model-then-move", "meta")
    assert before["peak"] > 0.8 * size  # the old way holds the whole converted model: the probe sees it
    on_cpu = measure(path, warmup, "load_model", "cpu")
    assert (on_cpu["device"], on_cpu["dtype"]) == ("cpu", "torch.float16")
    assert on_cpu["final"] > 0.8 * size  # here the model itself lives in host memory ...
    assert on_cpu["peak"] - on_cpu["final"] < 0.10 * size  # ... once: no second copy on the way
