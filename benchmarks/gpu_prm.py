"""PRM scoring on a GPU: the score stage's paths against a raw forward, on random weights
of a named 7B shape (no download), with the PRM package's own adapters.

    python benchmarks/gpu_prm.py [--shape llemma-7b] [--dtype float16] [--out DIR] [--smoke]
        [--samples 16] [--questions 64] [--shared-words 150] [--skip tree,precision]

Runs from a checkout on a machine with only torch, transformers, tokenizers, numpy and
safetensors (tqdm optional): the PRM package imports nothing else (no polars, vllm,
duckdb or snakemake; tests/test_gpu_prm.py runs `--smoke` with those imports failing).
Shapes (`--shape`, a comma-separated list, or `all`): llemma-7b (Llama, 32 layers, hidden
4096, 32 KV heads; format llemma-prm), math-shepherd-mistral-7b (Mistral, 8 KV heads;
math-shepherd), qwen2.5-math-prm-7b (Qwen2, 28 layers, hidden 3584, 4 KV heads; qwen-prm,
as Qwen2ForTokenClassification: the released model's two-layer head costs nothing
next to its body). The tokenizer is a small BPE trained here; its ids lie inside the
shape's vocabulary, whose full size still sets the head (llemma-prm averages all rows).

Sections, per shape (one shape takes about two minutes on an H200; `all` about six):
  throughput  `--questions` x `--samples` samples of ~510 tokens whose first ~250 (a
              few-shot prompt of `--shared-words` words) every sample shares: the plain
              path, prefix reuse, and the default ("auto": the path `HFPRM.score` picks
              and its two cost estimates), each as the score stage calls it (batch_size
              32; on CUDA batches follow the token budget from free memory), against a
              raw forward (the model body on length-sorted batches of 64, no adapter,
              no mask). Per row: seconds, tokens/s (tokens scored), forward passes,
              tokens computed, TFLOP/s counted (2 x params x tokens scored / s, the
              issue's measure) and computed (tokens run through the model), and both as
              a share of the chip's peak (a measured matmul in the dtype; the datasheet
              value where known). Also the ratios: plain / raw (goal >= 0.9), reuse /
              plain (goal >= 1.5), and the largest |reuse - plain| score (goal <= 1e-4
              in 16 bits).
  tree        a REBASE-like pattern: 32 questions x 16 nodes, 5 rounds; every node adds
              one ~45-token step, then all are scored: a PRM session (the tree search's
              own machinery: `prm.session()`) against plain re-scoring of whole paths;
              PRM seconds per round, tokens computed, largest score difference.
  precision   a 2-layer model of the shape's architecture in float32 on the device:
              largest |reuse - plain| (goal <= 1e-6) and |auto - plain|.
Writes gpu_prm.json under `--out` (default $OUT, else the working directory) and prints
a table. `--smoke`: tiny shapes of the same architectures on the CPU, a small workload.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, installed or not

SHAPES = {
    # format, config class, model class, config (the released models' sizes)
    "llemma-7b": ("llemma-prm", "LlamaConfig", "LlamaForCausalLM", dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32016, max_position_embeddings=4096, rope_theta=1e6)),
    "math-shepherd-mistral-7b": ("math-shepherd", "MistralConfig", "MistralForCausalLM", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096)),
    "qwen2.5-math-prm-7b": ("qwen-prm", "Qwen2Config", "Qwen2ForTokenClassification", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, max_position_embeddings=4096, rope_theta=1e4, num_labels=2)),
}
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
DATASHEET_TFLOPS = {"H200": 989, "H100": 989, "A100": 312, "L40S": 362, "A10": 125}  # dense fp16/bf16
WORDS = ("We have the area is half of it so add them find sum product roots polynomial equation "
         "number x y 3 4 7 12 6 + = /").split()
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BATCH_SIZE = 32  # the score rule's default prm_batch_size


def tokenizer():
    """A small BPE (Metaspace, like Llama's SentencePiece) that keeps " ки", "+", "-"
    single tokens, with the Qwen PRM's "<extra_0>" and a ChatML template."""
    import transformers
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    corpus = ["Step 1: We have 3 + 4 = 7 . ки\nStep 2: So x = 7 / 4 . ки\nThe answer is: \\frac{7}{4} ки",
              "What is 3 + 4 ? Step 1: Add them . ки\nThe answer is: 7 ки",
              "Step 1: The area is 12 . ки\nStep 2: Half of it is 6 . ки\nThe answer is: 6 ки",
              "Find the sum of the numbers and the product of the roots of the polynomial equation . ки",
              "+ - 3 - 4 = - 1"] * 20  # ~510 tokens a sample, ~250 shared (as the issue's ~490 and ~230)
    specials = ["<unk>", "<s>", "</s>", "<extra_0>", "<|im_start|>", "<|im_end|>"]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=160, special_tokens=specials))
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>", pad_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": specials[3:]})
    tok.chat_template = CHAT
    return tok


