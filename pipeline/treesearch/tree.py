"""Tree search guided by a PRM: the shared machinery (`Searcher`) and REBASE, MCTS and PRM
beam search (with lookahead), batched across problems. DVTS and particle filtering are
pipeline/treesearch/dvts.py and particles.py on the same Searcher; the algorithms by
name are pipeline/treesearch/algorithms.py's.

A *step* is one generation of at most `max_step_tokens` tokens; a *node* is a partial
solution (the steps so far) with the PRM's score of every step. Every round of every
algorithm is ONE `Generator.expand` call over the nodes of all problems (vLLM batches
them, and prefix caching shares each problem's prompt and every node's path among its
children), then ONE PRM call over all new children, in a scoring session
(`PRM.session()`) that keeps the KV cache of the paths it read: each child is computed
from its parent's cached path (pipeline/prm/prefix.py), with the scores of scoring its
whole path from scratch. Nothing runs one problem at a time.

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
            With `lookahead` k (lookahead search, Snell et al. 2024) nodes are ranked by
            the PRM's score at the end of a greedy rollout of up to k more steps.
    mcts    UCT (Q + C sqrt(ln N_parent / N_child)) over steps for `budget` expansions
            per problem: the root gets `root_children`, other selected leaves 2; a new
            node's value is its PRM score, backed up to its ancestors as a running
            average; complete nodes and exhausted subtrees are never selected again.
Scores used to rank and allocate are each node's last-step score (`Node.rank`: the
lookahead score where there is one).

Lookahead (`Searcher.expand(..., lookahead=k)`): every live child is rolled out greedily
(temperature 0) up to k more steps, all rollouts of a round sharing each of the k
generate calls, stopping where the solution ends by the rules above; the round's one PRM
call reads the rollouts' ends. The rollout steps are not nodes of the tree: they count
in the compute (output, context and PRM tokens; `Tree.rollout_tokens`) and nowhere else.

Contract: `pipeline.treesearch.algorithms.run(algorithm, Searcher(generator, prm,
questions, prompts_, stop=..., limits=...), budget, settings)` returns one `Tree` per
problem, in order: its complete leaves (each `Node` with its steps, the PRM score of
every step and why it ended) and the compute it spent (policy output and context
tokens, PRM tokens, depth). The generator is any `Generator`; the PRM one of
`pipeline.prm` (its `score`, and `session` when it has one). Choosing final answers, the
outputs and the vLLM engine are the search stage's (pipeline/search.py); this module
never imports it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pipeline.core import prompts
from pipeline.tasks import answers

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


def cut_at_stop(text: str, stop: Sequence[str], *, newline_ended: bool = False) -> tuple[str, bool]:
    r"""`text` up to the first stop string, and whether one was found. The text is looked
    at as it sits after the newline that ended the text before it (stop strings such as
    "\n\n" or "\nQuestion:" start with that newline, so the engine never sees them whole),
    followed by its own ending newline when `newline_ended`."""
    framed = "\n" + text + ("\n" if newline_ended else "")
    cut = min((framed.find(s) for s in stop if s and s in framed), default=-1)
    return (framed[1:max(cut, 1)], True) if cut >= 0 else (text, False)


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
               stops: list[list[str]] | None = None, *, greedy: bool = False) -> list[list[Step]]:
        """`counts[i]` sampled steps continuing `contexts[i]`, each at most `max_tokens[i]`
        tokens. `stops` (only with `Limits.step_stop`): request i stops at any of
        `stops[i]`, whose first entry is the step stop string; without it a step ends at
        a newline. `greedy` (only passed for lookahead rollouts): decode at temperature 0."""


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
    lookahead: float | None = None  # the PRM's score at the end of this node's greedy rollout

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
        return bool(self.steps) and answers.extract_answer(self.steps[-1]) is not None

    @property
    def score(self) -> float:
        """The node's value: its last step's PRM score (0 for a solution without steps)."""
        return self.scores[-1] if self.scores else 0.0

    @property
    def rank(self) -> float:
        """What beam search and DVTS rank by: the lookahead score when the node was
        expanded with lookahead, else its own score."""
        return self.score if self.lookahead is None else self.lookahead


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
    depth: int = 0  # deepest node reached (steps; lookahead rollouts not counted)
    dropped: int = 0  # dead ends discarded (dead_ends "drop")
    rollout_tokens: int = 0  # of output_tokens: generated by lookahead rollouts


class Searcher:
    """Runs the expand -> score rounds shared by the algorithms over many problems."""

    def __init__(self, generator: Generator, prm: Any, questions: list[str], prompts_: list[str], *,
                 stop: Sequence[str], limits: Limits, batch_size: int = 8):
        self.generator, self.prm, self.limits, self.batch_size = generator, prm, limits, batch_size
        self.prm_seconds = 0.0  # wall seconds inside PRM calls (the search's timing record)
        # A scoring session keeps the PRM's KV cache of every path it read, so a child is
        # computed from its parent's cached path: only the new step's tokens (plus any
        # token that merges across the boundary) go through the model.
        session = getattr(prm, "session", None)
        self.scorer = session() if callable(session) else prm
        self.stop = [s for s in stop if s]
        # With raw steps, vLLM looks for the solution's stop strings itself (the blank
        # line too, when it ends solutions); line steps find them in `_child`.
        self.raw_stops = [*self.stop, *(["\n\n"] if limits.blank_line_ends and "\n\n" not in self.stop else [])]
        sep = "\n" if limits.step_stop is None else ""
        self.trees = [Tree(q, p, Node(i, sep=sep)) for i, (q, p) in enumerate(zip(questions, prompts_, strict=True))]

    def context(self, node: Node) -> str:
        # line steps: every step is followed by its newline
        return self.trees[node.problem].prompt + node.text + (node.sep if node.steps else "")

    def _generate(self, nodes: list[Node], counts: list[int], *, greedy: bool = False) -> list[list[Step]]:
        """One generate call: counts[i] steps continuing nodes[i] (greedy: temperature 0)."""
        extra: dict[str, Any] = {"greedy": True} if greedy else {}
        if self.limits.step_stop is not None:
            extra["stops"] = [[prompts.step_stop(self.limits.step_stop, n.depth), *self.raw_stops] for n in nodes]
        steps = self.generator.expand(
            [self.context(n) for n in nodes], counts,
            [min(self.limits.max_step_tokens, self.limits.max_tokens - n.tokens) for n in nodes], **extra,
        )
        for node, k, got in zip(nodes, counts, steps, strict=True):
            if len(got) != k:
                raise RuntimeError(f"search: asked for {k} steps of problem {node.problem}, got {len(got)}")
        return steps

    def expand(self, requests: list[tuple[Node, int]], *, lookahead: int = 0) -> list[list[Node]]:
        """Children of every (node, count) request: one generate call, one PRM call.

        With `lookahead` k > 0 every live child is first rolled out greedily up to k more
        steps (k more generate calls, each over the rollouts of all problems; a rollout
        stops where its solution ends) and the one PRM call reads each rollout's end:
        the child's `lookahead` is the last score of its rollout (Snell et al. 2024), its
        own step scores those of the rollout's path up to the child (the PRM reads a
        step in the context before it only)."""
        requests = [(n, k) for n, k in requests if k > 0]
        if not requests:
            return []
        for node, _ in requests:
            if node.complete:
                raise RuntimeError(f"search: expanding a complete node (problem {node.problem})")
        steps = self._generate([n for n, _ in requests], [k for _, k in requests])
        out: list[list[Node]] = []
        for (node, _), got in zip(requests, steps, strict=True):
            children = [self._child(node, s) for s in got]
            node.children.extend(children)
            out.append(children)
        new = [c for cs in out for c in cs]
        if lookahead > 0:
            self._look_ahead(new, lookahead)
        else:
            self._score(new)
        return out

    def _look_ahead(self, children: list[Node], k: int) -> None:
        """Greedy rollouts of up to `k` steps from every live child, then ONE PRM call over
        the rollouts' ends (a complete child is its own end). Children with the same text
        share one rollout: greedy decoding would write the same steps twice."""
        tips: dict[tuple[int, str, bool], Node] = {}
        for c in children:
            tips.setdefault((c.problem, c.text, c.complete), c)
        rolling = [key for key, c in tips.items() if not c.complete]
        for _ in range(k):
            if not rolling:
                break
            got = self._generate([tips[key] for key in rolling], [1] * len(rolling), greedy=True)
            for key, [step] in zip(rolling, got, strict=True):
                tips[key] = self._child(tips[key], step, rollout=True)
            rolling = [key for key in rolling if not tips[key].complete]
        self._score(list(tips.values()))
        for c in children:
            tip = tips[(c.problem, c.text, c.complete)]
            if tip is not c and c.steps:
                c.scores = tip.scores[:c.depth]
            c.lookahead = tip.score

    def _child(self, parent: Node, step: Step, *, rollout: bool = False) -> Node:
        tree = self.trees[parent.problem]
        tree.output_tokens += step.tokens
        tree.prompt_tokens += step.context_tokens
        if rollout:
            tree.rollout_tokens += step.tokens
        child = Node(parent.problem, list(parent.steps), list(parent.scores), parent.tokens + step.tokens, parent,
                     sep=parent.sep)
        text, ended = step.text, step.end in ("eos", "stop")
        if self.limits.step_stop is None:
            # The prompt's stop strings (e.g. "\n\n", "\nQuestion:") start with the newline
            # that ended the previous step, so vLLM never sees them whole: look for them in
            # the step as it sits after that newline.
            text, cut = cut_at_stop(text, self.stop, newline_ended=step.end == "newline")
            ended = ended or cut
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
        elif answers.extract_answer(text) is not None:
            child.end = "answer"
        elif child.depth >= self.limits.max_depth:
            child.end = "max_depth"
        elif child.tokens >= self.limits.max_tokens:
            child.end = "max_tokens"
        if not rollout:
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
        start = time.perf_counter()
        scores, tokens = self.scorer.score(
            [self.trees[p].question for p, _ in keys], texts,
            [unique[k][0].step_ends() for k in keys], batch_size=self.batch_size,
        )
        self.prm_seconds += time.perf_counter() - start
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


def beam(s: Searcher, budget: int, *, children: int = 4, lookahead: int = 0) -> list[Tree]:
    """PRM beam search: keep the top budget / children incomplete nodes each round. With
    `lookahead` k, nodes are ranked by the score at the end of a k-step greedy rollout
    (lookahead search, Snell et al. 2024; k = 0 is beam search)."""
    keep = max(1, budget // children)
    plans: list[list[tuple[Node, int]]] = [[(t.root, budget)] for t in s.trees]
    while any(plans):
        got = iter(s.expand([r for plan in plans for r in plan], lookahead=lookahead))
        for p, plan in enumerate(plans):
            live = s.sort_out(next(got) for _ in plan)
            live.sort(key=lambda c: -c.rank)  # stable: ties keep generation order
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
