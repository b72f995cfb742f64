"""GPU memory of the models a job runs, and where they go on the job's GPUs.

The workflow plans every GPU job before any starts (pipeline/workflow/gpu_plan.py, at
`snakemake -n` time) and each job places its models on the GPUs it got by the same rules
(pipeline/search.py, `vllm_engine.make_engine`). This module is the arithmetic both use:

* `Shape`: what sizing needs of a model (parameters, attention geometry), read without
  loading a weight and without the network: a local directory's config.json and
  safetensors headers (`read_local`); a Hub id from the local Hugging Face cache
  (`read_hub_cache`: config.json plus the safetensors index or header, if a job or the
  user fetched them before); else the numbers of the models the shipped configs name,
  from their published config.json (`KNOWN`). `shape_of` tries them in that order and
  returns None when none knows the model (the plan then says so and does not check it).
* `engine_need`: one GPU's share of a vLLM engine at tensor-parallel size tp: weights /
  tp, the KV cache of one `max_model_len` sequence (vLLM refuses to start without it),
  activations of one `max_num_batched_tokens` step, and `VLLM_OVERHEAD`.
  A PRM's `Need` (transformers, on one GPU) is pipeline/prm/memory.py's, sized by the
  same numbers as the PRM's own CUDA batch budgets (pipeline/prm/batching.py).
  Estimates, on the safe side; activations are tokens x (2 x intermediate + 4 x hidden)
  x bytes (the MLP's gate and up projections and a few hidden-sized buffers alive at
  once).
* `place`: the fewest GPUs (up to `MAX_GPUS`) on which a job's policy (vLLM, tensor
  parallel over 1, 2, 4 or 8 GPUs) and PRM fit, each GPU filled to at most `USABLE` of
  its memory: the PRM on its own GPU (the GPU after the policy's) or beside the policy on
  GPU 0, in that order of preference at equal count (`prefer`: auto, shared, separate).
  A PRM is never split across GPUs. The placement's `utilization` is the vLLM
  gpu_memory_utilization that leaves the PRM its share where they share a GPU.
* `engine_settings`: a starting engine's tensor_parallel_size and gpu_memory_utilization
  from the GPUs it may use and their free memory, measured (`make_engine` on CUDA).
* `local_gpus`: this machine's GPUs (nvidia-smi; `PIPELINE_GPUS`, e.g. "2x81920" GPUs x
  MiB each, overrides it, to plan for another machine or in tests).

Sizes are bytes; GiB = 2^30 bytes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

GiB = 1 << 30
MiB = 1 << 20
USABLE = 0.9  # share of a GPU's memory a plan fills: vLLM's default gpu_memory_utilization
VLLM_OVERHEAD = int(1.5 * GiB)  # CUDA context, CUDA graphs, NCCL and sampler buffers
HF_OVERHEAD = 1 * GiB  # CUDA context and allocator slack of a transformers model
TP_SIZES = (1, 2, 4, 8)
MAX_GPUS = 8
DEFAULT_MAX_MODEL_LEN = 2048  # make_engine's default
DEFAULT_BATCHED_TOKENS = 16384  # vLLM's largest default max_num_batched_tokens (offline LLM)
DEFAULT_MAX_SEQS = 256

DTYPE_BYTES = {
    "float32": 4, "float": 4, "F32": 4,
    "float16": 2, "half": 2, "F16": 2,
    "bfloat16": 2, "BF16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "int8": 1, "I8": 1, "uint8": 1, "U8": 1,
    "float64": 8, "F64": 8, "int64": 8, "I64": 8, "int32": 4, "I32": 4, "int16": 2, "I16": 2,
    "bool": 1, "BOOL": 1,
}

# The published config.json numbers of the models the shipped configs (and the README's
# examples) name, for planning on a machine that has never downloaded them. Llemma 7B is
# Code Llama 7B's geometry (vocabulary 32016), Llemma 34B Code Llama 34B's (grouped-query
# attention, 8 KV heads); the tkitsers checkpoints are LlamaForCausalLM fine-tunes of
# them (the reward model: 33.7B parameters, stored BF16, as the Hub lists it);
# math-shepherd is Mistral-7B-v0.1. Parameters follow from the geometry (`llama_params`).
_LLEMMA_7B = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
              "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32016,
              "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
_LLEMMA_34B = {"hidden_size": 8192, "intermediate_size": 22016, "num_hidden_layers": 48,
               "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 32000,
               "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
KNOWN: dict[str, dict] = {
    "tkitsers/Llemma-metamath-7b": _LLEMMA_7B,
    "tkitsers/Llemma-metamath-34b": _LLEMMA_34B,
    "tkitsers/Llemma-reward-model": _LLEMMA_34B,
    "peiyi9979/math-shepherd-mistral-7b-prm": {
        "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
        "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False, "torch_dtype": "bfloat16"},
    # the embedded models (their directory is built by the prepare stage)
    "embedded:smollm2-135m": {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16"},
    "embedded:gemma3-270m": {
        "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18, "num_attention_heads": 4,
        "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144, "tie_word_embeddings": True,
        "torch_dtype": "bfloat16"},
}


def dtype_bytes(dtype: str) -> int:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}")
    return DTYPE_BYTES[name]


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """What sizing needs of a model: parameters (tied embeddings once), the dtype its
    checkpoint is stored in, and the attention geometry the KV cache follows."""

    name: str
    params: int
    stored_dtype: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    source: str  # where the numbers come from

    def weights(self, dtype: str) -> int:
        return self.params * dtype_bytes(dtype)

    def kv_per_token(self, dtype: str, tp: int = 1) -> int:
        """KV cache bytes per token on one of tp GPUs (a KV head is replicated when tp
        exceeds the KV heads)."""
        return self.layers * 2 * math.ceil(self.kv_heads / tp) * self.head_dim * dtype_bytes(dtype)

    def activations(self, tokens: int, dtype: str, tp: int = 1) -> int:
        return int(tokens) * (2 * math.ceil(self.intermediate / tp) + 4 * self.hidden) * dtype_bytes(dtype)

    def tp_sizes(self) -> tuple[int, ...]:
        """Tensor-parallel sizes vLLM accepts for this model: the attention heads split
        evenly, and the KV heads split or replicate evenly."""
        return tuple(t for t in TP_SIZES
                     if self.heads % t == 0 and (self.kv_heads % t == 0 or t % self.kv_heads == 0))

    def describe(self) -> str:
        return f"{self.params / 1e9:.2f}B parameters"


def _text_config(config: dict) -> dict:
    # multimodal configs keep the decoder's numbers under text_config
    return {**config, **config["text_config"]} if isinstance(config.get("text_config"), dict) else config


def llama_params(config: dict) -> int:
    """Parameters of a Llama-style decoder from its config (embeddings, untied output
    head, attention with grouped KV heads, gated MLP, RMS norms): exact for Llama and
    Mistral checkpoints, an estimate for other decoders."""
    c = _text_config(config)
    h, inter, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["vocab_size"]
    heads = c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    hd = c.get("head_dim") or h // heads
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter + 2 * h
    head = 0 if c.get("tie_word_embeddings", False) else vocab * h
    return vocab * h + head + layers * per_layer + h


def shape_from_config(config: dict, *, name: str, source: str, params: int | None = None,
                      stored_dtype: str | None = None) -> Shape:
    c = _text_config(config)
    heads = int(c["num_attention_heads"])
    hidden = int(c["hidden_size"])
    return Shape(
        name=name,
        params=int(params if params is not None else llama_params(c)),
        stored_dtype=str(stored_dtype or c.get("dtype") or c.get("torch_dtype") or "float32"),
        layers=int(c["num_hidden_layers"]),
        hidden=hidden,
        heads=heads,
        kv_heads=int(c.get("num_key_value_heads") or heads),
        head_dim=int(c.get("head_dim") or hidden // heads),
        intermediate=int(c.get("intermediate_size") or 4 * hidden),
        vocab=int(c.get("vocab_size") or 0),
        source=source,
    )


def safetensors_header(path: str | Path) -> dict:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    header.pop("__metadata__", None)
    return header


def _params_and_dtype(headers: list[dict]) -> tuple[int, str | None]:
    params, by_dtype = 0, {}
    for header in headers:
        for t in header.values():
            n = math.prod(t["shape"])
            params += n
            by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + n
    stored = max(by_dtype, key=by_dtype.get) if by_dtype else None
    names = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
    return params, names.get(stored, stored)


def read_local(model_dir: str | Path, name: str | None = None) -> Shape:
    """A local model directory: config.json and the safetensors headers (no weights read)."""
    d = Path(model_dir)
    config = json.loads((d / "config.json").read_text())
    files = sorted(d.glob("*.safetensors"))
    params, stored = _params_and_dtype([safetensors_header(f) for f in files]) if files else (None, None)
    return shape_from_config(config, name=name or str(model_dir), params=params or None, stored_dtype=stored,
                             source="config.json and safetensors headers" if files else "config.json")


def read_hub_cache(repo_id: str, revision: str | None = None) -> Shape | None:
    """A Hub model from the local Hugging Face cache only (never the network): its
    config.json and, when cached, the safetensors index (total bytes, as stored) or the
    single file's header; None when config.json is not cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None

    def cached(filename: str) -> str | None:
        try:
            found = try_to_load_from_cache(repo_id, filename, revision=revision)
        except Exception:  # a malformed id or revision: not cached
            return None
        return found if isinstance(found, str) else None

    config_path = cached("config.json")
    if config_path is None:
        return None
    config = json.loads(Path(config_path).read_text())
    stored = config.get("dtype") or config.get("torch_dtype")
    index, single = cached("model.safetensors.index.json"), cached("model.safetensors")
    params, source = None, "config.json in the Hugging Face cache"
    if single is not None:
        params, stored = _params_and_dtype([safetensors_header(single)])
        source += " and the safetensors header"
    elif index is not None:
        total = json.loads(Path(index).read_text()).get("metadata", {}).get("total_size")
        if total and stored in DTYPE_BYTES:
            params, source = int(total) // dtype_bytes(stored), source + " and the safetensors index"
    return shape_from_config(config, name=repo_id, source=source, params=params, stored_dtype=stored)


