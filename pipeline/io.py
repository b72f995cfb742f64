"""Atomic file writes: a killed job never leaves a half file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import polars as pl


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet(df: pl.DataFrame, path: str | Path) -> None:
    """Write `df` as zstd Parquet to a temporary name in the same folder, then rename."""
    _atomic(Path(path), lambda tmp: df.write_parquet(tmp, compression="zstd"))


def write_json(obj: Any, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n"))


def write_text(text: str, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(text))
