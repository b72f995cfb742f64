"""The score stage's bookkeeping, with a fake PRM: rows, empty generations, errors."""

import polars as pl
import pytest

from pipeline import score
from pipeline.prm import loading


class FakePRM:
    num_parameters = 123

    def __init__(self):
        self.calls = []

    def score(self, questions, texts, step_ends, *, batch_size=8):
        self.calls.append((questions, texts, step_ends))
        return [[0.1 * (k + 1) for k in range(len(e))] for e in step_ends], [len(t) for t in texts]


def test_scores_rows_and_empty_generations():
    samples = pl.DataFrame(
        {
            "problem_id": ["b", "a", "a"],
            "sample_idx": [0, 1, 0],
            "text": ["x\ny", "", "z"],
            "step_ends": [[1, 3], [], [1]],
        },
        schema_overrides={"sample_idx": pl.Int32, "step_ends": pl.List(pl.Int32)},
    )
    problems = pl.DataFrame({"problem_id": ["a", "b"], "question": ["qa", "qb"]})
    prm = FakePRM()
    out = score.score_samples(prm, "fake", samples, problems)
    assert len(prm.calls) == 1 and prm.calls[0][0] == ["qb", "qa"]  # empty sample not sent
    assert out.schema == pl.Schema(score.SCORES)
    assert out.select("problem_id", "sample_idx").rows() == [("a", 0), ("a", 1), ("b", 0)]
    assert out["scores"].to_list() == [[0.1], [], [0.1, 0.2]]
    assert out["prm_tokens"].to_list() == [1, 0, 3]
    assert set(out["prm"]) == {"fake"} and set(out["prm_params"]) == {123}


def test_unknown_format_is_named():
    with pytest.raises(ValueError, match="nope"):
        loading.open_prm({"format": "nope"}, policy_dir="x", head_dir=None)
