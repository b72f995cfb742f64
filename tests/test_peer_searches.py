"""DVTS, lookahead beam search and particle filtering, step by step, on a scripted policy
and a PRM that reads each step's score from its text: which nodes survive, how many
children each gets, what the lookahead scores, how particles are resampled (fixed seed)."""

from __future__ import annotations

import re

import numpy as np
import polars as pl
import pytest

from pipeline.treesearch import algorithms, particles, results
from pipeline.treesearch.dvts import dvts
from pipeline.treesearch.tree import Limits, Searcher, Step, beam

LIMITS = Limits(max_depth=6, max_step_tokens=8, max_tokens=100)


class Script:
    """A policy that writes `rule(path, j, greedy)`: path is the steps written so far
    (the context after the prompt "Q<i>:"), j the sample's index in its request. Each step
    costs 3 tokens. Records every call: the paths asked, the counts and whether greedy."""

    def __init__(self, rule):
        self.rule, self.calls = rule, []

    def expand(self, contexts, counts, max_tokens, stops=None, *, greedy=False):
        paths = [tuple(ctx.split(":", 1)[1].split("\n")[:-1]) for ctx in contexts]
        self.calls.append({"paths": paths, "counts": list(counts), "greedy": greedy})
        return [[Step(self.rule(path, j, greedy), 3, len(ctx), "newline") for j in range(k)]
                for ctx, path, k in zip(contexts, paths, counts)]


class MarkedPRM:
    """Each step scores the number in its "[x]" (0.5 without one); records what it read."""

    name, num_parameters = "marked", 10

    def __init__(self):
        self.calls = []

    def score(self, questions, texts, step_ends, *, batch_size=8):
        self.calls.append(list(texts))
        out = []
        for t, ends in zip(texts, step_ends):
            steps = t.split("\n")
            assert len(steps) == len(ends)
            out.append([float(m.group(1)) if (m := re.search(r"\[([\d.]+)\]", s)) else 0.5 for s in steps])
        return out, [len(t) for t in texts]


def searcher(rule, *, problems=1, limits=LIMITS, prm=None):
    gen = Script(rule)
    s = Searcher(gen, prm or MarkedPRM(), [f"q{i}" for i in range(problems)], [f"Q{i}:" for i in range(problems)],
                 stop=(), limits=limits)
    return s, gen


def table(rows):
    """A rule from {path: [step for j = 0, 1, ...]}; j beyond the list repeats its last entry."""
    def rule(path, j, greedy):
        steps = rows[path]
        return steps[min(j, len(steps) - 1)]
    return rule


# --------------------------------------------------------------------------- DVTS

DVTS_SCRIPT = {
    (): ["[0.3] a", "[0.6] b", "[0.8] c", "[0.8] d"],  # subtree 0 = (a, b), subtree 1 = (c, d)
    ("[0.6] b",): ["[0.4] b1", "[0.9] The answer is 1."],
    ("[0.8] c",): ["[0.7] c1", "[0.2] The answer is 2."],
    ("[0.8] c", "[0.7] c1"): ["[0.5] The answer is 2.", "[0.6] The answer is 3."],
}


def test_dvts_splits_the_budget_into_subtrees_grown_greedily():
    s, gen = searcher(table(DVTS_SCRIPT))
    [tree] = dvts(s, 4, children=2)
    # round 0: the root gets N = 4 children; each subtree of M = 2 keeps its best:
    # b (0.6 > 0.3) and c (0.8, tied with d: the first); each gets M children
    assert [c["counts"] for c in gen.calls] == [[4], [2, 2], [2]]
    assert gen.calls[1]["paths"] == [("[0.6] b",), ("[0.8] c",)]
    # round 1: subtree 0 keeps its answer (0.9 > 0.4), complete: it ends; subtree 1 keeps
    # c1 (0.7 > 0.2) and grows on; round 2: subtree 1 keeps answer 3 (0.6 > 0.5) and ends
    assert gen.calls[2]["paths"] == [("[0.8] c", "[0.7] c1")]
    # every subtree's solutions are its last round's M children: the kept one and its
    # sibling, an incomplete sibling ending "unfinished"
    assert [(leaf.steps[-1], leaf.end) for leaf in tree.leaves] == [
        ("[0.4] b1", "unfinished"), ("[0.9] The answer is 1.", "answer"),
        ("[0.5] The answer is 2.", "answer"), ("[0.6] The answer is 3.", "answer")]
    # pruned children (a, d, the answer 2 of round 1) are counted: 4 + 2 + 2 + 2 steps
    assert tree.output_tokens == 10 * 3 and tree.depth == 3
    assert len(s.prm.calls) == 3  # one PRM call per round


