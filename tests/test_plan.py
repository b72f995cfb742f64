"""Cache keys and shards: what changes the key, what only adds shards."""

import copy

import pytest

from pipeline import generate
from pipeline.workflow import plan

BASE = {
    "datasets": {"arith": {"source": "arith", "split": "test", "seed": 0, "levels": [1, 2], "limit": 10}},
    "models": {"m": {"path": "embedded:smollm2-135m", "prompt": "p"}},
    "prompts": {"p": {"format": "plain", "template": "Q: {question}\nA:", "stop": ["\n\n"]}},
    "sampling": {"n": 8, "temperature": 0.7, "top_p": 0.95, "max_tokens": 64, "seed": 0, "greedy": True},
    "shards": {"problems": 4, "samples": 4},
}


def keys(config):
    return {(c.dataset, c.model, c.kind): c for c in plan.caches(config)}


def changed(**edits):
    cfg = copy.deepcopy(BASE)
    for path, value in edits.items():
        node = cfg
        *parents, leaf = path.split("__")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


def test_shards_cover_problems_and_samples():
    c = keys(BASE)
    assert c["arith", "m", "sampled"].shards == (
        "p00000-00004_s0000-0004", "p00000-00004_s0004-0008",
        "p00004-00008_s0000-0004", "p00004-00008_s0004-0008",
        "p00008-00010_s0000-0004", "p00008-00010_s0004-0008",
    )
    assert c["arith", "m", "greedy"].shards == (
        "p00000-00004_s0000-0001", "p00004-00008_s0000-0001", "p00008-00010_s0000-0001",
    )


def test_raising_n_keeps_key_and_old_shards():
    old, new = keys(BASE), keys(changed(sampling__n=16))
    assert old["arith", "m", "sampled"].key == new["arith", "m", "sampled"].key
    assert set(old["arith", "m", "sampled"].shards) < set(new["arith", "m", "sampled"].shards)
    assert old["arith", "m", "greedy"] == new["arith", "m", "greedy"]


@pytest.mark.parametrize(
    "edit",
    [
        {"sampling__temperature": 1.0},
        {"sampling__top_p": 1.0},
        {"sampling__max_tokens": 65},
        {"sampling__seed": 1},
        {"datasets__arith__seed": 1},
        {"datasets__arith__max_number": 10},
        {"datasets__arith__levels": [{"ops": 1, "max_number": 5}, 2]},
        {"models__m__engine_args": {"dtype": "float32"}},
        {"prompts__p__template": "Question: {question}\nAnswer:"},
    ],
)
def test_what_determines_samples_changes_the_key(edit):
    assert keys(BASE)["arith", "m", "sampled"].key != keys(changed(**edit))["arith", "m", "sampled"].key


def test_temperature_does_not_touch_greedy_cache():
    assert keys(BASE)["arith", "m", "greedy"].key == keys(changed(sampling__temperature=1.0))["arith", "m", "greedy"].key


def test_limit_and_new_entries_leave_existing_keys():
    base = keys(BASE)
    more = changed(datasets__arith__limit=20)
    more["models"]["m2"] = {"path": "embedded:smollm2-135m", "prompt": "p", "engine_args": {"enforce_eager": True}}
    more["datasets"]["arith2"] = {"source": "arith", "split": "train", "seed": 0, "levels": [1], "limit": 4}
    new = keys(more)
    for k, c in base.items():
        assert new[k].key == c.key
        assert set(c.shards) - set(new[k].shards) == {"p00008-00010_s0000-0004", "p00008-00010_s0004-0008"} or k[2] == "greedy"


def test_file_dataset_key_follows_content_not_path(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"question": "1+1?", "answer": "2"}\n')
    b.write_text(a.read_text())
    cfg = lambda p: {**copy.deepcopy(BASE), "datasets": {"d": {"source": "jsonl", "path": str(p)}}}
    assert keys(cfg(a))["d", "m", "sampled"].key == keys(cfg(b))["d", "m", "sampled"].key
    b.write_text('{"question": "1+2?", "answer": "3"}\n')
    assert keys(cfg(a))["d", "m", "sampled"].key != keys(cfg(b))["d", "m", "sampled"].key


def test_prompt_per_dataset_and_unknown_prompt():
    cfg = changed(models__m__prompt={"arith": "p"})
    assert keys(cfg)["arith", "m", "sampled"].prompt["template"].startswith("Q:")
    with pytest.raises(ValueError, match="models.m.prompt"):
        plan.caches(changed(models__m__prompt="nope"))


def test_blocks():
    assert generate.blocks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert generate.blocks(4, 8) == [(0, 4)]


def test_per_model_samples_and_prms_leave_other_models_alone():
    """models.<m>.n / .greedy / .prms: a second model samples fewer, skips greedy and has no
    PRM (no training cache, no searches), and the first model's keys, shards and searches
    are exactly those it had alone."""
    alone = copy.deepcopy(BASE)
    alone["prms"] = {"v": {"format": "value-head", "train": {
        "dataset": {"source": "arith", "split": "train", "seed": 0, "levels": [1], "limit": 4}, "n": 2}}}
    alone["search"] = {"r": {"algorithm": "rebase", "budgets": [2]}}
    two = copy.deepcopy(alone)
    two["models"]["big"] = {"path": "embedded:gemma3-270m", "prompt": "p", "n": 4, "greedy": False, "prms": []}
    before, after = plan.caches(alone), plan.caches(two)
    assert [(c.model, c.kind, c.key, c.shards) for c in before] == [
        (c.model, c.kind, c.key, c.shards) for c in after if c.model == "m"]
    big = [c for c in after if c.model == "big"]
    assert [(c.kind, c.shards[:1]) for c in big] == [("sampled", ("p00000-00004_s0000-0004",))]
    assert plan.model_sampling(two, "big") == (4, False) and plan.model_sampling(two, "m") == (8, True)
    assert [(s.model, s.key) for s in plan.searches(two)] == [(s.model, s.key) for s in plan.searches(alone)]
    assert plan.model_prms(two, "big") == [] and plan.model_prms(two, "m") == ["v"]
    two["models"]["big"]["prms"] = ["nope"]
    with pytest.raises(ValueError, match=r"models.big.prms: \['nope'\]"):
        plan.caches(two)