def shape_of(path: str, revision: str | None = None, *, built_dir: str | Path | None = None) -> Shape | None:
    """The shape of a config's model `path` (embedded:<name>, a local directory or a Hub
    id), from the first source that knows it (module docstring); None if none does."""
    if built_dir is not None and (Path(built_dir) / "config.json").is_file():
        return read_local(built_dir, name=path)
    local = Path(path).expanduser()
    if not path.startswith("embedded:") and (local / "config.json").is_file():
        return read_local(local, name=path)
    if not path.startswith("embedded:") and not local.exists():
        found = read_hub_cache(path, revision)
        if found is not None:
            return found
    if path in KNOWN:
        return shape_from_config(KNOWN[path], name=path, source="its published config.json (memory_plan.KNOWN)")
    return None


# --------------------------------------------------------------------------- needs


@dataclass(frozen=True)
class Need:
    """Bytes a model takes on one GPU, by part."""

    what: str  # "policy <name> (<params>, <dtype>[, tensor parallel n])"
    parts: tuple[tuple[str, int], ...]

    @property
    def total(self) -> int:
        return sum(v for _, v in self.parts)

    def describe(self) -> str:
        return f"{self.what}: " + " + ".join(f"{gib(v)} {k}" for k, v in self.parts) + f" = {gib(self.total)}"


