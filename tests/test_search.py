"""Tree search control flow with a scripted fake engine and a fake PRM."""

from __future__ import annotations

import itertools
import math
import random
import re

import polars as pl
import pytest

from pipeline import search
from pipeline.treesearch import results
from pipeline.treesearch.tree import (
    Limits,
    Node,
    Searcher,
    Step,
    _select,
    allocate,
    beam,
    mcts,
    rebase,
)

# --------------------------------------------------------------------------- allocation


def test_allocate_worked_example():
    scores = [0.9, 0.8, 0.5, 0.2]
    assert allocate(scores, 16, 0.2) == [10, 5, 1, 0]
    assert allocate(scores, 16, 0.1) == [12, 4, 0, 0]
    # order of the nodes does not matter, only their scores
    assert allocate(scores[::-1], 16, 0.2) == [0, 1, 5, 10]


def test_allocate_sums_to_budget_and_favours_better_nodes():
    rng = random.Random(0)
    for _ in range(500):
        n = rng.randint(1, 12)
        scores = [rng.random() for _ in range(n)]
        budget = rng.randint(0, 64)
        t = rng.choice([0.05, 0.1, 0.2, 1.0, 10.0])
        a = allocate(scores, budget, t)
        assert sum(a) == budget and min(a) >= 0
        ranked = [a[i] for i in sorted(range(n), key=lambda i: -scores[i])]
        assert ranked == sorted(ranked, reverse=True)
    assert allocate([0.5, 0.5, 0.5, 0.5], 4, 0.2) == [1, 1, 1, 1]
    assert allocate([0.3], 7, 0.2) == [7]
    assert allocate([0.3, 0.1], 0, 0.2) == [0, 0]


def test_allocate_rejects_bad_input():
    with pytest.raises(ValueError, match="non-finite"):
        allocate([0.1, math.nan], 4, 0.2)
    with pytest.raises(ValueError, match="no live node"):
        allocate([], 3, 0.2)
    with pytest.raises(ValueError, match="temperature"):
        allocate([0.1], 3, 0.0)


# --------------------------------------------------------------------------- fakes


class ScriptedGenerator:
    """Step d of every solution is "Step d." until `answer_at` steps, then
    "The answer is A." with A cycling through `answers`; each step costs `tokens`
    tokens (cut to the request's cap, which then ends the step by length)."""

    def __init__(self, *, answer_at=3, tokens=5, answers=("1", "2", "3"), last=None):
        self.answer_at, self.tokens, self.last = answer_at, tokens, last
        self.answers = itertools.cycle(answers)
        self.calls: list[tuple[list[str], list[int], list[int]]] = []

    def expand(self, contexts, counts, max_tokens):
        self.calls.append((list(contexts), list(counts), list(max_tokens)))
        out = []
        for ctx, k, m in zip(contexts, counts, max_tokens):
            depth = ctx.count("\n")  # prompts have no newline; every step ends with one
            steps = []
            for _ in range(k):
                if self.last is not None and depth >= self.answer_at:
                    text, end = self.last
                elif depth + 1 >= self.answer_at:
                    text, end = f"The answer is {next(self.answers)}.", "newline"
                else:
                    text, end = f"Step {depth + 1}.", "newline"
                used = min(self.tokens, m)
                steps.append(Step(text, used, len(ctx), end if used == self.tokens else "length"))
            out.append(steps)
        return out


class FakePRM:
    """Step scores from the text: answer 1 scores 0.9, other answers 0.3, steps 0.6."""

    name, num_parameters = "fake", 1000

    def __init__(self, bad=None):
        self.calls = 0
        self.bad = bad

    def score(self, questions, texts, step_ends, *, batch_size=8):
        self.calls += 1
        scores = []
        for t, ends in zip(texts, step_ends):
            steps = t.split("\n")
            assert len(steps) == len(ends)
            scores.append([0.9 if s.endswith("is 1.") else 0.3 if "answer" in s else 0.6 for s in steps])
            if self.bad is not None:
                scores[-1][-1] = self.bad
        return scores, [len(t) for t in texts]


def make(generator, prm=None, *, problems=3, limits=Limits(max_depth=6, max_step_tokens=8, max_tokens=100), stop=()):
    return Searcher(generator, prm or FakePRM(), [f"q{i}" for i in range(problems)],
                    [f"Q{i}:" for i in range(problems)], stop=stop, limits=limits)


