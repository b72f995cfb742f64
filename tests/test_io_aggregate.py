"""Atomic writes and the DuckDB view, on synthetic frames."""

import duckdb
import polars as pl
import pytest

from pipeline import aggregate
from pipeline.core import io


def test_failed_write_leaves_no_file(tmp_path):
    target = tmp_path / "x.parquet"

    class Boom(pl.DataFrame):
        def write_parquet(self, *a, **k):
            open(a[0], "wb").write(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        io.write_parquet(Boom({"a": [1]}), target)
    assert list(tmp_path.iterdir()) == []


def test_write_replaces_atomically(tmp_path):
    target = tmp_path / "x.parquet"
    io.write_parquet(pl.DataFrame({"a": [1]}), target)
    io.write_parquet(pl.DataFrame({"a": [2]}), target)
    assert pl.read_parquet(target)["a"].to_list() == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_accuracy_vs_flops_view(tmp_path):
    replay = pl.DataFrame({
        "dataset": ["d"] * 4, "model": ["m"] * 4, "problem_id": ["a", "b", "a", "b"],
        "strategy": ["majority"] * 4, "n": [1, 1, 2, 2], "accuracy": [1.0, 0.0, 1.0, 1.0],
        "output_tokens": [10.0, 20.0, 20.0, 40.0], "prompt_tokens": [5.0] * 4,
        "flops_paper": [20.0, 40.0, 40.0, 80.0], "flops_full": [30.0, 50.0, 50.0, 90.0],
    })
    db = tmp_path / "r.duckdb"
    aggregate.write_duckdb({"replay": aggregate._replay_table([replay])}, db)
    rows = duckdb.connect(str(db), read_only=True).execute(
        "SELECT n, accuracy, accuracy_se, flops_paper, num_problems FROM accuracy_vs_flops ORDER BY n").fetchall()
    assert rows[0] == (1, 0.5, pytest.approx(0.5), 30.0, 2)
    assert rows[1] == (2, 1.0, 0.0, 60.0, 2)
