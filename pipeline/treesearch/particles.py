"""Particle filtering guided by a PRM, batched across problems.

The reference is Puri et al. 2025 ("A Probabilistic Inference Approach to Inference-Time
Scaling of LLMs using Particle-Based Monte Carlo Methods") as Red Hat's its_hub implements
it (`its_hub/algorithms/particle_gibbs.py`, `ParticleFiltering`: particle Gibbs with one
iteration and no reference particle): `budget` particles (partial solutions) per
problem, resampled after every step in proportion to their PRM weights, a soft,
stochastic alternative to beam search's hard top-k.

    round 0   the root gets `budget` children: the particles
    resample  every particle's weight is softmax over the problem's particles of
              logit(r), r the PRM score of the particle's last step clipped to
              [1e-7, 1 - 1e-7] (its_hub's `_inv_sigmoid`), so weights are proportional
              to the odds r / (1 - r); complete particles keep their final score and
              take part. `budget` particles are drawn with replacement (numpy's seeded
              generator; one draw per problem per round, problems in order)
    propagate every live particle gets one new step: a node drawn m times gets m
              children (one generate call over all problems), scored in one PRM call;
              then resample again
    end       when every particle is complete. The problem's leaves are its `budget`
              final particles, a solution drawn m times being m leaves, so majority and
              weighted votes count it m times; best-of-N with the `last` aggregation is
              its_hub's final choice (the particle of highest weight)
With `dead_ends: drop` a complete particle without a final answer gets weight 0: it
leaves the population (and the tree counts it as dropped); a problem whose particles
all end that way has no leaf. Pruned particles' tokens are counted in the tree's compute
like every generated token.

Where this differs from its_hub and the paper, and why, is in the README ("Peer searches").
"""

from __future__ import annotations

import numpy as np

from pipeline.treesearch.tree import Node, Searcher, Tree

CLIP = 1e-7  # its_hub clips scores to [CLIP, 1 - CLIP] before the logit


def weights(scores: list[float]) -> np.ndarray:
    """Resampling probabilities: softmax of logit(score), scores clipped to [CLIP, 1 - CLIP]."""
    r = np.asarray(scores, dtype=np.float64)
    if r.size == 0:
        raise ValueError("particles: no particle to weigh")
    if not (np.isfinite(r).all() and (r >= 0).all() and (r <= 1).all()):
        raise ValueError(f"particles: PRM scores must be probabilities in [0, 1] to weigh particles, got {list(scores)}")
    r = np.clip(r, CLIP, 1 - CLIP)
    logit = np.log(r / (1 - r))
    w = np.exp(logit - logit.max())  # shift: the same softmax, no overflow
    return w / w.sum()


def resample(s: Searcher, problem: int, population: list[Node], budget: int, rng: np.random.Generator) -> list[Node]:
    """`budget` particles drawn with replacement by `weights` (dead ends out first when the
    rules drop them); [] when none is left."""
    if s.limits.dead_ends == "drop":
        kept = [n for n in population if not (n.complete and not n.answered)]
        s.trees[problem].dropped += len(population) - len(kept)
        population = kept
    if not population:
        return []
    idx = rng.choice(len(population), size=budget, replace=True, p=weights([n.score for n in population]))
    return [population[i] for i in idx]


def particles(s: Searcher, budget: int, *, seed: int = 0) -> list[Tree]:
    """Particle filtering over all problems of `s` with `budget` particles each; `seed`
    seeds the resampling."""
    if budget < 1:
        raise ValueError(f"particles: need at least one particle, got {budget}")
    rng = np.random.default_rng(seed)
    population: list[list[Node]] = [[] for _ in s.trees]
    plans: list[list[tuple[Node, int]]] = [[(t.root, budget)] for t in s.trees]
    while any(plans):
        got = iter(s.expand([r for plan in plans for r in plan]))
        for p, plan in enumerate(plans):
            if not plan:
                continue
            new = [c for _ in plan for c in next(got)]
            population[p] = resample(s, p, [n for n in population[p] if n.complete] + new, budget, rng)
            plans[p] = _propagation(population[p])
    for pop in population:
        for n in pop:
            s.finish(n)
    return s.trees


def _propagation(population: list[Node]) -> list[tuple[Node, int]]:
    """(live node, times drawn), in order of first draw."""
    counts: dict[int, list] = {}
    for n in population:
        if not n.complete:
            counts.setdefault(id(n), [n, 0])[1] += 1
    return [(n, k) for n, k in counts.values()]

