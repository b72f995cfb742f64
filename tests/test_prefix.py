"""Prefix reuse (pipeline/prm/prefix.py) against the plain path, on tiny models built here
whose tokenizer merges "." and "\\n" into one token, so a parent's last token is not a
token of its child: every format's scores equal the plain path's, each distinct token
prefix is computed once, a session computes a child from its parent's cached path, and
a tree search scores like scoring every path from scratch."""

import pytest
from toy_tokenizer import word_tokenizer

from pipeline import prm as prm_pkg
from pipeline.core.prompts import step_ends
from pipeline.treesearch.algorithms import run
from pipeline.treesearch.tree import Limits, Searcher, Step, rebase

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = ("# Question Solution question answer step one two three the is x y z = 2 3 4 5 . "
         "good bad add to get then so we have it Step The answer 1").split()
FORMATS = ["math-shepherd", "qwen-prm", "llemma-prm", "value-head", "logprob"]
KIND = {"math-shepherd": "causal", "qwen-prm": "cls", "llemma-prm": "causal", "value-head": "causal", "logprob": "causal"}

Q = "x = 2 add 3"
STEPS = ["step one x = 2 .", "step two add 3 to get 5 .", "the answer is 5 ."]
TEXT = "\n".join(STEPS)


def make_tokenizer():
    return word_tokenizer(WORDS, merge_dot_newline=True)