def test_dvts_drops_unfinished_siblings_with_the_papers_rule():
    limits = Limits(max_depth=6, max_step_tokens=8, max_tokens=100, dead_ends="drop")
    s, _ = searcher(table(DVTS_SCRIPT), limits=limits)
    [tree] = dvts(s, 4, children=2)
    assert len(tree.leaves) == 3 and tree.dropped == 1 and all(leaf.answered for leaf in tree.leaves)


def test_dvts_one_call_per_round_over_all_problems():
    s, gen = searcher(table(DVTS_SCRIPT), problems=3)
    trees = dvts(s, 4, children=2)
    assert [c["counts"] for c in gen.calls] == [[4] * 3, [2, 2] * 3, [2] * 3]
    assert all(len(t.leaves) == 4 for t in trees) and len(s.prm.calls) == 3


def test_dvts_with_one_child_per_subtree_is_greedy_and_rejects_bad_budgets():
    s, gen = searcher(lambda path, j, g: "[0.5] The answer is 7." if len(path) == 2 else f"[0.5] s{len(path)}")
    [tree] = dvts(s, 3, children=1)  # three independent greedy-by-PRM chains
    assert [c["counts"] for c in gen.calls] == [[3], [1, 1, 1], [1, 1, 1]] and len(tree.leaves) == 3
    with pytest.raises(ValueError, match=r"budget \(6\) must be a positive multiple of children \(4\)"):
        dvts(searcher(table(DVTS_SCRIPT))[0], 6, children=4)


# --------------------------------------------------------------------------- lookahead

def test_lookahead_ranks_children_by_the_end_of_a_greedy_rollout():
    script = {
        (): ["[0.9] x", "[0.2] y"],
        ("[0.9] x",): ["[0.1] x rolls into trouble"],  # greedy continuation of x
        ("[0.2] y",): ["[0.95] y rolls well"],
        ("[0.2] y", "[0.95] y rolls well"): ["[0.9] The answer is 4."],
        ("[0.9] x", "[0.1] x rolls into trouble"): ["[0.1] The answer is 5."],
    }
    # without lookahead DVTS keeps x (0.9 > 0.2) ...
    s, gen = searcher(table(script))
    dvts(s, 2, children=2)
    assert gen.calls[1]["paths"] == [("[0.9] x",)]
    # ... with a 1-step lookahead it keeps y: its rollout ends at 0.95, x's at 0.1
    s, gen = searcher(table(script))
    [tree] = dvts(s, 2, children=2, lookahead=1)
    assert [(c["counts"], c["greedy"]) for c in gen.calls[:3]] == [([2], False), ([1, 1], True), ([2], False)]
    assert gen.calls[1]["paths"] == [("[0.9] x",), ("[0.2] y",)]
    assert gen.calls[2]["paths"] == [("[0.2] y",)]
    x, y = tree.root.children
    assert (x.lookahead, y.lookahead) == (0.1, 0.95)
    assert (x.scores, y.scores) == ([0.9], [0.2])  # their own step scores, from the rollouts' paths
    # the PRM read the rollouts' ends, once per round, never the children alone
    assert s.prm.calls[0] == ["[0.9] x\n[0.1] x rolls into trouble", "[0.2] y\n[0.95] y rolls well"]
    # rollout tokens are compute, not depth
    assert tree.rollout_tokens > 0 and tree.output_tokens == 3 * sum(sum(c["counts"]) for c in gen.calls)
    assert tree.depth == max(leaf.depth for leaf in tree.leaves)


