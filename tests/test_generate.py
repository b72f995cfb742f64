"""Sample rows from engine outputs, step boundaries, prompts: with a fake engine."""

from types import SimpleNamespace as NS

import polars as pl
import pytest

from pipeline import generate
from pipeline.core import prompts, schemas
from pipeline.engine import vllm_engine


def completion(index, text, tokens, logprob=-1.5, finish="stop"):
    return NS(index=index, text=text, token_ids=list(range(tokens)), cumulative_logprob=logprob, finish_reason=finish)


class FakeLLM:
    """Returns canned completions and records what it was asked (one call per shard)."""

    def __init__(self, texts):
        self.texts, self.calls = texts, []

    def get_tokenizer(self):
        return None

    def generate(self, prompt_texts, params):
        self.calls.append((prompt_texts, params))
        return [
            NS(prompt_token_ids=[0] * len(p), outputs=[completion(i, t, len(t.split())) for i, t in enumerate(self.texts)])
            for p in prompt_texts
        ]


def test_step_ends_one_step_per_line():
    text = " A has 3.\nB buys 5, so 3 + 5 = 8.\n\nThe answer is 8.  \n"
    ends = prompts.step_ends(text)
    assert [text[:e].splitlines()[-1].strip() for e in ends] == ["A has 3.", "B buys 5, so 3 + 5 = 8.", "The answer is 8."]
    assert prompts.step_ends("") == [] and prompts.step_ends("\n\n") == []


def test_render_plain_and_chat():
    t = {"format": "plain", "template": "Q: {question}\nA:\n"}
    assert prompts.render(t, "  1+1?  ") == "Q: 1+1?\nA:\n"
    with pytest.raises(ValueError, match="tokenizer"):
        prompts.render({**t, "format": "chat"}, "x")

    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "|".join(f"{m['role']}:{m['content']}" for m in messages) + "|assistant:"

    chat = prompts.render({**t, "format": "chat", "system": "S"}, "x", Tok())
    assert chat == "system:S|user:Q: x\nA:\n|assistant:"


def test_sample_one_call_rows_in_order():
    llm = FakeLLM(["a.\nThe answer is 1.", "The answer is 2."])
    problems = pl.DataFrame({"problem_id": ["p0", "p1", "p2"], "question": ["q0", "q1", "q2"]})
    df = generate.sample(
        llm, problems,
        prompt={"format": "plain", "template": "{question}", "stop": ["\n\n"]},
        sampling={"temperature": 0.7, "top_p": 0.9, "max_tokens": 20, "seed": 0},
        sample_range=(4, 6),
    )
    assert len(llm.calls) == 1 and llm.calls[0][1].n == 2 and llm.calls[0][1].stop == ["\n\n"]
    assert df.schema == pl.Schema(schemas.SAMPLES)
    assert df["problem_id"].to_list() == ["p0", "p0", "p1", "p1", "p2", "p2"]
    assert df["sample_idx"].to_list() == [4, 5] * 3
    assert df["step_ends"][0].to_list() == [2, 19]
    assert df["output_tokens"].to_list() == [5, 4] * 3
    assert df["prompt_tokens"].to_list() == [2] * 6


def test_all_empty_generations_is_an_error_naming_the_prompt():
    llm = FakeLLM(["", "\n"])
    problems = pl.DataFrame({"problem_id": ["p0"], "question": ["q0"]})
    with pytest.raises(RuntimeError, match="stop strings"):
        generate.sample(llm, problems, prompt={"template": "{question}"},
                        sampling={"temperature": 1.0, "top_p": 1.0, "max_tokens": 5, "seed": 0}, sample_range=(0, 2))


def test_some_empty_generations_are_kept():
    out = [NS(prompt_token_ids=[1], outputs=[completion(0, "", 1), completion(1, "The answer is 3.", 5)])]
    df = generate.to_rows(["p"], out, 0)
    assert df["text"].to_list() == ["", "The answer is 3."]


def test_engine_seed_depends_on_key_and_shard():
    a = vllm_engine.engine_seed("k1", "p00000-00010_s0000-0008")
    assert a == vllm_engine.engine_seed("k1", "p00000-00010_s0000-0008")
    assert a != vllm_engine.engine_seed("k1", "p00000-00010_s0008-0016")
    assert a != vllm_engine.engine_seed("k2", "p00000-00010_s0000-0008")
    assert 0 <= a < 2**31
