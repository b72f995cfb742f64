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


def test_schema_defaults_leave_dataset_keys_alone():
    """Snakemake fills schema defaults into the config before cache keys are computed,
    so a dataset key added later (max_number) has none: configs that do not set it
    keep their cache keys."""
    from snakemake.utils import validate

    config = copy.deepcopy(DEFAULT)
    config["datasets"] = {"a": {"source": "arith", "limit": 4}, "m": {
        "source": "arith", "limit": 4, "max_number": 5, "levels": [{"ops": 1, "max_number": 3}, 2]}}
    validate(config, schema=str(REPO / "config" / "config.schema.yaml"), set_default=True)
    assert "max_number" not in config["datasets"]["a"]
    assert config["datasets"]["m"]["levels"] == [{"ops": 1, "max_number": 3}, 2]
    for bad in ({"max_number": 1}, {"levels": [{"ops": 1, "numbers": 5}]}, {"levels": [{"ops": 4}]}):
        wrong = copy.deepcopy(config)
        wrong["datasets"]["a"].update(bad)
        with pytest.raises(Exception, match="datasets|levels|max_number"):
            validate(wrong, schema=str(REPO / "config" / "config.schema.yaml"), set_default=True)