def workload(questions: int, samples: int, steps: int, words: int, shared_words: int, seed: int = 2):
    """Questions behind a few-shot prompt every sample shares; the samples of a question
    share their first 0-2 steps at random; MetaMath-style "Step k: ... ки" lines."""
    from pipeline.core.prompts import step_ends

    rng = random.Random(seed)
    shots = " ".join(random.Random(99).choices(WORDS, k=shared_words)) + " . " if shared_words else ""
    qs, texts = [], []
    for _ in range(questions):
        question = shots + "What is " + " ".join(rng.choices(WORDS, k=30)) + " ?"
        first = [" ".join(rng.choices(WORDS, k=words)) + " . ки" for _ in range(rng.randint(0, 2))]
        for _ in range(samples):
            body = first + [" ".join(rng.choices(WORDS, k=words)) + " . ки" for _ in range(steps - len(first))]
            qs.append(question)
            texts.append("\n".join(f"Step {k + 1}: {s}" for k, s in enumerate(body)))
    return qs, texts, [step_ends(t) for t in texts]


def build(shape: str, device: str, dtype, tok, *, small: bool):
    """The shape's PRM adapter around a model with random weights, built on the device."""
    import torch
    import transformers

    from pipeline import prm as prm_pkg

    fmt, config_cls, model_cls, sizes = SHAPES[shape]
    sizes = dict(sizes)
    if small:
        ratio = sizes["num_attention_heads"] // sizes["num_key_value_heads"]
        sizes.update(SMALL, num_key_value_heads=max(1, SMALL["num_attention_heads"] // ratio))
        sizes["vocab_size"] = min(sizes["vocab_size"], 512)
    config = getattr(transformers, config_cls)(**sizes, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device(device):
        try:
            model = getattr(transformers, model_cls)._from_config(config, dtype=dtype)
        except TypeError:  # transformers 4.x
            model = getattr(transformers, model_cls)._from_config(config, torch_dtype=dtype)
    model.eval()
    return prm_pkg.load(fmt, f"random:{shape}", _loaded=(model, tok))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(device, fn):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def matmul_peak(device: str, dtype, smoke: bool) -> float:
    """TFLOP/s of a large square matmul in `dtype`: what the chip reaches at best."""
    import torch

    n, reps = (256, 3) if smoke else (8192, 20)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _, s = timed(device, lambda: [a @ b for _ in range(reps)])
    return 2 * n ** 3 * reps / s / 1e12


def raw_forward(prm, device: str, qs, texts, ends, rows: int = 64) -> tuple[int, int]:
    """The model body on length-sorted right-padded batches of `rows`, no mask, no adapter
    (check.py's upper bound); returns (tokens, forward passes)."""
    import torch

    tok = prm.tokenizer
    enc = sorted((prm.encode(i, q, t, e).input_ids for i, (q, t, e) in enumerate(zip(qs, texts, ends))), key=len)
    body = prm.model.base_model
    w = torch.randn(body.config.hidden_size, device=device)
    n_tok = passes = 0
    with torch.inference_mode():
        for i in range(0, len(enc), rows):
            batch = enc[i:i + rows]
            width = max(map(len, batch))
            ids = torch.full((len(batch), width), tok.pad_token_id, dtype=torch.long)
            for r, row in enumerate(batch):
                ids[r, :len(row)] = torch.tensor(row)
            h = body(input_ids=ids.to(device)).last_hidden_state
            (h.float() @ w).sigmoid().sum().item()
            n_tok += sum(map(len, batch))
            passes += 1
    return n_tok, passes


def max_diff(a, b) -> float:
    return max((abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True)), default=0.0)


def row(name, seconds, tokens, computed, passes, params, peak, sheet):
    counted = 2 * params * tokens / seconds / 1e12
    done = 2 * params * computed / seconds / 1e12
    return {"path": name, "seconds": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / seconds),
            "forward_passes": passes, "computed_tokens": computed,
            "tflops_counted": round(counted, 2), "tflops_computed": round(done, 2),
            "share_of_measured_peak": round(counted / peak, 3), "computed_share_of_measured_peak": round(done / peak, 3),
            "share_of_datasheet_peak": round(counted / sheet, 3) if sheet else None}


def throughput(prm, device, args, peak, sheet):
    params = prm.num_parameters
    q, t, e = workload(args.questions, args.samples, 6, 20, args.shared_words)
    warm = (q[:args.samples * 2], t[:args.samples * 2], e[:args.samples * 2])
    prm.score(*warm, batch_size=BATCH_SIZE, reuse_prefix=False)
    prm.score(*warm, batch_size=BATCH_SIZE, reuse_prefix=True)
    out, rows = {"samples": len(t), "questions": args.questions}, []
    (plain, tokens), s = timed(device, lambda: prm.score(q, t, e, batch_size=BATCH_SIZE, reuse_prefix=False))
    st = prm.last_call
    rows.append(row("plain", s, sum(tokens), st["computed_tokens"], st["forward_passes"], params, peak, sheet))
    out["budget"] = {k: st[k] for k in ("samples_per_pass", "token_budget", "work_bytes")}
    (reuse, _), s = timed(device, lambda: prm.score(q, t, e, batch_size=BATCH_SIZE, reuse_prefix=True))
    st = prm.last_call
    rows.append(row("prefix reuse", s, sum(tokens), st["computed_tokens"], st["forward_passes"], params, peak, sheet))
    out["reuse_kv_limit_bytes"], out["reuse_peak_kv_bytes"] = st["kv_limit_bytes"], st["peak_kv_bytes"]
    (auto, _), s = timed(device, lambda: prm.score(q, t, e, batch_size=BATCH_SIZE))
    st = prm.last_call
    rows.append(row(f"default (auto: {st['path']})", s, sum(tokens), st["computed_tokens"], st["forward_passes"],
                    params, peak, sheet))
    out["default_path"], out["estimated_cost"] = st["path"], st["estimated_cost"]
    (n_tok, passes), s = timed(device, lambda: raw_forward(prm, device, q, t, e))
    rows.append(row("raw forward, length-sorted batches of 64, no adapter", s, n_tok, n_tok, passes, params, peak, sheet))
    by = {r["path"]: r for r in rows}
    raw = rows[-1]["tokens_per_s"]
    out["rows"] = rows
    out["mean_tokens_per_sample"] = round(sum(tokens) / len(tokens))
    out["plain_over_raw"] = round(by["plain"]["tokens_per_s"] / raw, 3)
    out["default_over_raw"] = round(rows[2]["tokens_per_s"] / raw, 3)
    out["reuse_over_plain"] = round(by["prefix reuse"]["tokens_per_s"] / by["plain"]["tokens_per_s"], 3)
    out["max_abs_reuse_minus_plain"] = max_diff(reuse, plain)
    out["max_abs_default_minus_plain"] = max_diff(auto, plain)
    return out


def tree_rounds(prm, device, args):
    """Every live node adds one step per round, then all nodes are scored (REBASE's
    pattern): a session against plain re-scoring of whole paths."""
    from pipeline.core.prompts import step_ends

    nq, width, rounds, words = (4, 4, 3, 8) if args.smoke else (32, 16, 5, 30)
    rng = random.Random(5)
    shots = " ".join(random.Random(99).choices(WORDS, k=args.shared_words)) + " . " if args.shared_words else ""
    questions = [shots + "What is " + " ".join(rng.choices(WORDS, k=30)) + " ?" for _ in range(nq)]
    qs = [q for q in questions for _ in range(width)]
    out = {"nodes": len(qs), "rounds": rounds}
    last = {}
    for mode in ("plain", "session"):
        scorer = prm.session() if mode == "session" else prm
        texts, per_round, computed = [""] * len(qs), [], 0
        steps = random.Random(7)
        for r in range(rounds):
            texts = [(x + "\n" if x else "") + f"Step {r + 1}: " + " ".join(steps.choices(WORDS, k=words)) + " . ки"
                     for x in texts]
            ends = [step_ends(x) for x in texts]
            kw = {} if mode == "session" else {"reuse_prefix": False}
            (scores, tokens), s = timed(device, lambda: scorer.score(qs, texts, ends, batch_size=BATCH_SIZE, **kw))
            per_round.append(round(s, 3))
            computed += prm.last_call["computed_tokens"]
        last[mode] = scores
        out[mode] = {"seconds_per_round": per_round, "total_s": round(sum(per_round), 3),
                     "computed_tokens": computed, "final_tokens_per_node": round(sum(tokens) / len(tokens))}
        if mode == "session":
            out[mode]["kv_limit_bytes"] = prm.last_call["kv_limit_bytes"]
    out["session_speedup"] = round(out["plain"]["total_s"] / out["session"]["total_s"], 3)
    out["max_abs_session_minus_plain"] = max_diff(last["session"], last["plain"])
    return out


def precision(shape, device, tok):
    """A 2-layer model of the shape's architecture in float32: the two paths agree."""
    import torch

    prm = build(shape, device, torch.float32, tok, small=True)
    q, t, e = workload(4, 6, 4, 10, 40, seed=3)
    plain, _ = prm.score(q, t, e, batch_size=4, reuse_prefix=False)
    reuse, _ = prm.score(q, t, e, batch_size=4, reuse_prefix=True)
    split, _ = prm.score(q, t, e, reuse_prefix=True, token_budget=64)  # a question's samples over several passes
    auto, _ = prm.score(q, t, e, batch_size=4)
    return {"float32_max_abs_reuse_minus_plain": max(max_diff(reuse, plain), max_diff(split, plain)),
            "float32_max_abs_default_minus_plain": max_diff(auto, plain)}


def table(shape: str, res: dict) -> str:
    lines = [f"### {shape} ({res['dtype']}, {res['device']}, {res['params'] / 1e9:.2f}B parameters)", "",
             "| path | tokens/s | TFLOP/s counted | share of peak | TFLOP/s computed | forward passes |",
             "|---|---|---|---|---|---|"]
    for r in res["throughput"]["rows"]:
        lines.append(f"| {r['path']} | {r['tokens_per_s']:,} | {r['tflops_counted']} | "
                     f"{r['share_of_measured_peak']:.0%} | {r['tflops_computed']} | {r['forward_passes']} |")
    th = res["throughput"]
    lines += ["", f"plain / raw {th['plain_over_raw']} (goal >= 0.9), default / raw {th['default_over_raw']}, "
                  f"reuse / plain {th['reuse_over_plain']} (goal >= 1.5), max |reuse - plain| "
                  f"{th['max_abs_reuse_minus_plain']:.1e}; budget {th['budget']}"]
    if "tree" in res:
        tr = res["tree"]
        lines.append(f"tree rounds ({tr['nodes']} nodes): PRM s/round plain {tr['plain']['seconds_per_round']}, "
                     f"session {tr['session']['seconds_per_round']} ({tr['session_speedup']}x), "
                     f"max |session - plain| {tr['max_abs_session_minus_plain']:.1e}")
    if "precision" in res:
        lines.append(f"float32: max |reuse - plain| {res['precision']['float32_max_abs_reuse_minus_plain']:.1e}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="llemma-7b", help=f"comma-separated, or all: {', '.join(SHAPES)}")
    ap.add_argument("--dtype", default="float16")
    ap.add_argument("--questions", type=int)
    ap.add_argument("--samples", type=int)
    ap.add_argument("--shared-words", type=int, default=150, help="words of a few-shot prompt every sample shares")
    ap.add_argument("--skip", default="", help="sections to skip: tree, precision")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    args = ap.parse_args(argv)

    import torch
    import transformers

    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device (use --smoke for the CPU)")
    dtype = torch.float32 if args.smoke else getattr(torch, args.dtype)
    args.questions = args.questions or (4 if args.smoke else 64)
    args.samples = args.samples or (4 if args.smoke else 16)
    if args.smoke:
        args.shared_words = min(args.shared_words, 20)
    shapes = list(SHAPES) if args.shape == "all" else args.shape.split(",")
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        raise SystemExit(f"unknown shape(s) {unknown}; known: {', '.join(SHAPES)}")
    skip = set(filter(None, args.skip.split(",")))
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    sheet = next((v for k, v in DATASHEET_TFLOPS.items() if k in gpu), None) if device == "cuda" else None
    report = {"env": {"torch": torch.__version__, "transformers": transformers.__version__, "device": gpu,
                      "dtype": str(dtype).removeprefix("torch."), "smoke": args.smoke,
                      "blocked_present": sorted(m for m in ("polars", "vllm", "duckdb", "snakemake") if m in sys.modules)}}
    t0 = time.perf_counter()
    peak = matmul_peak(device, dtype, args.smoke)
    report["env"].update(matmul_peak_tflops=round(peak, 1), datasheet_peak_tflops=sheet)
    tok = tokenizer()
    texts = []
    for shape in shapes:
        res = {"device": gpu, "dtype": report["env"]["dtype"]}
        (prm, s) = timed(device, lambda: build(shape, device, dtype, tok, small=args.smoke))
        res.update(format=prm.format, params=prm.num_parameters, init_s=round(s, 1))
        res["throughput"] = throughput(prm, device, args, peak, sheet)
        if "tree" not in skip:
            res["tree"] = tree_rounds(prm, device, args)
        del prm
        if device == "cuda":
            res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if "precision" not in skip:
            res["precision"] = precision(shape, device, tok)
        report[shape] = res
        texts.append(table(shape, res))
        print(texts[-1], flush=True)
    report["total_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=out, delete=False, suffix=".tmp") as f:
        json.dump(report, f, indent=1)
    os.replace(f.name, out / "gpu_prm.json")
    print(f"total {report['total_s']} s; report: {out / 'gpu_prm.json'}", flush=True)
    return report


if __name__ == "__main__":
    main()