def test_lookahead_beam_search_step_by_step():
    # four first steps; their 2-step greedy rollouts end at the scores in brackets
    rollouts = {"a": [0.2, 0.3], "b": [0.9, 0.1], "c": [0.4, 0.8], "d": [0.5, 0.6]}

    def rule(path, j, greedy):
        if not path:
            return f"[{[0.9, 0.8, 0.1, 0.2][j]}] {'abcd'[j]}"
        name = path[0][-1]
        if len(path) == 1 and not greedy:  # the kept beams' children: answers
            return f"[0.5] The answer is {j}."
        return f"[{rollouts[name][len(path) - 1]}] {name}{len(path)}"

    s, gen = searcher(rule)
    [tree] = beam(s, 4, children=2, lookahead=2)
    a, b, c, d = tree.root.children
    # each child's value is the last score of its 2-step rollout, not its own score
    assert [n.lookahead for n in (a, b, c, d)] == [0.3, 0.1, 0.8, 0.6]
    assert [n.score for n in (a, b, c, d)] == [0.9, 0.8, 0.1, 0.2]
    # plain beam search would keep a and b (0.9, 0.8); lookahead keeps c and d (0.8, 0.6)
    assert [(c_["counts"], c_["greedy"]) for c_ in gen.calls[:3]] == [([4], False), ([1] * 4, True), ([1] * 4, True)]
    assert gen.calls[3]["paths"] == [("[0.1] c",), ("[0.2] d",)] and gen.calls[3]["counts"] == [2, 2]
    assert len(tree.leaves) == 4 and all(leaf.answered for leaf in tree.leaves)
    # k = 0 is beam search
    s, gen = searcher(rule)
    beam(s, 4, children=2, lookahead=0)
    assert gen.calls[1]["paths"] == [("[0.9] a",), ("[0.8] b",)]


def test_lookahead_rollouts_stop_at_the_end_and_identical_children_share_one():
    def rule(path, j, greedy):
        if not path:
            return "[0.5] same"  # every child writes the same step
        return "[0.7] The answer is 3." if greedy else "[0.5] more"

    s, gen = searcher(rule)
    [tree] = beam(s, 4, children=4, lookahead=3)
    # one rollout for the four identical children, and it stops at its answer after 1 step
    assert [(c["counts"], c["greedy"]) for c in gen.calls[:2]] == [([4], False), ([1], True)]
    assert not gen.calls[2]["greedy"]
    assert all(ch.lookahead == 0.7 for ch in tree.root.children)
    assert tree.rollout_tokens == 3 * sum(sum(c["counts"]) for c in gen.calls if c["greedy"])


def test_lookahead_of_complete_children_is_their_own_score():
    s, gen = searcher(lambda path, j, g: f"[0.{j + 1}] The answer is {j}.")
    [tree] = dvts(s, 2, children=2, lookahead=2)
    assert len(gen.calls) == 1  # nothing to roll out
    assert [(ch.lookahead, ch.score) for ch in tree.root.children] == [(0.1, 0.1), (0.2, 0.2)]


# --------------------------------------------------------------------------- particle filtering

def test_particle_weights_are_its_hubs_softmax_of_logits():
    w = particles.weights([0.9, 0.5, 0.5, 0.1])
    odds = np.array([9.0, 1.0, 1.0, 1 / 9])
    assert np.allclose(w, odds / odds.sum())
    assert np.allclose(particles.weights([0.5, 0.5]), [0.5, 0.5])
    # scores of 0 and 1 are clipped to [1e-7, 1 - 1e-7], not infinite
    w = particles.weights([1.0, 0.0, 0.5])
    assert np.isfinite(w).all() and w[0] > 0.999999 and w[1] > 0
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        particles.weights([1.5, 0.2])


PF_SCRIPT = {
    (): ["[0.9] a", "[0.5] b", "[0.5] c", "[0.1] d"],
}


def pf_rule(path, j, greedy):
    if not path:
        return PF_SCRIPT[()][j]
    if len(path) == 1:  # second step: a's children answer, the others go on
        return f"[0.8] The answer is {j}." if path[0].endswith("a") else f"[0.6] {path[0][-1]}{j}"
    return f"[0.3] The answer is 9{j}."