def engine_dtype(shape: Shape, engine_args: dict) -> str:
    """The dtype vLLM runs the policy in: engine_args' dtype, else the checkpoint's, with
    float32 checkpoints run in bfloat16 (vLLM's `auto`)."""
    dtype = str(engine_args.get("dtype") or "auto")
    if dtype == "auto":
        dtype = shape.stored_dtype if shape.stored_dtype != "float32" else "bfloat16"
    return dtype


def engine_need(shape: Shape, engine_args: dict, tp: int = 1) -> Need:
    """One GPU's share of a vLLM engine running `shape` at tensor-parallel size tp."""
    dtype = engine_dtype(shape, engine_args)
    kv_dtype = engine_args.get("kv_cache_dtype") or "auto"
    kv_dtype = dtype if kv_dtype == "auto" else kv_dtype
    max_len = int(engine_args.get("max_model_len") or DEFAULT_MAX_MODEL_LEN)
    tokens = int(engine_args.get("max_num_batched_tokens") or DEFAULT_BATCHED_TOKENS)
    seqs = int(engine_args.get("max_num_seqs") or DEFAULT_MAX_SEQS)
    logits = seqs * math.ceil(shape.vocab / tp) * 4 * 2  # float32 logits and their softmax
    what = f"policy {shape.name} ({shape.describe()}, {dtype}" + (f", tensor parallel {tp})" if tp > 1 else ")")
    return Need(what, (
        ("weights", math.ceil(shape.weights(dtype) / tp)),
        (f"KV cache ({max_len} tokens)", max_len * shape.kv_per_token(kv_dtype, tp)),
        ("activations", shape.activations(tokens, dtype, tp) + logits),
        ("overhead", VLLM_OVERHEAD),
    ))


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement:
    """Where a job's models go on `gpus` GPUs of `mem` bytes: the policy over GPUs
    0..tp-1 (tp 0: no policy), the PRM on GPU `prm_gpu` (None: no PRM); `utilization`
    is the policy engine's gpu_memory_utilization; `loads` the planned bytes per GPU."""

    gpus: int
    mem: int
    tp: int
    prm_gpu: int | None
    utilization: float | None
    loads: tuple[int, ...]
    needs: tuple[Need, ...] = field(default=(), compare=False)

    @property
    def shared(self) -> bool:
        return self.prm_gpu is not None and self.prm_gpu < self.tp

    def describe(self) -> str:
        parts = []
        if self.tp:
            parts.append(f"policy on {'GPU 0' if self.tp == 1 else f'GPUs 0-{self.tp - 1} (tensor parallel {self.tp})'}")
        if self.prm_gpu is not None and not self.tp:
            parts.append(f"PRM on GPU {self.prm_gpu}")
        elif self.prm_gpu is not None:
            parts.append("PRM beside it on GPU 0" if self.shared else f"PRM on its own GPU {self.prm_gpu}")
        if self.utilization is not None:
            parts.append(f"gpu_memory_utilization {self.utilization:.2f}")
        used = ", ".join(gib(x) for x in self.loads)
        return f"{self.gpus} GPU{'s' if self.gpus > 1 else ''}: " + "; ".join(parts) + f" (planned {used} of {gib(self.mem)})"


