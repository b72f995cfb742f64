"""The search stage: one job per (search, budget, block of problems) runs a tree search
guided by a PRM (REBASE, PRM beam search with or without lookahead, MCTS, DVTS or
particle filtering: pipeline/treesearch/algorithms.py names them; the steps and
completion rules are pipeline/treesearch/tree.py's, described in its docstring) on a
vLLM engine (`VLLMGenerator`), chooses final answers from the complete leaves and writes
them. What an algorithm draws itself (the particles' resampling) is seeded by the job's
engine seed, so a job reruns as it ran up to the engine's own randomness.

Final answers, the output schemas (SEARCH, LEAVES) and the `replay` rows of a search
are pipeline/treesearch/results.py's.

GPUs (`gpu_placement`): the placement of the workflow's GPU memory plan
(pipeline/workflow/gpu_plan.py): the PRM on its own GPU (the one after the policy's) or
beside the policy on GPU 0, the policy engine tensor parallel over its GPUs and, where
they share GPU 0, started with a gpu_memory_utilization that leaves the PRM the working
memory its CUDA batch budgets need (pipeline/prm/memory.py; vllm_engine.make_engine). The PRM computes in its entry's dtype
(pipeline.prm.precision; recorded in the results' timing record).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core import integrity, io, prompts, timing
from pipeline.engine.vllm_engine import (
    engine_args,
    engine_seed,
    make_engine,
    planned,
    started_gpus,
)
from pipeline.prm import memory as prm_memory
from pipeline.prm import precision
from pipeline.prm.loading import open_prm
from pipeline.treesearch.algorithms import run
from pipeline.treesearch.results import leaves_table, results
from pipeline.treesearch.tree import Limits, Searcher, Step

# --------------------------------------------------------------------------- selection


# --------------------------------------------------------------------------- the engine


class VLLMGenerator:
    """`Generator` on a vLLM engine: one `LLM.generate` call per round, n samples per
    node, stopping at the first newline (or the prompt's other stop strings), or, when
    the Searcher passes `stops`, at each request's own stop strings; `greedy` requests
    (lookahead rollouts) decode at temperature 0."""

    def __init__(self, llm: Any, *, temperature: float, top_p: float, stop: Sequence[str] = ()):
        self.llm, self.temperature, self.top_p = llm, temperature, top_p
        self.stop = ["\n", *[s for s in stop if s and "\n" not in s]]

    def expand(self, contexts: list[str], counts: list[int], max_tokens: list[int],
               stops: list[list[str]] | None = None, *, greedy: bool = False) -> list[list[Step]]:
        from vllm import SamplingParams

        per = [self.stop] * len(contexts) if stops is None else stops
        temperature = 0.0 if greedy else self.temperature
        params = [
            SamplingParams(n=k, temperature=temperature, top_p=self.top_p, max_tokens=m, stop=list(st))
            for k, m, st in zip(counts, max_tokens, per, strict=True)
        ]
        outputs = self.llm.generate(contexts, params)
        out = []
        for o, st in zip(outputs, per, strict=True):
            ctx = len(o.prompt_token_ids)
            steps = []
            for c in sorted(o.outputs, key=lambda c: c.index):
                if c.finish_reason == "length":
                    end = "length"
                elif stops is None and c.stop_reason == "\n":
                    end = "newline"
                elif stops is not None and c.stop_reason == st[0]:
                    end = "step"
                elif isinstance(c.stop_reason, str):
                    end = "stop"
                else:  # None or a stop token id: the model ended the text
                    end = "eos"
                steps.append(Step(c.text, len(c.token_ids), ctx, end))
            out.append(steps)
        return out


def with_dtype(prm_spec: dict, folder: Path) -> tuple[dict, str]:
    """The PRM entry with its dtype resolved (pipeline.prm.precision: the entry's own, else
    the one the search folder's finished blocks were computed in, else float32), and it."""
    records = precision.folder_records(folder, "*/*.parquet", exclude=".leaves.parquet")
    dtype = precision.for_folder(prm_spec, records)
    return {**prm_spec, "options": {**(prm_spec.get("options") or {}), "dtype": dtype}}, dtype


@dataclass(frozen=True)
class GPUPlacement:
    """Where this job's models go: the PRM's device (None: the PRM's own default), the
    GPUs the policy engine takes (None: the engine decides), whether they share GPU 0,
    the bytes of GPU 0 kept for the PRM (None: measured from the loaded PRM)."""

    prm_device: str | None = None
    policy_gpus: int | None = None
    shared: bool = True
    reserve: int | None = None
    longest: int = 2048


def gpu_placement(spec: dict, batch_size: int, *, gpus: int | None = None) -> GPUPlacement:
    """The GPU memory plan's placement of this job (pipeline/workflow/gpu_plan.py, through
    the environment); without one, the PRM on the last of two or more visible GPUs and the
    policy on the others, or both on the only one. Nothing on a CPU."""
    longest = int((spec.get("engine_args") or {}).get("max_model_len") or 2048)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        return GPUPlacement(longest=longest)
    plan = planned(spec["key"])
    if plan is not None:
        if gpus < plan["gpus"]:
            raise ValueError(f"the GPU memory plan places this search job on {plan['gpus']} GPUs "
                             f"({plan['tp']} for the policy, the PRM on GPU {plan['prm_gpu']}); {gpus} are visible")
        shared = plan["prm_gpu"] < plan["tp"]
        return GPUPlacement(f"cuda:{plan['prm_gpu']}", plan["tp"], shared, plan["reserve"] if shared else 0, longest)
    if gpus >= 2:
        return GPUPlacement(f"cuda:{gpus - 1}", gpus - 1, False, 0, longest)
    return GPUPlacement("cuda:0", 1, True, None, longest)


def prm_record(searcher: Searcher) -> dict[str, Any]:
    """How the search's PRM computed (the timing record's `prm`): a session's totals."""
    tree = getattr(searcher.scorer, "tree", None)
    last = getattr(searcher.scorer, "last_call", None) or {}
    rec: dict[str, Any] = {"path": last.get("path", "plain"), "chosen": last.get("chosen")} if tree is None else {
        "path": "prefix reuse", "chosen": "session", "forward_passes": tree.forward_passes,
        "computed_tokens": tree.computed_tokens, "kv_limit_bytes": tree.max_tokens * tree.kv_bytes}
    rec.update({k: last[k] for k in ("samples_per_pass", "token_budget", "work_bytes") if k in last})
    rec["prm_s"] = round(searcher.prm_seconds, 6)
    return rec


def search_block(*, spec: dict, model_dir: str, params: int, problems: pl.DataFrame, budget: int,
                 block: str, head_dir: str | None, out: str, leaves_out: str, batch_size: int = 32) -> None:
    """Run one (search, budget, problem block) job and write its two Parquet files."""
    prm_spec, dtype = with_dtype(spec["prm"], Path(out).parents[1])
    place = gpu_placement(spec, batch_size)
    if place.prm_device is not None:
        prm_spec["options"].setdefault("device", place.prm_device)
    watch = timing.Stopwatch()
    seed = engine_seed(spec["key"], f"{budget}/{block}")
    with watch.phase("load"):
        prm = open_prm(prm_spec, policy_dir=model_dir, head_dir=head_dir)
        reserve = 0
        if place.policy_gpus is not None and place.shared:  # on CUDA, the PRM beside the policy on GPU 0
            reserve = place.reserve if place.reserve is not None else prm_memory.working_set(prm, place.longest)
        llm = make_engine(model_dir, seed=seed, engine_args=engine_args(spec.get("engine_args")),
                          gpus=place.policy_gpus, reserve=reserve)
    prompt = spec["prompt"]
    tokenizer = llm.get_tokenizer() if prompt.get("format") == "chat" else None
    questions = problems["question"].to_list()
    searcher = Searcher(
        VLLMGenerator(llm, temperature=spec["sampling"]["temperature"], top_p=spec["sampling"]["top_p"],
                      stop=prompt.get("stop", [])),
        prm, questions, [prompts.render(prompt, q, tokenizer) for q in questions],
        stop=prompt.get("stop", []), limits=Limits(**spec["limits"]),
        batch_size=batch_size,
    )
    with watch.phase("work"):
        trees = run(spec["algorithm"], searcher, budget, spec["settings"], seed=seed)
        leaves = leaves_table(trees, problems)
        res = results(trees, leaves, problems, algorithm=spec["algorithm"], budget=budget, params=params,
                      prm_params=prm.num_parameters)
    device = timing.job_device(timing.describe_device(gpus=started_gpus(llm, spec.get("engine_args"))),
                               timing.describe_device(getattr(prm, "device", "cpu")), shared=place.shared)
    measured = timing.record(
        watch, device=device, dtype=dtype, problems=len(trees), samples=leaves.height,
        prompt_tokens=sum(t.prompt_tokens for t in trees),
        output_tokens=sum(t.output_tokens for t in trees), prm_tokens=sum(t.prm_tokens for t in trees),
        prm=prm_record(searcher),
    )
    io.write_parquet(leaves, leaves_out)
    io.write_parquet(res, out, metadata=timing.as_metadata(measured))
    rollout = sum(t.rollout_tokens for t in trees)
    if rollout:
        print(f"lookahead rollouts: {rollout} of {sum(t.output_tokens for t in trees)} policy tokens")
    with pl.Config(tbl_rows=20):
        print(res.group_by("selection", "aggregation").agg(pl.col("accuracy").mean(), pl.col("output_tokens").mean())
              .sort("selection", "aggregation"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="tree search (REBASE / beam / MCTS / DVTS / particles) for one problem block")
    ap.add_argument("--spec", required=True, help="JSON from pipeline.workflow.plan.Search.spec()")
    ap.add_argument("--info", required=True, help="policy model info.json")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--block", required=True, help="p{a}-{b}: problems [a, b) of the dataset")
    ap.add_argument("--head", help="value head directory (value-head PRMs)")
    ap.add_argument("--batch-size", type=int, default=32, help="PRM samples per forward pass")
    ap.add_argument("--out", required=True)
    ap.add_argument("--leaves", required=True)
    a = ap.parse_args(argv)
    from pipeline.engine import models

    integrity.check_inputs([a.problems, *filter(None, [a.head])])
    info = json.loads(Path(a.info).read_text())
    start, stop = (int(x) for x in a.block[1:].split("-"))
    problems = pl.read_parquet(a.problems).slice(start, stop - start)
    if problems.height != stop - start:
        raise ValueError(f"{a.problems} has {problems.height} problems in block {a.block}, expected {stop - start}")
    search_block(spec=json.loads(a.spec), model_dir=models.model_dir_of(a.info), params=info["params_total"],
                 problems=problems, budget=a.budget, block=a.block, head_dir=a.head, out=a.out,
                 leaves_out=a.leaves, batch_size=a.batch_size)


if __name__ == "__main__":  # vLLM's spawned workers re-import the main module
    main()
