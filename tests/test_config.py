"""The config schema rejects wrong, unknown and missing keys by name, before any job."""

import copy

import pytest
import yaml

from conftest import REPO, dry_run
DEFAULT = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_default_config_dry_runs(tmp_path):
    proc = dry_run(tmp_path, DEFAULT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "generate" in proc.stdout and not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda c: c["sampling"].update(temperatur=0.5), ["temperatur"]),
        (lambda c: c["sampling"].update(n="16"), ["'16'", "integer"]),
        (lambda c: c["sampling"].pop("top_p"), ["top_p", "required"]),
        (lambda c: c["datasets"]["arith"].update(source="gsm9k"), ["gsm9k"]),
        (lambda c: c["models"]["smollm2-135m"].pop("prompt"), ["prompt", "required"]),
        (lambda c: c.update(shard={"problems": 3}), ["shard"]),
        (lambda c: c["prompts"]["arith-few-shot"].update(template="no placeholder"), ["question"]),
    ],
)
def test_bad_config_fails_with_the_key(tmp_path, mutate, words):
    config = copy.deepcopy(DEFAULT)
    mutate(config)
    proc = dry_run(tmp_path, config)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    for w in words:
        assert w in text, text[-2000:]


def test_missing_dataset_file_is_named(tmp_path):
    config = copy.deepcopy(DEFAULT)
    config["datasets"] = {"g": {"source": "gsm8k", "path": str(tmp_path / "missing.jsonl")}}
    proc = dry_run(tmp_path, config)
    assert proc.returncode != 0 and "missing.jsonl" in proc.stdout + proc.stderr