PREFERENCES = ("auto", "shared", "separate")


def place(mem: int, *, policy: tuple[Shape, dict] | None = None, prm: Need | None = None,
          count: int | None = None, prefer: str = "auto", tp: int | None = None,
          max_gpus: int = MAX_GPUS) -> Placement | None:
    """The placement on the fewest GPUs of `mem` bytes each (exactly `count` when given,
    the policy at tensor-parallel size `tp` when given) that fits, or None. At equal
    count the PRM on its own GPU comes first, unless `prefer` says shared or separate."""
    if prefer not in PREFERENCES:
        raise ValueError(f"placement preference {prefer!r}: one of {PREFERENCES}")
    usable = int(USABLE * mem)
    counts = [count] if count is not None else range(1, max_gpus + 1)
    for g in counts:
        for option in _options(g, policy, prm, prefer, tp):
            found = _fits(option, g, mem, usable, policy, prm)
            if found is not None:
                return found
    return None


def _options(g: int, policy, prm, prefer: str, tp: int | None) -> list[tuple[int, int | None]]:
    """(tp, prm_gpu) candidates on g GPUs, in order of preference."""
    sizes = policy[0].tp_sizes() if policy is not None else ()
    ok = (lambda t: t in sizes and (tp is None or t == tp))
    if policy is None:
        return [(0, 0)] if prm is not None and g == 1 else []
    if prm is None:
        return [(g, None)] if ok(g) else []
    separate = [(g - 1, g - 1)] if g >= 2 and ok(g - 1) and prefer != "shared" else []
    shared = [(g, 0)] if ok(g) and prefer != "separate" else []
    return separate + shared


def _fits(option, g, mem, usable, policy, prm) -> Placement | None:
    t, prm_gpu = option
    loads = [0] * g
    needs: list[Need] = []
    engine = None
    if policy is not None and t:
        engine = engine_need(policy[0], policy[1], t)
        needs.append(engine)
        for i in range(t):
            loads[i] += engine.total
    if prm is not None:
        needs.append(prm)
        loads[prm_gpu] += prm.total
    if any(load > usable for load in loads):
        return None
    util = None
    if engine is not None:
        # vLLM may fill util x memory on each of its GPUs: all of USABLE, less the PRM's
        # share where the PRM sits beside it
        beside = prm.total if prm is not None and prm_gpu < t else 0
        util = math.floor((usable - beside) / mem * 100) / 100
    return Placement(g, mem, t, None if prm is None else prm_gpu, util, tuple(loads), tuple(needs))


# --------------------------------------------------------------------------- at run time