# --------------------------------------------------------------------------- REBASE


def test_rebase_budget_bookkeeping():
    gen = ScriptedGenerator(answer_at=3)
    trees = rebase(make(gen), 8, temperature=0.2)
    for t in trees:
        assert len(t.leaves) == 8  # exactly `budget` complete solutions
        assert all(leaf.end == "answer" and leaf.depth == 3 for leaf in t.leaves)
        assert t.output_tokens == 8 * 3 * 5  # every generated step counted
    # one generate call per depth over ALL problems, never one per problem
    assert len(gen.calls) == 3
    assert [sum(c[1]) for c in gen.calls] == [24, 24, 24]
    assert all({ctx.split(":")[0] for ctx in c[0]} == {"Q0", "Q1", "Q2"} for c in gen.calls)


def test_rebase_subtracts_completed_nodes_from_the_budget():
    # Solutions finish at different depths: the budget left for the next depth is
    # the budget minus every node completed so far.
    class Mixed(ScriptedGenerator):
        def expand(self, contexts, counts, max_tokens):
            self.calls.append((list(contexts), list(counts), list(max_tokens)))
            out = []
            for ctx, k in zip(contexts, counts):
                d = ctx.count("\n")
                out.append([Step("The answer is 1." if (d + j) % 3 == 0 else f"Step {d}.", 2, len(ctx), "newline")
                            for j in range(k)])
            return out

    gen = Mixed()
    trees = rebase(make(gen, problems=1), 9)
    requested = []
    for contexts, counts, _ in gen.calls:
        requested.append(sum(counts))
    # depth 0: 9 children, 3 complete (j = 0, 3, 6); depth 1: 6 asked; ...
    assert requested[0] == 9 and requested[1] == 6
    assert len(trees[0].leaves) == 9
    assert sum(requested) == 9 + sum(requested[1:]) and requested == sorted(requested, reverse=True)


def test_rebase_allocates_by_score():
    gen = ScriptedGenerator(answer_at=2, answers=("1", "2"))  # depth 1 is a plain step
    s = make(gen, problems=1)
    rebase(s, 4, temperature=0.2)
    # all depth-1 nodes score 0.6, so the 4 children are spread evenly
    assert gen.calls[1][1] == [1, 1, 1, 1]


def test_depth_cap_and_token_cap_fire():
    gen = ScriptedGenerator(answer_at=100, tokens=5)  # never answers
    trees = rebase(make(gen, limits=Limits(max_depth=4, max_step_tokens=8, max_tokens=100)), 3)
    assert all(leaf.end == "max_depth" and leaf.depth == 4 for t in trees for leaf in t.leaves)

    gen = ScriptedGenerator(answer_at=100, tokens=10)
    trees = rebase(make(gen, limits=Limits(max_depth=50, max_step_tokens=16, max_tokens=25)), 3)
    assert [c[2][0] for c in gen.calls] == [16, 15, 5]  # each request capped by what is left
    for t in trees:
        assert all(leaf.end == "max_tokens" and leaf.tokens == 25 for leaf in t.leaves)


@pytest.mark.parametrize(
    "last, end, depth",
    [(("", "newline"), "stop", 2),  # a blank line ends the solution
     (("", "eos"), "eos", 2),
     (("Question: what?", "newline"), "stop", 2),  # the prompt's "\nQuestion:" stop string
     (("So it is 4", "eos"), "eos", 3)],
)
def test_completion_by_end_of_solution(last, end, depth):
    class EndsAtDepth2(ScriptedGenerator):  # two plain steps, then `last`
        def expand(self, contexts, counts, max_tokens):
            out = []
            for ctx, k in zip(contexts, counts):
                d = ctx.count("\n")
                text, how = last if d >= 2 else (f"Step {d + 1}.", "newline")
                out.append([Step(text, 3, len(ctx), how) for _ in range(k)])
            return out

    trees = rebase(make(EndsAtDepth2(), stop=["\n\n", "\nQuestion:"], problems=1), 2)
    for leaf in trees[0].leaves:
        assert leaf.end == end and leaf.depth == depth
        assert len(leaf.scores) == depth and all(0 < x < 1 for x in leaf.scores)


