"""Diverse Verifier Tree Search (DVTS), batched across problems.

The reference is huggingface/search-and-learn (`src/sal/search/diverse_verifier_tree_search.py`,
Beeching, Tunstall & Rush 2024): the budget N is split into N / M independent subtrees
(M = `children`, search-and-learn's `beam_width`), each grown greedily by the PRM, which
keeps N / M different lines of thought alive where beam search collapses onto a few.

    round 0   the root gets N children; children [jM, (j+1)M) form subtree j
    round r   each live subtree keeps its child with the highest score (the first of
              tied ones; with `lookahead` k the score at the end of the child's k-step
              greedy rollout, pipeline.treesearch.tree.Searcher.expand) and gives it M
              children
    end       a subtree ends when the child it keeps is complete (a final answer, EOS, a
              blank line, max_depth or max_tokens: the Searcher's completion rules). Its
              solutions are the M children of that last round, the kept one and its
              M - 1 siblings (search-and-learn copies the last round's M candidates
              into its output "as otherwise we would only have n/m results"): a
              complete sibling is a leaf as it is, an incomplete one ends as
              "unfinished" (no final answer: a leaf graded wrong with `dead_ends: leaf`,
              discarded with `drop`). So a problem ends with N leaves.
Children of earlier rounds that were not kept are pruned; their tokens, and those of
the lookahead rollouts, are counted in the tree's compute like every generated token.
Every round is one generate call (plus k greedy rollout calls with lookahead) and one
PRM call over the subtrees of all problems.

Where this differs from search-and-learn, and why, is in the README ("Peer searches").
"""

from __future__ import annotations

from pipeline.treesearch.tree import Node, Searcher, Tree


def dvts(s: Searcher, budget: int, *, children: int = 4, lookahead: int = 0) -> list[Tree]:
    """DVTS over all problems of `s`: `budget` / `children` subtrees per problem."""
    if children < 1 or budget < children or budget % children:
        raise ValueError(f"dvts: the budget ({budget}) must be a positive multiple of children ({children})")
    # per problem, the node each live subtree grows from (the root, once, for all of them)
    live: list[list[Node]] = [[t.root] for t in s.trees]
    first = True
    while any(live):
        requests = [(n, budget if first else children) for nodes in live for n in nodes]
        got = iter(s.expand(requests, lookahead=lookahead))
        for p, nodes in enumerate(live):
            groups = []
            for _ in nodes:
                kids = next(got)
                groups += [kids[i:i + children] for i in range(0, len(kids), children)]
            live[p] = [best for group in groups if (best := _grow(s, group)) is not None]
        first = False
    return s.trees


def _grow(s: Searcher, group: list[Node]) -> Node | None:
    """The child a subtree keeps, or None when the subtree ends (its group become leaves)."""
    best = max(group, key=lambda c: c.rank)  # max keeps the first of tied ones
    if not best.complete:
        return best
    for c in group:
        if not c.complete:
            c.end = "unfinished"
        s.finish(c)
    return None