def engine_settings(shape: Shape | None, engine_args: dict, devices: list[tuple[int, int]], *,
                    reserve: int = 0) -> dict:
    """tensor_parallel_size and gpu_memory_utilization for an engine starting now on
    `devices` ((free, total) bytes of each GPU it may use, in order) where `reserve`
    bytes of GPU 0 stay free for a PRM beside it. Either setting in `engine_args` is kept;
    tp is the smallest size whose share fits (all devices when the shape is unknown);
    the utilization is at most USABLE and leaves the memory used by others (a PRM loaded
    on GPU 0) and the reserve free. Raises ValueError when the engine cannot fit."""
    if not devices:
        raise ValueError("no GPU to start the engine on")
    out: dict = {}
    tp = engine_args.get("tensor_parallel_size")
    if tp is None:
        sizes = [t for t in (shape.tp_sizes() if shape else TP_SIZES) if t <= len(devices)] or [1]
        fitting = [t for t in sizes if shape is not None and
                   _room(devices[:t], reserve) >= engine_need(shape, engine_args, t).total]
        tp = fitting[0] if fitting else sizes[-1]
        out["tensor_parallel_size"] = tp
    tp = int(tp)
    if "gpu_memory_utilization" not in engine_args:
        util = min(USABLE, min((free - (reserve if i == 0 else 0)) / total for i, (free, total) in
                               enumerate(devices[:tp])))
        util = math.floor(util * 100) / 100
        if util <= 0:
            raise ValueError(f"GPU 0 has {gib(devices[0][0])} free, less than the {gib(reserve)} kept for the PRM")
        out["gpu_memory_utilization"] = util
    if shape is not None:
        need = engine_need(shape, engine_args, tp)
        budget = min(total for _, total in devices[:tp]) * out.get("gpu_memory_utilization",
                                                                    engine_args.get("gpu_memory_utilization", USABLE))
        if need.total > budget:
            raise ValueError(f"{need.describe()}; {gib(budget)} per GPU available on {tp} GPU(s) "
                             f"({', '.join(f'{gib(f)} free of {gib(t)}' for f, t in devices)})")
    return out


def _room(devices: list[tuple[int, int]], reserve: int) -> int:
    """Bytes an engine may take on each of `devices`: USABLE of the smallest, within what is free."""
    return min(min(int(USABLE * total), free) - (reserve if i == 0 else 0) for i, (free, total) in enumerate(devices))


# --------------------------------------------------------------------------- inventory


@dataclass(frozen=True)
class GPUs:
    """The GPUs a job will have: `count` of `mem` bytes each (the smallest, when they
    differ); count 0 = none (the job runs on the CPU)."""

    count: int
    mem: int | None
    label: str

    def describe(self) -> str:
        size = gib(self.mem) if self.mem else "unknown memory"
        return f"{self.count} x {size} ({self.label})"


INVENTORY_ENV = "PIPELINE_GPUS"
PLAN_ENV = "PIPELINE_GPU_PLAN"  # the workflow's placements, for the jobs (pipeline/workflow/gpu_plan.py)


def parse_inventory(text: str, label: str) -> GPUs:
    """"<count>x<MiB>" (e.g. "2x81920"), or "0" for none."""
    text = text.strip()
    if text in ("0", ""):
        return GPUs(0, None, label)
    count, sep, mib = text.lower().partition("x")
    if not sep or not count.strip().isdigit() or not mib.strip().isdigit():
        raise ValueError(f"{label}: {text!r} is not <count>x<MiB per GPU> (e.g. 2x81920) or 0")
    return GPUs(int(count), int(mib) * MiB, label)


def local_gpus(env: dict | None = None) -> GPUs:
    """This machine's GPUs: `PIPELINE_GPUS` if set, else nvidia-smi (the devices in
    CUDA_VISIBLE_DEVICES when it lists indices); none without nvidia-smi."""
    env = os.environ if env is None else env
    if env.get(INVENTORY_ENV) is not None:
        return parse_inventory(env[INVENTORY_ENV], f"${INVENTORY_ENV}")
    smi = shutil.which("nvidia-smi", path=env.get("PATH"))
    if smi is None:
        return GPUs(0, None, "no nvidia-smi")
    try:
        out = subprocess.run([smi, "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return GPUs(0, None, "nvidia-smi failed")
    rows = [[x.strip() for x in line.split(",")] for line in out.splitlines() if line.strip()]
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and all(v.strip().isdigit() for v in visible.split(",") if v.strip()):
        keep = {v.strip() for v in visible.split(",") if v.strip()}
        rows = [r for r in rows if r[0] in keep]
    if not rows:
        return GPUs(0, None, "nvidia-smi lists no GPU")
    names = sorted({r[1] for r in rows})
    return GPUs(len(rows), min(int(float(r[2])) for r in rows) * MiB, " + ".join(names) + " (nvidia-smi)")