def test_empty_solution_is_a_leaf_without_steps():
    class Blank(ScriptedGenerator):
        def expand(self, contexts, counts, max_tokens):
            return [[Step("", 1, len(c), "newline") for _ in range(k)] for c, k in zip(contexts, counts)]

    prm = FakePRM()
    trees = rebase(make(Blank(), prm, stop=["\n\n"], problems=2), 3)
    assert all(len(t.leaves) == 3 and all(leaf.depth == 0 and leaf.end == "stop" for leaf in t.leaves)
               for t in trees)
    assert prm.calls == 0  # nothing to score


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_child_that_cannot_be_scored_is_an_error(bad):
    with pytest.raises(ValueError, match="PRM 'fake' gave"):
        rebase(make(ScriptedGenerator(), FakePRM(bad=bad)), 4)


def test_prm_scores_of_every_new_child_in_one_call_per_depth():
    prm = FakePRM()
    rebase(make(ScriptedGenerator(answer_at=3), prm), 4)
    assert prm.calls == 3


# --------------------------------------------------------------------------- beam search


def test_beam_keeps_top_n_over_m_and_expands_each_m_times():
    gen = ScriptedGenerator(answer_at=4, answers=("1", "2"))
    trees = beam(make(gen, problems=2), 8, children=4)
    # the root gets N = 8 children, then the top 8 / 4 = 2 beams get 4 each, per problem
    assert [c[1] for c in gen.calls] == [[8, 8]] + [[4, 4, 4, 4]] * 3
    for t in trees:
        assert len(t.leaves) == 8 and all(leaf.depth == 4 for leaf in t.leaves)


def test_beam_stops_when_budget_completed():
    gen = ScriptedGenerator(answer_at=1)  # every child answers at once
    trees = beam(make(gen, problems=1), 4, children=2)
    assert len(gen.calls) == 1 and len(trees[0].leaves) == 4


# --------------------------------------------------------------------------- MCTS


def test_mcts_expansions_children_and_backup():
    gen = ScriptedGenerator(answer_at=3)
    trees = mcts(make(gen, problems=2), 6, root_children=4, exploration=1.0)
    assert len(gen.calls) == 6  # one expansion per problem per round, batched
    assert gen.calls[0][1] == [4, 4] and all(c[1] == [2, 2] for c in gen.calls[1:])
    for t in trees:
        nodes = _all_nodes(t.root)
        generated = [n for n in nodes if n is not t.root]
        assert len(generated) == 4 + 2 * 5
        # running average: the root holds every new node's value once
        assert t.root.visits == len(generated)
        assert t.root.value_sum == pytest.approx(sum(n.score for n in generated))
        assert t.leaves and all(leaf.complete for leaf in t.leaves)
        assert all(n.children == [] for n in nodes if n.complete)  # complete nodes never expanded


def test_mcts_stops_when_tree_exhausted():
    gen = ScriptedGenerator(answer_at=1)
    trees = mcts(make(gen, problems=1), 32, root_children=4)
    assert len(gen.calls) == 1 and trees[0].root.exhausted and len(trees[0].leaves) == 4


def test_uct_prefers_unvisited_high_value():
    root = Node(0, visits=10)
    a = Node(0, ["a"], [0.5], parent=root, visits=5, value_sum=2.5)
    b = Node(0, ["b"], [0.5], parent=root, visits=1, value_sum=0.5)
    root.children = [a, b]
    assert _select(root, 1.0) is b  # same mean, fewer visits
    assert _select(root, 0.0) is a  # ties: the first


def _all_nodes(node):
    out = [node]
    for c in node.children:
        out += _all_nodes(c)
    return out


# --------------------------------------------------------------------------- selection


def leaves_frame(rows):
    return pl.DataFrame(rows, schema={"problem_id": pl.String, "scores": pl.List(pl.Float64),
                                      "answer": pl.String, "answer_class": pl.Int32, "correct": pl.Boolean},
                        orient="row")


