"""A PRM's precision (pipeline/prm/precision.py): from its entry, float32 on every device
when unset; recorded in its outputs' timing records; a folder begun under the old
per-device default keeps its precision."""

from __future__ import annotations

import polars as pl
import pytest

from pipeline.core import io, timing
from pipeline.prm import precision

CPU = "Intel(R) Xeon(R) (2 cores)"
GPU = "NVIDIA A100-SXM4-80GB x1"


def test_unset_is_float32_on_every_device():
    torch = pytest.importorskip("torch")
    from pipeline.prm.base import resolve_dtype

    assert precision.resolve({"format": "logprob"}) == "float32"
    assert precision.resolve({"format": "logprob", "options": {"dtype": "auto"}}) == "float32"
    assert precision.resolve({"format": "logprob", "options": {"dtype": "bfloat16"}}) == "bfloat16"
    for device in ("cpu", "cuda", "cuda:1"):
        assert resolve_dtype(None, device) is torch.float32 and resolve_dtype("auto", device) is torch.float32
    assert resolve_dtype("float16", "cuda:0") is torch.float16
    with pytest.raises(ValueError, match=r"prms.x.options.dtype: 'float8'"):
        precision.check({"options": {"dtype": "float8"}}, "prms.x")


def rec(device: str, dtype: str | None = None) -> dict:
    watch = timing.Stopwatch()
    return timing.record(watch, device=device, dtype=dtype)


def test_records_carry_the_dtype_and_old_records_imply_their_device_default():
    assert rec(GPU, "float16")["dtype"] == "float16"
    old = {k: v for k, v in rec(GPU).items() if k != "dtype"}  # written before dtypes were recorded
    assert rec(GPU)["dtype"] is None and timing.parse(old, "f")["dtype"] is None
    assert precision.recorded(old) == "bfloat16"
    assert precision.recorded(rec(GPU, "float16")) == "float16"
    assert precision.recorded(rec(GPU)) == "bfloat16"  # unset on CUDA used to mean bfloat16
    assert precision.recorded(rec(CPU)) == "float32"
    assert precision.recorded(rec(f"{GPU}, PRM on {CPU}")) == "float32"  # a search's record: the PRM's device
    assert precision.recorded(None) is None


def test_a_folder_keeps_the_precision_its_outputs_were_computed_in(tmp_path):
    unset, own = {"format": "math-shepherd"}, {"format": "math-shepherd", "options": {"dtype": "float16"}}
    assert precision.for_folder(unset, []) == "float32"
    df = pl.DataFrame({"x": [1]})
    io.write_parquet(df, tmp_path / "p00000-00008_s0000-0004.parquet", metadata=timing.as_metadata(rec(GPU)))
    io.write_parquet(df, tmp_path / "p00008-00016_s0000-0004.parquet")  # written before timing existed
    (tmp_path / ".p00016-00024_s0000-0004.parquet.x.tmp").write_text("partial")
    records = precision.folder_records(tmp_path, "*.parquet")
    assert len(records) == 2
    assert precision.for_folder(unset, records) == "bfloat16"  # the old CUDA default, kept
    assert precision.for_folder(own, records) == "float16"  # a dtype the entry sets always wins
    mixed = records + [rec(CPU)]
    assert precision.for_folder(unset, mixed) == "float32"