def test_particles_resample_by_weight_with_a_fixed_seed():
    seed = 7
    s, gen = searcher(pf_rule)
    [tree] = particles.particles(s, 4, seed=seed)
    rng = np.random.default_rng(seed)
    # round 0: the root gets 4 particles a, b, c, d; they are resampled 4 times with
    # replacement by softmax(logit(score)) = odds 9 : 1 : 1 : 1/9
    first = rng.choice(4, size=4, p=particles.weights([0.9, 0.5, 0.5, 0.1]))
    drawn = ["abcd"[i] for i in first]
    # round 1: each node drawn m times gets m children, in order of first draw
    order = list(dict.fromkeys(drawn))
    assert gen.calls[1]["paths"] == [(PF_SCRIPT[()]["abcd".index(x)],) for x in order]
    assert gen.calls[1]["counts"] == [drawn.count(x) for x in order]
    assert sum(gen.calls[1]["counts"]) == 4
    # every later round: complete particles are carried (and resampled) with their score,
    # the live ones propagate; the search ends with 4 complete particles
    assert len(tree.leaves) == 4 and all(leaf.complete for leaf in tree.leaves)
    # the same seed gives the same search; another gives another draw
    s2, gen2 = searcher(pf_rule)
    particles.particles(s2, 4, seed=seed)
    assert gen2.calls == gen.calls
    draws = {tuple(np.random.default_rng(k).choice(4, size=4, p=particles.weights([0.9, 0.5, 0.5, 0.1])))
             for k in range(20)}
    assert len(draws) > 1


def test_particles_final_population_step_by_step():
    # a hand-checkable case: two particles, one answers at once (0.9, odds 9), one goes
    # on (0.5, odds 1) and answers the next step (0.2). Seed 4 draws [go, answer] first.
    def rule(path, j, greedy):
        if not path:
            return ["[0.9] The answer is 1.", "[0.5] go"][j]
        return "[0.2] The answer is 2."

    seed = 4
    s, gen = searcher(rule)
    [tree] = particles.particles(s, 2, seed=seed)
    answer, go = tree.root.children
    rng = np.random.default_rng(seed)
    assert list(rng.choice(2, size=2, p=particles.weights([0.9, 0.5]))) == [1, 0]
    # round 1: the live particle, drawn once, gets one child; the complete one is carried
    assert gen.calls[1]["counts"] == [1] and len(gen.calls) == 2
    [child] = go.children
    # the pool [answer (0.9), child (0.2)] is resampled once more: odds 9 : 1/4
    pool = [answer, child]
    final = [pool[i] for i in rng.choice(2, size=2, p=particles.weights([0.9, 0.2]))]
    assert tree.leaves == final  # the final particles, duplicates included
    assert np.allclose(particles.weights([0.9, 0.2]), [9 / 9.25, 0.25 / 9.25])
    leaves = results.leaves_table([tree], pl.DataFrame({"problem_id": ["p"], "question": ["q0"], "answer": ["1"],
                                                        "metadata": ["{}"]}))
    assert leaves.height == 2 and leaves["leaf"].to_list() == [0, 1]  # a particle drawn twice is two leaves


def test_particles_weigh_dead_ends_zero_when_dropped():
    limits = Limits(max_depth=2, max_step_tokens=8, max_tokens=100, dead_ends="drop")

    def rule(path, j, greedy):
        return "[0.9] never answers" if j % 2 else "[0.1] The answer is 1." if path else "[0.5] start"

    s, _ = searcher(rule, limits=limits)
    [tree] = particles.particles(s, 4, seed=0)
    # the unanswered depth-2 particles (score 0.9) would dominate the draw; dropped, they
    # leave the population and every final particle holds the answer
    assert tree.dropped > 0 and len(tree.leaves) == 4 and all(leaf.answered for leaf in tree.leaves)


# --------------------------------------------------------------------------- dispatch and outputs

def test_run_dispatches_every_algorithm_with_its_settings():
    def rule(path, j, greedy):
        return f"[0.{j + 1}] The answer is {j}." if len(path) >= 1 else f"[0.5] s{j}"

    for algorithm, settings in [("dvts", {"children": 2, "lookahead": 1}), ("beam", {"children": 2, "lookahead": 1}),
                                ("particles", {}), ("rebase", {}), ("mcts", {})]:
        s, _ = searcher(rule, problems=2)
        trees = algorithms.run(algorithm, s, 4, settings, seed=1)
        assert all(t.leaves for t in trees), algorithm
    with pytest.raises(ValueError, match="unknown search algorithm 'nope'"):
        algorithms.run("nope", searcher(rule)[0], 4, {})


