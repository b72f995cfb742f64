"""ROC AUC of scores against labels: the one implementation, used by the PRM quality
table (pipeline/analysis/prm_quality.py) and the value head's held-out report
(pipeline/prm/value_head.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def auc(scores: Sequence[float], labels: Sequence[bool | int | float]) -> float | None:
    """ROC AUC (Mann-Whitney, ties half): P(a positive outscores a negative); None when a
    class is empty. Labels above 0.5 are positive (0/1, booleans, or soft labels)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64) > 0.5
    if s.shape != y.shape:
        raise ValueError(f"auc: {s.size} scores for {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("auc: scores must be finite")
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    # average 1-based rank of each distinct value: ties share the mean of their ranks
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum = avg_rank[inverse][y].sum()
    return float((rank_sum - pos * (pos + 1) / 2.0) / (pos * neg))