def test_select_majority_best_of_n_weighted_with_ties():
    leaves = leaves_frame([
        ("p", [0.9], "1", 0, True),
        ("p", [0.2], "2", 1, False),
        ("p", [0.3], "2", 1, False),
        ("q", [0.5], "7", 0, False),
        ("q", [0.5], "8", 1, True),
        ("q", [], None, -1, False),
    ])
    out = results.select(leaves, ["p", "q", "r"], aggregations=["last"])
    got = {(r["problem_id"], r["selection"]): (r["answer"], r["accuracy"], r["completed"]) for r in out.to_dicts()}
    assert got[("p", "majority")] == ("2", 0.0, 3)
    assert got[("p", "best_of_n")] == ("1", 1.0, 3)
    assert got[("p", "weighted_majority")] == ("1", 1.0, 3)  # 0.9 > 0.2 + 0.3
    assert got[("q", "majority")] == ("7", 0.5, 3)  # a tie: half the time correct
    assert got[("q", "best_of_n")] == ("7", 0.5, 3)
    assert got[("q", "weighted_majority")] == ("7", 0.5, 3)
    assert got[("r", "majority")] == (None, 0.0, 0)  # no complete leaf: no answer


def test_results_rows_and_flops():
    gen = ScriptedGenerator(answer_at=2, answers=("1", "2"))
    trees = rebase(make(gen, problems=2), 4)
    problems = pl.DataFrame({"problem_id": ["a", "b"], "question": ["q0", "q1"], "answer": ["1", "5"],
                             "metadata": ["{}", "{}"]})
    leaves = results.leaves_table(trees, problems)
    assert leaves.height == 8 and leaves.filter(problem_id="a")["correct"].sum() == 2
    res = results.results(trees, leaves, problems, algorithm="rebase", budget=4, params=10, prm_params=3)
    assert res.columns == list(results.SEARCH)
    assert res.height == 2 * (1 + 2 * 4)
    a = res.filter(problem_id="a", selection="best_of_n", aggregation="last").row(0, named=True)
    assert a["answer"] == "1" and a["accuracy"] == 1.0  # answer 1 scores 0.9
    b = res.filter(problem_id="b", selection="majority").row(0, named=True)
    assert b["accuracy"] == 0.0
    assert a["output_tokens"] == 4 * 2 * 5
    assert a["flops_paper"] == 2 * 10 * a["output_tokens"]
    assert a["flops_full"] == 2 * 10 * (a["output_tokens"] + a["prompt_tokens"]) + 2 * 3 * a["prm_tokens"]
    rows = results.replay_rows(res, name="rebase", prm="vh")
    assert set(rows["strategy"]) == {"rebase_majority", "rebase_best_of_n", "rebase_weighted_majority"}
    assert (rows["n"] == 4).all()


def test_identical_siblings_are_scored_once():
    class CountingPRM(FakePRM):
        read = 0

        def score(self, questions, texts, step_ends, *, batch_size=8):
            self.read += len(texts)
            return super().score(questions, texts, step_ends, batch_size=batch_size)

    prm = CountingPRM()
    trees = rebase(make(ScriptedGenerator(answer_at=3, answers=("1",)), prm, problems=2), 4)
    # every depth's children of a problem share one text: 3 depths x 2 problems
    assert prm.read == 6
    assert all(len(leaf.scores) == 3 for t in trees for leaf in t.leaves)


# --------------------------------------------------------------------------- plan


def _config(**search_entry):
    import yaml
    from conftest import REPO

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["search"] = {"rebase": {"algorithm": "rebase", "budgets": [2, 4], **search_entry}}
    return config


def test_search_plan_keys():
    from pipeline.workflow import plan

    [base] = plan.searches(_config())
    assert base.budgets == (2, 4) and base.blocks == ("p00000-00064",)
    assert base.paths(4) == [f"results/search/arith/smollm2-135m/value-head/rebase/{base.key}/4/p00000-00064.parquet"]
    # budgets, limit and the PRM batch size are not in the key; settings are
    assert plan.searches(_config(budgets=[8]))[0].key == base.key
    [limited] = plan.searches(_config(limit=10))
    assert limited.key == base.key and limited.blocks == ("p00000-00010",)
    cfg = _config()
    cfg["prms"]["value-head"]["batch_size"] = 4
    assert plan.searches(cfg)[0].key == base.key
    assert plan.searches(_config(temperature=0.1))[0].key != base.key
    cfg = _config()
    cfg["sampling"]["temperature"] = 1.0
    assert plan.searches(cfg)[0].key != base.key


def test_search_plan_rejects_unknown_prm():
    from pipeline.workflow import plan

    with pytest.raises(ValueError, match=r"search.rebase.prms: \['nope'\]"):
        plan.searches(_config(prms=["nope"]))


# --------------------------------------------------------------------------- vLLM adapter


