"""Math-Shepherd rollouts: step labels from the policy's own continuations (the `rollouts` stage).

The general labeller of `prms.<name>.train.supervision: rollouts` (pipeline/prm/labels.py),
for any dataset (Wang et al. 2024, automatic process annotation). From every step prefix
of every training sample the policy writes k completions; a step is good if one reaches
the reference answer.

A prefix is the sampling prompt + the sample's text up to the end of step k + "\\n"; the
policy continues it k times (ONE batched generate call for all prefixes of all samples,
prefix caching sharing each sample's path among its prefixes; the prompt's stop strings
end a continuation, checked as the text sits after that "\\n"). A step whose prefix
already holds a final answer is not rolled out: its label is whether that answer is
right. A step's estimate is reached / k, the share of completions whose final answer
equals the reference. `label: hard` (default) trains on 1 if any completion reached it
(Math-Shepherd's hard estimate, which the paper found as good as the soft one for
verification), `label: soft` on the share.

Settings (`prms.<name>.train.rollouts`, DEFAULTS): k, max_tokens, temperature, top_p
(KEY_SETTINGS: the rollouts' cache key) and label (read by training only).

Rollouts (results/rollouts/{dataset}/{model}/{key}/rollouts.parquet, protected; `key`
hashes the training cache key and KEY_SETTINGS, so a changed setting writes a new
folder; key.json beside it; the job's timing record (pipeline/core/timing.py) in the
Parquet's metadata), one row per training sample x step:
    problem_id     str
    sample_idx     int32
    step           int32         0-based step index
    kind           str           "rollouts" (continued k times) | "answer" (the prefix
                                 holds a final answer; k = 1, reached = its correctness)
    k              int32         completions
    reached        int32         completions whose final answer equals the reference
    output_tokens  int64         tokens the completions generated
    completions    list[str]     the continuations (empty for kind "answer")
    answers        list[str]     their normalised final answers (null: none)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import polars as pl

from pipeline.core import integrity, io, prompts, timing
from pipeline.engine import vllm_engine
from pipeline.tasks.answers import equivalent, extract_answer, normalize
from pipeline.treesearch.tree import cut_at_stop

ROLLOUTS = {
    "problem_id": pl.String,
    "sample_idx": pl.Int32,
    "step": pl.Int32,
    "kind": pl.String,
    "k": pl.Int32,
    "reached": pl.Int32,
    "output_tokens": pl.Int64,
    "completions": pl.List(pl.String),
    "answers": pl.List(pl.String),
}


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int


class Completer(Protocol):
    def complete(self, contexts: list[str], k: int) -> list[list[Completion]]:
        """`k` sampled continuations of every context."""


@dataclass(frozen=True)
class Prefix:
    problem_id: str
    sample_idx: int
    step: int
    context: str | None  # None: the prefix holds a final answer (not rolled out)
    answer: str | None  # that answer, normalised


def rollout_requests(samples: pl.DataFrame, problems: pl.DataFrame, render) -> list[Prefix]:
    """One Prefix per step of every sample with steps, in sample order. `render(question)`
    is the sampling prompt of a question."""
    questions = dict(zip(problems["problem_id"], problems["question"]))
    out: list[Prefix] = []
    rows = samples.filter(pl.col("step_ends").list.len() > 0).sort("problem_id", "sample_idx")
    prompts_: dict[str, str] = {}
    for pid, idx, text, ends in rows.select("problem_id", "sample_idx", "text", "step_ends").iter_rows():
        if pid not in questions:
            raise ValueError(f"rollouts: problem {pid!r} of the samples is not in the problems file")
        prompt = prompts_.setdefault(pid, render(questions[pid]))
        for k, end in enumerate(ends):
            head = text[:end]
            found = extract_answer(head)
            if found is not None:
                out.append(Prefix(pid, idx, k, None, normalize(found) or None))
            else:
                out.append(Prefix(pid, idx, k, prompt + head + "\n", None))
    return out


def rollout_rows(prefixes: Sequence[Prefix], problems: pl.DataFrame, completer: Completer, *, k: int,
                 stop: Sequence[str]) -> pl.DataFrame:
    """ROLLOUTS rows: every prefix without an answer continued `k` times in ONE call."""
    if k < 1:
        raise ValueError(f"rollouts: k must be >= 1, got {k}")
    reference = dict(zip(problems["problem_id"], problems["answer"]))
    todo = [p for p in prefixes if p.context is not None]
    got = completer.complete([p.context for p in todo], k) if todo else []
    if len(got) != len(todo):
        raise RuntimeError(f"rollouts: {len(todo)} prefixes continued, {len(got)} results")
    by_prefix = dict(zip(((p.problem_id, p.sample_idx, p.step) for p in todo), got))
    verdicts: dict[tuple[str, str], bool] = {}

    def right(pid: str, answer: str | None) -> bool:
        if not answer:
            return False
        if (pid, answer) not in verdicts:
            verdicts[(pid, answer)] = equivalent(answer, str(reference[pid]))
        return verdicts[(pid, answer)]

    rows: dict[str, list] = {c: [] for c in ROLLOUTS}
    for p in prefixes:
        if p.context is None:
            kind, n, reached, tokens, texts, answers = "answer", 1, int(right(p.problem_id, p.answer)), 0, [], []
        else:
            comps = by_prefix[(p.problem_id, p.sample_idx, p.step)]
            if len(comps) != k:
                raise RuntimeError(f"rollouts: {len(comps)} completions for problem {p.problem_id} "
                                   f"sample {p.sample_idx} step {p.step}, asked for {k}")
            texts = [cut_at_stop(c.text, stop)[0] for c in comps]
            answers = []
            for t in texts:
                found = extract_answer(t)
                answers.append((normalize(found) or None) if found is not None else None)
            kind, n, tokens = "rollouts", k, sum(c.tokens for c in comps)
            reached = sum(right(p.problem_id, a) for a in answers)
        rows["problem_id"].append(p.problem_id)
        rows["sample_idx"].append(p.sample_idx)
        rows["step"].append(p.step)
        rows["kind"].append(kind)
        rows["k"].append(n)
        rows["reached"].append(reached)
        rows["output_tokens"].append(tokens)
        rows["completions"].append(texts)
        rows["answers"].append(answers)
    return pl.DataFrame(rows, schema=ROLLOUTS)


# --------------------------------------------------------------------------- the vLLM edge


class VLLMCompleter:
    """`Completer` on a vLLM engine: one `LLM.generate` call for all contexts."""

    def __init__(self, llm: Any, settings: dict, stop: Sequence[str]):
        self.llm, self.settings, self.stop = llm, settings, list(stop)

    def complete(self, contexts: list[str], k: int) -> list[list[Completion]]:
        params = vllm_engine.sampling_params(self.settings, n=k, stop=self.stop)
        outputs = self.llm.generate(contexts, params)
        return [[Completion(c.text, len(c.token_ids)) for c in sorted(o.outputs, key=lambda c: c.index)]
                for o in outputs]


def run_rollouts(*, spec: dict, model_dir: str, problems: str, shards: list[str], out: str) -> None:
    """The rollouts job: continue every step prefix of the training samples, write ROLLOUTS."""
    settings = spec["rollouts"]
    prompt = spec["prompt"]
    samples = pl.concat([pl.read_parquet(f) for f in shards])
    probs = pl.read_parquet(problems)
    # vllm_engine.engine_args: small KV blocks on CPU, so prefix caching shares each sample's
    # path among its step prefixes as it does a node's path in tree search
    engine_args = vllm_engine.engine_args(spec.get("engine_args"))
    watch = timing.Stopwatch()
    with watch.phase("load"):
        llm = vllm_engine.make_engine(model_dir, seed=vllm_engine.engine_seed(spec["key"], "rollouts"), engine_args=engine_args,
                                      gpus=(vllm_engine.planned(spec["key"]) or {}).get("tp"))
    with watch.phase("work"):
        tokenizer = llm.get_tokenizer() if prompt.get("format") == "chat" else None
        prefixes = rollout_requests(samples, probs, lambda q: prompts.render(prompt, q, tokenizer))
        df = rollout_rows(prefixes, probs, VLLMCompleter(llm, settings, prompt.get("stop", [])),
                          k=int(settings["k"]), stop=prompt.get("stop", []))
    rolled = df.filter(pl.col("kind") == "rollouts")
    measured = timing.record(
        watch, device=timing.describe_device(gpus=vllm_engine.started_gpus(llm, engine_args)),
        problems=df["problem_id"].n_unique(), samples=int(rolled["k"].sum()),
        output_tokens=int(rolled["output_tokens"].sum()),
    )
    io.write_json({"key": spec["key"], "train_key": spec["train_key"], "rollouts": settings, "prompt": prompt,
                   "engine_args": spec.get("engine_args", {})}, Path(out).parent / "key.json")
    io.write_parquet(df, out, metadata=timing.as_metadata(measured))
    print(f"{rolled.height} prefixes x {settings['k']} completions ({rolled['output_tokens'].sum()} tokens), "
          f"{df.height - rolled.height} answer steps; steps reached: {(df['reached'] > 0).mean():.3f}; "
          f"load {measured['load_s']:.0f} s, work {measured['work_s']:.0f} s -> {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Math-Shepherd rollouts of a value head's training samples")
    ap.add_argument("--spec", required=True, help="JSON from pipeline.workflow.plan.Rollouts.spec")
    ap.add_argument("--info", required=True, help="policy model info.json")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("shards", nargs="+")
    a = ap.parse_args(argv)
    from pipeline.engine import models

    integrity.check_inputs([a.problems, *a.shards])
    run_rollouts(spec=json.loads(a.spec), model_dir=models.model_dir_of(a.info), problems=a.problems,
                 shards=a.shards, out=a.out)


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
