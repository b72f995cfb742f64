"""Compute-optimal inference: the importable logic behind the Snakemake workflow.

The folders are the layers; a module imports only from its own folder or a lower layer
(tests/test_layers.py builds the import graph and fails on a cycle or an upward import):

    pipeline/*.py   the stages, one `python -m pipeline.<stage>` per rule: prepare,
                    generate, grading (rule grade), score (rules score and
                    train_value_head), rollouts, search, replay (rules replay and
                    replay_prm), aggregate; each checks its inputs' checksums before it
                    reads them (core/integrity.py). Stages never import each other.
                    Beside them, verify (`python -m pipeline.verify results/`): checks,
                    removes and regenerates damaged files of a results folder.
    workflow/       what the Snakefile reads at parse time: the plan (caches, keys,
                    shards, searches), the GPU memory plan and typed --config overrides
    analysis/       everything behind `aggregate` after the replays: statistics, claims,
                    held-out choices, difficulty, knapsack, adaptive policies and
                    allocation, the point grid, latency, PRM quality, the peer
                    searches at matched FLOPs, the DuckDB views, figures, the report
    treesearch/     the tree-search algorithms (REBASE, beam with lookahead, MCTS, DVTS,
                    particle filtering) and what a search job writes (final answers
                    from its leaves)
    strategies/     exact replays of voting (majority, coverage, greedy) and PRM
                    selection (best-of-N, weighted voting) over a sample cache; the
                    paper's evaluation script replayed on it (analysis.compat)
    prm/            process reward models: the scorers, opening a config's entry, the
                    value head's step labels, precision, GPU memory of an entry
    engine/         the policy: model sources and parameter counts, the vLLM engine
                    and its settings, GPU memory sizes and placement
    tasks/          problems and how answers are checked: datasets, answer grading,
                    the arithmetic step checker, the paper's own grader; code tasks
                    graded by running their tests in a bubblewrap sandbox
    core/           shared utilities: atomic I/O, checksums (integrity), the results
                    folder's files and what each is made from (layout), schemas, FLOPs,
                    timing, progress, prompts, ROC AUC

Heavy backends (vLLM, torch) are imported lazily inside the functions that need them,
so the pure modules import fast and test without them.
"""

__version__ = "0.1.0"