def make_dir(path, kind, dtype=None):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                      pad_token_id=1, num_labels=2)
    model = (transformers.LlamaForCausalLM if kind == "causal" else transformers.LlamaForTokenClassification)(config)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def prms(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix")
    dirs = {k: make_dir(root / k, k) for k in ("causal", "cls")}
    out = {f: prm_pkg.load(f, dirs[KIND[f]], device="cpu") for f in FORMATS if f != "value-head"}
    policy = out["logprob"]
    hidden = policy.model.config.hidden_size
    gen = torch.Generator().manual_seed(1)
    out["value-head"] = prm_pkg.prm_class("value-head")(
        dirs["causal"], torch.randn(hidden, generator=gen), 0.1, torch.randn(hidden, generator=gen) * 0.1,
        torch.rand(hidden, generator=gen) + 0.5, device="cpu")
    return out


def samples():
    """Same question with shared first steps, a text that is a token prefix of another,
    a duplicate, a one-character solution, another question, mixed lengths."""
    texts = [TEXT, "\n".join(STEPS[:1]), "\n".join(STEPS[:2]), TEXT.replace("get 5", "get 4"),
             "step one x = 2 .\nthe answer is 2 .", TEXT, "x", "step one .\nstep two .", "so we have it"]
    questions = [Q] * 7 + ["y = 3", "y = 3"]
    return questions, texts, [step_ends(t) for t in texts]


def prefixes(seqs):
    return {tuple(s[:k]) for s in seqs for k in range(1, len(s) + 1)}


def close(a, b, tol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x == pytest.approx(y, abs=tol)


@pytest.mark.parametrize("fmt,batch_size", [(f, 3) for f in FORMATS] + [("value-head", 1), ("logprob", 16)])
def test_prefix_reuse_equals_plain_path(prms, fmt, batch_size):
    prm = prms[fmt]
    q, t, e = samples()
    plain, plain_tokens = prm.score(q, t, e, batch_size=batch_size, reuse_prefix=False)
    tree = prm.prefix_tree()
    assert tree is not None  # every format here reuses prefixes
    reused, tokens = prm.score(q, t, e, batch_size=batch_size, tree=tree)
    assert tokens == plain_tokens  # tokens of the scored text, however computed
    for a, b in zip(reused, plain):
        close(a, b)
    # the tree computed each distinct token prefix once
    seqs = [item.input_ids for item in prm.encode_all(q, t, e, 1)]
    assert tree.computed_tokens == len(prefixes(seqs)) < sum(map(len, seqs))


def test_boundary_merge_is_not_reused(prms):
    prm = prms["value-head"]
    parent = prm.encode(0, Q, STEPS[0], step_ends(STEPS[0])).input_ids
    child = prm.encode(0, Q, TEXT, step_ends(TEXT)).input_ids
    assert child[:len(parent) - 1] == parent[:-1] and child[len(parent) - 1] != parent[-1]
    session = prm.session()
    session.score([Q], [STEPS[0]], [step_ends(STEPS[0])])
    before = session.tree.computed_tokens
    scores, _ = session.score([Q], [TEXT], [step_ends(TEXT)])
    assert session.tree.computed_tokens - before == len(child) - (len(parent) - 1)
    close(scores[0], prm.score([Q], [TEXT], [step_ends(TEXT)], reuse_prefix=False)[0][0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_session_computes_children_from_cached_parents(prms, fmt):
    prm = prms[fmt]
    session = prm.session()
    parents = ["\n".join(STEPS[:1]), "step one x = 2 .\nstep two"]
    children = [parents[0] + "\nstep two add 3 to get 5 .", parents[0] + "\nthe answer is 2 .",
                parents[1] + " add 3 to get 5 .\nthe answer is 5 ."]
    for texts in (parents, children):
        e = [step_ends(t) for t in texts]
        before = session.tree.computed_tokens
        got, tokens = session.score([Q] * len(texts), texts, e, batch_size=2)
        plain, plain_tokens = prm.score([Q] * len(texts), texts, e, reuse_prefix=False)
        assert tokens == plain_tokens
        for a, b in zip(got, plain):
            close(a, b)
    seqs = lambda ts: [i.input_ids for i in prm.encode_all([Q] * len(ts), ts, [step_ends(t) for t in ts], 1)]  # noqa: E731
    new = prefixes(seqs(children)) - prefixes(seqs(parents))
    assert session.tree.computed_tokens - before == len(new) < sum(map(len, seqs(children)))


def test_session_evicts_least_recently_used_within_budget(prms):
    prm = prms["value-head"]
    per_token = prm_pkg.base.kv_bytes_per_token(prm.model.base_model)
    session = prm.session(max_bytes=20 * per_token)
    q, t, e = samples()
    for k in range(3):
        got, _ = session.score(q[k::2], t[k::2], e[k::2], batch_size=2)
        for a, b in zip(got, prm.score(q[k::2], t[k::2], e[k::2], reuse_prefix=False)[0]):
            close(a, b)
        assert session.tree.cached_tokens() <= 20


def test_chunks_bound_what_one_call_caches(prms):
    prm = prms["logprob"]
    per_token = prm_pkg.base.kv_bytes_per_token(prm.model.base_model)
    q, t, e = samples()
    tree = prm.prefix_tree(max_bytes=8 * per_token)
    assert len(list(tree._chunks([i.input_ids for i in prm.encode_all(q, t, e, 1)]))) > 1
    got, _ = prm.score(q, t, e, tree=tree)
    assert 0 < tree.peak_cached <= 8  # never more KV cache than the budget, at any moment
    for a, b in zip(got, prm.score(q, t, e, reuse_prefix=False)[0]):
        close(a, b)


@pytest.mark.parametrize("fmt", ["logprob", "math-shepherd", "llemma-prm"])
def test_bfloat16_within_tolerance(tmp_path, fmt):
    # the bfloat16 tolerance. Not the value head: its standardised weights
    # amplify the rounding of the hidden state, so in bfloat16 its scores move with the
    # batch a sample is computed in on either path (benchmarks/prm_scoring.py measures it)
    prm = prm_pkg.load(fmt, make_dir(tmp_path / "m", "causal"), device="cpu", dtype="bfloat16")
    q, t, e = samples()
    plain, _ = prm.score(q, t, e, batch_size=4, reuse_prefix=False)
    reused, _ = prm.score(q, t, e, batch_size=4)
    for a, b in zip(reused, plain):
        close(a, b, tol=1e-3)


class Steps:
    """Scripted steps with shared and diverging text (the tokenizer's words only)."""

    def __init__(self):
        self.calls = 0

    def expand(self, contexts, counts, max_tokens, *, greedy=False):
        self.calls += 1
        out = []
        for ctx, k in zip(contexts, counts):
            depth = ctx.count("\n")
            steps = []
            for j in range(k):
                text = (f"the answer is {2 + j % 3} ." if depth >= 2 else
                        ["step one x = 2 .", "step two add 3 to get 5 .", "so we have it"][(depth + j) % 3])
                steps.append(Step(text, 5, len(ctx), "newline"))
            out.append(steps)
        return out


@pytest.mark.parametrize("algorithm,settings", [
    ("rebase", {}), ("beam", {}), ("mcts", {}), ("dvts", {"children": 2}), ("particles", {}),
    ("beam", {"children": 2, "lookahead": 1}),  # leaves are complete children: scored on their own path
])
def test_search_scores_equal_scoring_whole_paths(prms, algorithm, settings):
    prm = prms["value-head"]
    s = Searcher(Steps(), prm, [Q, "y = 3"], ["Q0:", "Q1:"], stop=(), batch_size=4,
                 limits=Limits(max_depth=5, max_step_tokens=8, max_tokens=100))
    assert isinstance(s.scorer, prm_pkg.base.Session)
    trees = run(algorithm, s, 4, settings)
    leaves = [leaf for t in trees for leaf in t.leaves]
    texts = [leaf.text for leaf in leaves]
    plain, tokens = prm.score([trees[leaf.problem].question for leaf in leaves], texts,
                              [step_ends(x) for x in texts], reuse_prefix=False)
    for leaf, p in zip(leaves, plain):
        close(leaf.scores, p)
    # children were computed on their parents' cached paths: far fewer tokens than read
    assert s.scorer.tree.computed_tokens < sum(t.prm_tokens for t in trees)


class RawChunks:
    """Raw steps (a `step_stop` search): chunks that end in "." and begin with "\n", so
    a child's text tokenizes ".\n" as one token where its parent's ended in "."."""

    CHUNKS = ["step one x = 2 .", "\nstep two add 3 to get 5 .", "\nso we have it .", "\nthe answer is 5 ."]

    def expand(self, contexts, counts, max_tokens, stops=None):
        assert stops is not None  # raw steps: the Searcher passes each request's stops
        return [[Step(self.CHUNKS[(len(ctx) + j) % len(self.CHUNKS)], 5, len(ctx), "step")
                 for j in range(k)] for ctx, k in zip(contexts, counts)]


def test_raw_step_search_scores_equal_scoring_whole_paths(prms):
    prm = prms["value-head"]
    s = Searcher(RawChunks(), prm, [Q], ["Q0:"], stop=(), batch_size=4,
                 limits=Limits(max_depth=4, max_step_tokens=8, max_tokens=100, step_stop="Step {depth+2}"))
    trees = rebase(s, 4)
    leaves = trees[0].leaves
    assert any(leaf.depth > 1 for leaf in leaves)
    plain, _ = prm.score([Q] * len(leaves), [leaf.text for leaf in leaves], [leaf.step_ends() for leaf in leaves],
                         reuse_prefix=False)
    for leaf, p in zip(leaves, plain):
        assert len(leaf.scores) == leaf.depth
        close(leaf.scores, p)
    assert s.scorer.tree.computed_tokens < sum(t.prm_tokens for t in trees)


def test_sliding_window_model(tmp_path):
    # a window shorter than the texts: left padding of cached prefixes keeps distances
    torch.manual_seed(0)
    config = transformers.MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, sliding_window=5,
                                        max_position_embeddings=256, pad_token_id=1)
    transformers.MistralForCausalLM(config).save_pretrained(tmp_path)
    make_tokenizer().save_pretrained(tmp_path)
    prm = prm_pkg.load("logprob", str(tmp_path), device="cpu")
    q, t, e = samples()
    plain, _ = prm.score(q, t, e, batch_size=3, reuse_prefix=False)
    session = prm.session()
    session.score(q[:3], t[:3], e[:3])
    for a, b in zip(session.score(q, t, e, batch_size=2)[0], plain):
        close(a, b)
    # the window matters: a window of 5 scores differently from full attention
    prm.model.config.sliding_window = 256
    assert prm.score(q, t, e, reuse_prefix=False)[0] != plain
