"""Atomic file writes: a killed job never leaves a half file under the final name.

Every writer goes through `_atomic`: the content is written to a hidden temporary file
in the destination's folder (`.NAME.XXXX.tmp`), flushed to disk, and renamed over the
destination in one step. So a file under its final name is always complete, whatever
kills the writer (SIGKILL, a full disk, a lost node), and a failed write leaves neither
the destination nor the temporary file behind (unless the process itself is killed:
then the `.tmp` file stays, is never read by anything, and the next write of the same
destination removes it, see `sole_writer`).

Every Parquet file is sealed with its checksum record in the same temporary file, before
the fsync and the rename (`pipeline.core.integrity`), with the checked inputs of the
job that wrote it (`integrity.verified_inputs`) beside it in the footer.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import polars as pl

from pipeline.core import integrity


def _remove_stale(path: Path) -> None:
    """Remove temporary files a killed writer of `path` left behind (names as made by
    `tempfile.mkstemp` below: ".NAME." + 8 random characters + ".tmp")."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for stale in path.parent.iterdir():
        if pattern.fullmatch(stale.name):
            stale.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write, *, sole_writer: bool = True) -> None:
    """Run `write(tmp)` on a temporary file beside `path`, then rename it to `path`.

    `sole_writer`: no other process writes `path` at the same time (true for every
    workflow output: Snakemake runs one job per output and locks the folder), so stale
    temporary files of `path` are left-overs of a killed writer and are removed first.
    Pass False for files several jobs write concurrently (a cache's key.json).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if sole_writer:
        _remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file private (0600); a result gets the usual mode (umask).
    os.fchmod(fd, 0o666 & ~_umask())
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_parquet(df: pl.DataFrame, path: str | Path, *, metadata: dict[str, str] | None = None) -> None:
    """Write `df` as zstd Parquet to a temporary name in the same folder, seal it with its
    checksum record (`integrity.seal_parquet`), then rename.

    `metadata`: string key-value pairs stored in the file's footer (Parquet key-value
    metadata, read back by `read_parquet_metadata`); they travel with the file when a
    results folder is copied. Readers of the data (polars, DuckDB) ignore them. The
    footer also holds the checksum record and, when the writing process checked its
    inputs (`integrity.check_inputs`), their digests (`integrity.INPUTS`).
    """
    metadata = dict(metadata or {})
    inputs = integrity.verified_inputs()
    if inputs:
        metadata[integrity.INPUTS] = json.dumps(inputs, sort_keys=True)
    metadata[integrity.RECORD] = integrity.PLACEHOLDER  # the digest is written over it

    def write(tmp: Path) -> None:
        try:
            if _POLARS_WRITES_METADATA:
                df.write_parquet(tmp, compression="zstd", metadata=metadata)
            else:  # polars before its `metadata` argument: the same file through pyarrow
                import pyarrow.parquet as pq

                table = df.to_arrow()
                table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
                pq.write_table(table, tmp, compression="zstd")
        except Exception as e:  # polars reports a full disk as a ComputeError ("os error 28")
            if isinstance(e, OSError) or "os error 28" not in str(e):
                raise
            raise OSError(errno.ENOSPC, f"No space left on device while writing {path}") from e
        integrity.seal_parquet(tmp)

    _atomic(Path(path), write)


_POLARS_WRITES_METADATA = "metadata" in inspect.signature(pl.DataFrame.write_parquet).parameters


def read_parquet_metadata(path: str | Path, *, integrity_keys: bool = False) -> dict[str, str]:
    """The key-value metadata of a Parquet file's footer (empty when it has none);
    Arrow's own schema entry is left out, and so are the checksum record and the input
    digests (`integrity.RECORD`, `integrity.INPUTS`) unless `integrity_keys`."""
    import pyarrow.parquet as pq

    raw = pq.read_metadata(path).metadata or {}
    hidden = {b"ARROW:schema"} | (set() if integrity_keys else {integrity.RECORD.encode(), integrity.INPUTS.encode()})
    return {k.decode(): v.decode() for k, v in raw.items() if k not in hidden}


def write_json(obj: Any, path: str | Path, *, sole_writer: bool = True) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    _atomic(Path(path), lambda tmp: tmp.write_text(text), sole_writer=sole_writer)


def write_text(text: str, path: str | Path) -> None:
    _atomic(Path(path), lambda tmp: tmp.write_text(text))