def test_new_searches_are_replay_strategies():
    s, _ = searcher(table(DVTS_SCRIPT), problems=2)
    trees = dvts(s, 4, children=2)
    problems = pl.DataFrame({"problem_id": ["a", "b"], "question": ["q0", "q1"], "answer": ["1", "3"],
                             "metadata": ["{}", "{}"]})
    leaves = results.leaves_table(trees, problems)
    assert set(leaves["end"]) == {"answer", "unfinished"} and leaves.height == 8
    res = results.results(trees, leaves, problems, algorithm="dvts", budget=4, params=10, prm_params=3)
    # best-of-N picks answer 1 (0.9): right on a, wrong on b; the unfinished leaf is wrong
    bon = res.filter(selection="best_of_n", aggregation="last").sort("problem_id")
    assert bon["accuracy"].to_list() == [1.0, 0.0] and (bon["output_tokens"] == 30).all()
    rows = results.replay_rows(res, name="dvts", prm="vh")
    assert set(rows["strategy"]) == {"dvts_majority", "dvts_best_of_n", "dvts_weighted_majority"}


def test_vllm_generator_decodes_rollouts_greedily():
    from types import SimpleNamespace as NS

    from pipeline import search

    class FakeLLM:
        def generate(self, prompts, params):
            self.params = params
            return [NS(prompt_token_ids=[0], outputs=[NS(index=0, text="x", token_ids=[1], finish_reason="stop",
                                                          stop_reason="\n")]) for _ in params]

    llm = FakeLLM()
    gen = search.VLLMGenerator(llm, temperature=0.7, top_p=0.9)
    gen.expand(["ctx"], [1], [8], greedy=True)
    assert llm.params[0].temperature == 0.0
    gen.expand(["ctx"], [1], [8])
    assert llm.params[0].temperature == 0.7


# --------------------------------------------------------------------------- plan: keys and settings

def _config(**entries):
    import yaml
    from conftest import REPO
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["search"] = entries
    validate(config, str(REPO / "config" / "config.schema.yaml"), set_default=True)
    return config


def test_lookahead_enters_the_key_only_when_set():
    from pipeline.workflow import plan

    [base] = plan.searches(_config(b={"algorithm": "beam", "budgets": [4], "children": 2}))
    [zero] = plan.searches(_config(b={"algorithm": "beam", "budgets": [4], "children": 2, "lookahead": 0}))
    [ahead] = plan.searches(_config(b={"algorithm": "beam", "budgets": [4], "children": 2, "lookahead": 2}))
    assert zero.spec() == base.spec() and "lookahead" not in base.spec()["settings"]
    assert ahead.key != base.key and ahead.spec()["settings"] == {"children": 2, "lookahead": 2}
    # the embedded default's paid-for searches keep their keys (/work/base's results/search)
    keys = {s.name: s.key for s in plan.searches(_config(
        rebase={"algorithm": "rebase", "budgets": [2, 4, 8], "temperature": 0.2},
        beam={"algorithm": "beam", "budgets": [4], "children": 2}, mcts={"algorithm": "mcts", "budgets": [16]}))}
    assert keys == {"rebase": "0d2b63ec7df9", "beam": "ea3908696c1c", "mcts": "13ce7715174e"}


def test_new_algorithms_plan_and_reject_bad_settings():
    from pipeline.workflow import plan

    d, p = plan.searches(_config(d={"algorithm": "dvts", "budgets": [4, 8], "children": 2},
                                 p={"algorithm": "particles", "budgets": [4]}))
    assert d.spec()["settings"] == {"children": 2} and d.budgets == (4, 8)
    assert p.spec()["settings"] == {}  # children (a schema default) is not a particle setting
    d3 = plan.searches(_config(d={"algorithm": "dvts", "budgets": [4], "children": 2, "lookahead": 3}))[0]
    assert d3.key != d.key
    with pytest.raises(ValueError, match=r"search.d.budgets: .*multiple of children \(4\); \[6\] are not"):
        plan.searches(_config(d={"algorithm": "dvts", "budgets": [8, 6]}))
    with pytest.raises(ValueError, match=r"search.r.lookahead: only beam and dvts use it, not rebase"):
        plan.searches(_config(r={"algorithm": "rebase", "budgets": [4], "lookahead": 1}))
