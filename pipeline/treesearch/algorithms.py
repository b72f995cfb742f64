"""The tree-search algorithms by the name a `search.<name>.algorithm` gives, with their settings.

    rebase     pipeline.treesearch.tree.rebase      temperature
    beam       pipeline.treesearch.tree.beam        children, lookahead
    mcts       pipeline.treesearch.tree.mcts        root_children, exploration
    dvts       pipeline.treesearch.dvts.dvts        children, lookahead
    particles  pipeline.treesearch.particles.particles   (resampling seeded by the job)

`SETTINGS` lists each algorithm's settings (the config keys that enter its search key,
pipeline.workflow.plan.searches); `OPTIONAL` are settings added after searches were
paid for, which enter a key only when they differ from their default, so the entries
that leave them alone keep their keys.
"""

from __future__ import annotations

from pipeline.treesearch import dvts, particles, tree

ALGORITHMS = ("rebase", "beam", "mcts", "dvts", "particles")

SETTINGS = {
    "rebase": ("temperature",),
    "beam": ("children", "lookahead"),
    "mcts": ("exploration", "root_children"),
    "dvts": ("children", "lookahead"),
    "particles": (),
}
OPTIONAL = {"lookahead": 0}


def run(algorithm: str, searcher: tree.Searcher, budget: int, settings: dict, *, seed: int = 0) -> list[tree.Tree]:
    """Dispatch on the config's algorithm name with its settings; `seed` seeds what the
    algorithm draws itself (the particles' resampling)."""
    if algorithm == "rebase":
        return tree.rebase(searcher, budget, temperature=settings.get("temperature", 0.2))
    if algorithm == "beam":
        return tree.beam(searcher, budget, children=settings.get("children", 4),
                         lookahead=settings.get("lookahead", 0))
    if algorithm == "mcts":
        return tree.mcts(searcher, budget, root_children=settings.get("root_children"),
                         exploration=settings.get("exploration", 1.0))
    if algorithm == "dvts":
        return dvts.dvts(searcher, budget, children=settings.get("children", 4), lookahead=settings.get("lookahead", 0))
    if algorithm == "particles":
        return particles.particles(searcher, budget, seed=seed)
    raise ValueError(f"unknown search algorithm {algorithm!r}; known: {ALGORITHMS}")
