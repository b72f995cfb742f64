"""Progress bars for long stages, written to stderr, i.e. to the rule's `log:` file.

Every long stage shows progress: vLLM draws its own bars (generation, search); PRM
scoring and value-head features (per batch), grading (per problem) and replay (per
problem) use `progress`. In a log file (stderr not a terminal) a bar is redrawn at
most every `LOG_INTERVAL` seconds, so `tail -f logs/<rule>/...log` shows it move
without flooding the file. Without tqdm installed (a bare GPU machine running
benchmarks/gpu_prm.py) the iterable is returned as it is: bars are a convenience.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")
LOG_INTERVAL = 10.0


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    tty = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr,
                mininterval=0.1 if tty else LOG_INTERVAL, maxinterval=LOG_INTERVAL * 6,
                dynamic_ncols=tty, ascii=not tty)