def test_vllm_generator_requests_and_end_reasons():
    from types import SimpleNamespace as NS

    class FakeLLM:
        def generate(self, prompts, params):
            self.params = params
            outs = [NS(index=1, text="b", token_ids=[1, 2], finish_reason="stop", stop_reason="\n"),
                    NS(index=0, text="a", token_ids=[1], finish_reason="length", stop_reason=None),
                    NS(index=2, text="c", token_ids=[3], finish_reason="stop", stop_reason=None),
                    NS(index=3, text="d", token_ids=[4], finish_reason="stop", stop_reason="</s>")]
            return [NS(prompt_token_ids=[0] * 7, outputs=outs[:p.n]) for p in params]

    llm = FakeLLM()
    gen = search.VLLMGenerator(llm, temperature=0.7, top_p=0.9, stop=["\n\n", "\nQuestion:", "</s>"])
    [steps] = gen.expand(["ctx"], [4], [12])
    assert [(s.text, s.tokens, s.context_tokens, s.end) for s in steps] == [
        ("a", 1, 7, "length"), ("b", 2, 7, "newline"), ("c", 1, 7, "eos"), ("d", 1, 7, "stop")]
    p = llm.params[0]
    assert (p.n, p.max_tokens, p.temperature, p.top_p) == (4, 12, 0.7, 0.9)
    assert p.stop == ["\n", "</s>"]  # stop strings holding a newline are found per step


# --------------------------------------------------------------------------- the paper's step rules


class ScriptedPolicy:
    """A policy that writes whole MetaMath-style solutions and is cut like vLLM cuts it:
    each request returns the text up to the first of its stop strings (dropped from the
    text), the request's token cap (1 token per character here) or the script's end (EOS).
    Root child j follows script j % len(scripts)."""

    def __init__(self, prompt_of, scripts):
        self.prompt_of, self.scripts, self.calls = prompt_of, scripts, []
        self.j = 0

    def expand(self, contexts, counts, max_tokens, stops=None):
        self.calls.append((list(contexts), list(counts), list(max_tokens), stops))
        out = []
        for i, (ctx, k, cap) in enumerate(zip(contexts, counts, max_tokens)):
            written = ctx[len(self.prompt_of(ctx)):]
            steps = []
            for _ in range(k):
                if written:
                    script = next(s for s in self.scripts if s.startswith(written))
                else:
                    script, self.j = self.scripts[self.j % len(self.scripts)], self.j + 1
                rest = script[len(written):]
                cuts = [(rest.find(s), s) for s in stops[i] if s in rest]
                at, stop = min(cuts) if cuts else (len(rest), None)
                end = "eos" if stop is None else "step" if stop == stops[i][0] else "stop"
                if at > cap:
                    at, end = cap, "length"
                steps.append(Step(rest[:at], at, len(ctx), end))
            out.append(steps)
        return out


class StepPRM:
    """0.5 for every step; records what it was asked to score."""

    name, num_parameters = "steps", 1

    def __init__(self):
        self.seen = []

    def score(self, questions, texts, step_ends, *, batch_size=8):
        self.seen += list(zip(texts, step_ends))
        return [[0.5] * len(e) for e in step_ends], [len(t) for t in texts]


GOOD = "Step 1: 3 / 4 = 0.75 ки\nStep 2: So it is 0.75 ки\n\nStep 3: The answer is: \\frac{3}{4} ки"
DEAD = "Step 1: Hmm ки\nStep 2: I am not sure ки"  # ends (EOS) without an answer
PAPER = Limits(max_depth=25, max_step_tokens=256, max_tokens=1024, step_stop="Step {depth+2}",
               blank_line_ends=False, dead_ends="drop")


def paper_search(limits, budget=4):
    prompt = "What is 3 / 4 as a fraction?\n"
    policy = ScriptedPolicy(lambda ctx: prompt, [GOOD, DEAD])
    prm = StepPRM()
    s = Searcher(policy, prm, ["What is 3 / 4 as a fraction?"], [prompt], stop=[], limits=limits)
    return rebase(s, budget, temperature=0.2)[0], policy, prm


