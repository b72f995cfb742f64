"""Exact replays of the sampling strategies over a sample cache: voting (majority,
coverage, greedy) and PRM selection (best-of-N, weighted majority voting); and the
paper's evaluation script replayed on the same caches (reference.py, analysis.compat)."""