def test_paper_rules_steps_cut_at_the_next_step_label():
    tree, policy, prm = paper_search(PAPER)
    # every request stops at "Step {depth + 2}": depth 0 -> "Step 2", ...
    for contexts, _, caps, stops in policy.calls:
        for ctx, st in zip(contexts, stops):
            depth = ctx.count("ки")  # one tag per finished step in these scripts
            assert st == [f"Step {depth + 2}"]
        assert caps == [256] * len(caps)
    leaf = tree.leaves[0]
    # steps are the raw chunks between labels; the label is written again by the next step
    assert leaf.steps == ["Step 1: 3 / 4 = 0.75 ки\n", "Step 2: So it is 0.75 ки\n\n",
                          "Step 3: The answer is: \\frac{3}{4} ки"]
    # the answer step ended with EOS: complete because of the EOS, a leaf because answered
    assert leaf.text == GOOD and leaf.end == "eos" and leaf.answered
    # the PRM scores each chunk at its end (where the policy's own tag is): one score per step
    text, ends = next((t, e) for t, e in prm.seen if t == GOOD)
    assert [text[:e] for e in ends] == [GOOD[:len("Step 1: 3 / 4 = 0.75 ки")],
                                        GOOD[:GOOD.index("\n\nStep 3")], GOOD]
    assert len(leaf.scores) == 3


def test_paper_rules_blank_line_does_not_end_and_dead_ends_use_no_width():
    tree, policy, _ = paper_search(PAPER)
    # the root's 4 children: 2 good, 2 dead; the dead ones end by EOS at depth 2 without an
    # answer and are dropped, so both good branches share the width and all 4 leaves answer
    assert [sum(c[1]) for c in policy.calls] == [4, 4, 4]
    assert policy.calls[2][1] == [2, 2]
    assert len(tree.leaves) == 4 and tree.dropped == 2
    assert all(leaf.answered and leaf.text == GOOD for leaf in tree.leaves)

    # today's rules on the same policy: the blank line ends the good branches, and the
    # dead ends are leaves that take width
    lines_like = Limits(max_depth=25, max_step_tokens=256, max_tokens=1024, step_stop="Step {depth+2}")
    tree, _, _ = paper_search(lines_like)
    assert len(tree.leaves) == 4 and tree.dropped == 0
    assert sorted(leaf.end for leaf in tree.leaves) == ["eos", "eos", "stop", "stop"]
    assert all(leaf.answered is False for leaf in tree.leaves)


def test_paper_rules_step_cap_and_depth_cap():
    # a step that hits max_step_tokens is a step, not an end; max_depth without an answer is
    # a dead end, dropped
    tree, policy, _ = paper_search(Limits(max_depth=2, max_step_tokens=12, max_tokens=1024,
                                          step_stop="Step {depth+2}", blank_line_ends=False, dead_ends="drop"))
    assert tree.leaves == [] and tree.dropped == 4
    assert all(c <= 12 for call in policy.calls for c in call[2])


def test_dropped_dead_ends_with_beam_and_mcts():
    for run in (lambda s: beam(s, 4, children=2), lambda s: mcts(s, 6, root_children=4)):
        prompt = "Q\n"
        s = Searcher(ScriptedPolicy(lambda ctx: prompt, [GOOD, DEAD]), StepPRM(), ["Q"], [prompt], stop=[],
                     limits=PAPER)
        [tree] = run(s)
        assert tree.leaves and all(leaf.answered for leaf in tree.leaves) and tree.dropped > 0


def test_limits_reject_inconsistent_rules():
    with pytest.raises(ValueError, match="blank_line_ends: false needs a step_stop"):
        Limits(blank_line_ends=False)
    with pytest.raises(ValueError, match="dead_ends"):
        Limits(dead_ends="keep")
    with pytest.raises(ValueError, match=re.escape("step_stop: 'Step {depth + 2}' has a placeholder")):
        Limits(step_stop="Step {depth + 2}")


def test_search_plan_rules_keep_old_keys():
    from pipeline.workflow import plan

    # Measured before the step/completion rules existed (and the key of the embedded
    # default's search in the demo's results/search/): leaving the rules at their
    # defaults, or writing the defaults out, must not change a key or the job spec.
    [base] = plan.searches(_config())
    assert set(base.spec()["limits"]) == {"max_depth", "max_step_tokens", "max_tokens"}
    assert plan.searches(_config(blank_line_ends=True, dead_ends="leaf"))[0].spec() == base.spec()
    changed = {plan.searches(_config(**rule))[0].key
               for rule in ({"step_stop": "Step {depth+2}"}, {"dead_ends": "drop"},
                            {"step_stop": "Step {depth+2}", "blank_line_ends": False})}
    assert len(changed) == 3 and base.key not in changed
    with pytest.raises(ValueError, match=r"search.rebase.blank_line_ends: false needs a step_stop"):
        plan.searches(_config(blank_line_ends=False))
    with pytest.raises(ValueError, match=r"search.rebase.step_stop: .*placeholder"):
        plan.searches(_config(step_stop="Step {n}"))


def test_embedded_default_search_key_is_unchanged():
    import yaml
    from conftest import REPO
    from snakemake.utils import validate

    from pipeline.workflow import plan

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(REPO / "config" / "config.schema.yaml"), set_default=True)
    # the paid-for searches of the embedded default: a new search setting left at its
    # default must not change them (a changed prompt, PRM or search setting does, rightly)
    keys = {s.name: s.key for s in plan.searches(config)}
    assert keys["rebase"] == "0d2b63ec7df9"  # 635d8df62bdc before the head read layer 15


def test_vllm_generator_per_request_stops():
    from types import SimpleNamespace as NS

    class FakeLLM:
        def generate(self, prompts, params):
            self.params = params
            outs = [NS(index=0, text="Step 1: a ки\n", token_ids=[1, 2], finish_reason="stop", stop_reason="Step 2"),
                    NS(index=1, text="x", token_ids=[1], finish_reason="stop", stop_reason="\n\n"),
                    NS(index=2, text="The answer is: 1 ки", token_ids=[5], finish_reason="stop", stop_reason=None)]
            return [NS(prompt_token_ids=[0] * 3, outputs=outs) for _ in params]

    llm = FakeLLM()
    gen = search.VLLMGenerator(llm, temperature=1.0, top_p=1.0, stop=["\n\n"])
    [steps] = gen.expand(["ctx"], [3], [256], stops=[["Step 2", "\n\n"]])
    assert [(s.text, s.end) for s in steps] == [("Step 1: a ки\n", "step"), ("x", "stop"),
                                                 ("The answer is: 1 ки", "eos")]
    assert llm.params[0].stop == ["Step 2", "\n\n"]  # no newline stop with raw steps


@pytest.mark.integration
def test_paper_step_rules_on_real_vllm(baseline):
    """The step stop string on a real engine (the embedded model the baseline run built):
    vLLM stops each request at its own "Step {depth+2}" and drops it, the next step writes
    it again, and the chunks join into the solution."""
    from pipeline.engine import vllm_engine

    model_dir = baseline / "results" / "models" / "smollm2-135m" / "hf"
    llm = vllm_engine.make_engine(str(model_dir), seed=0, engine_args=vllm_engine.engine_args({"enforce_eager": True}))
    few = ("Question: Tom has 3 apples and buys 5 more. How many apples does he have?\n"
           "Step 1: Tom starts with 3 apples.\nStep 2: He buys 5 more, so 3 + 5 = 8.\nThe answer is 8.\n\n"
           "Question: Sam has 7 cards and gets 6 more. How many cards does he have?\n")
    gen = search.VLLMGenerator(llm, temperature=0.0, top_p=1.0, stop=["\n\nQuestion:"])  # greedy: deterministic
    returned = []

    def expand(contexts, counts, max_tokens, stops=None):
        out = search.VLLMGenerator.expand(gen, contexts, counts, max_tokens, stops)
        returned.extend((st, step) for st, steps in zip(stops, out) for step in steps)
        return out

    gen.expand = expand
    limits = Limits(max_depth=4, max_step_tokens=32, max_tokens=96, step_stop="Step {depth+2}", dead_ends="drop")
    s = Searcher(gen, StepPRM(), ["q"], [few], stop=["\n\nQuestion:"], limits=limits)
    [tree] = rebase(s, 1)  # width 1: greedy decoding allows one sample per request
    assert all(step.end in ("step", "stop", "eos", "length") for _, step in returned)
    assert all(st[0] not in step.text for st, step in returned)  # the stop string is never in a step
    first = [step for st, step in returned if st[0] == "Step 2"]
    assert first and all(step.end == "step" and step.text.startswith("Step 1") for step in first)
    leaf = tree.leaves[0]
    assert leaf.answered and leaf.steps[1].startswith("Step 2") and leaf.text == "".join(leaf.steps)
    assert leaf.step_ends()[0] == len(leaf.steps[0].rstrip())
