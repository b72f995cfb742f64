"""PRM batch budgets and path choice (pipeline/prm/batching.py) and the bounded KV memory
of prefix trees (pipeline/prm/prefix.py), on tiny models built here: token-budget
batches (the CUDA path, forced on the CPU) that split a question's samples across
forward passes score as the plain path does in float32 and bfloat16; a session holds no
more KV cache than its budget at any moment of a call; the default path is the cheaper
plan. The GPU benchmark's CPU smoke run: tests/test_gpu_prm.py."""

import random
import sys
from types import SimpleNamespace

import pytest
from toy_tokenizer import word_tokenizer

from pipeline import prm as prm_pkg
from pipeline.core import progress as progress_mod
from pipeline.core.prompts import step_ends
from pipeline.prm import batching

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

WORDS = "x y z = 2 3 4 5 . add to get then so we have it good bad the answer is step one two three".split()


# ---------------------------------------------------------------- budgets, no model
def fake_model(dtype=torch.float16, **sizes):
    config = SimpleNamespace(num_attention_heads=32, num_key_value_heads=32, hidden_size=4096, num_hidden_layers=32,
                             intermediate_size=11008, **sizes)
    return SimpleNamespace(config=config, parameters=lambda: iter([torch.zeros(1, dtype=dtype)]))


def test_cpu_budget_is_the_batch_size():
    budget, keep = batching.plan_memory("cpu", fake_model(), batch_size=32)
    assert (budget.samples, budget.tokens, budget.work_bytes, keep) == (32, None, None, batching.DEFAULT_KV_BYTES)
    lengths = [5, 9, 9, 3, 7, 1, 8]
    order = sorted(range(7), key=lambda i: -lengths[i])  # the plain path's order before token budgets
    assert batching.plain_batches(lengths, batching.count_budget(3)) == [order[0:3], order[3:6], order[6:]]
    assert budget.new_tokens(100) == 3200  # prefix reuse: batch size x the longest sequence


def test_gpu_budget_follows_free_memory_and_the_model():
    gib = 1 << 30
    llama = fake_model()  # Llemma-7B shape, float16: 512 KiB of KV per token
    kv, per_token = batching.model_bytes(llama)
    assert kv == 32 * 2 * 4096 * 2
    roomy, keep = batching.plan_memory("cuda:0", llama, batch_size=32, free=120 * gib)
    assert roomy.tokens == batching.GPU_MAX_TOKENS and roomy.samples is None
    assert keep == 32 * gib  # KV_SHARE of the free memory, rounded down to a power of two
    # a GPU with room to spare batches the same way whatever is free: scores reproduce
    again, _ = batching.plan_memory("cuda:0", llama, batch_size=8, free=110 * gib)
    assert again == roomy
    tight, tight_keep = batching.plan_memory("cuda:0", llama, batch_size=32, free=4 * gib)
    assert tight.tokens < roomy.tokens and tight_keep < keep
    assert tight.tokens & (tight.tokens - 1) == 0  # a power of two
    assert tight.tokens * per_token <= batching.MEMORY_SHARE * (4 * gib - tight_keep)
    # a GQA model of the same width holds 4x less KV per token: a bigger budget on a tight GPU
    mistral, _ = batching.plan_memory("cuda:0", fake_model_gqa(), batch_size=32, free=4 * gib)
    assert mistral.tokens >= tight.tokens
    # the past a prefix-reuse row carries counts against the working memory
    assert tight.fits(1, 256) and not tight.fits(1, 256, past=10 ** 6)
    # the caller's KV budget wins (a session's max_bytes)
    assert batching.plan_memory("cuda:0", llama, batch_size=32, free=120 * gib, max_bytes=gib)[1] == gib


def fake_model_gqa():
    model = fake_model()
    model.config.num_key_value_heads = 8
    return model


def test_plain_batches_follow_the_token_budget():
    rng = random.Random(0)
    lengths = [rng.randint(1, 40) for _ in range(50)]
    batches = batching.plain_batches(lengths, batching.token_budget(64))
    assert sorted(i for b in batches for i in b) == list(range(50))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)  # longest first
    for b in batches:
        assert len(b) == 1 or len(b) * lengths[b[0]] <= 64
    assert len(batches) < 50  # short rows share passes
    plan = batching.plain_plan(lengths, batching.token_budget(64, call_cost=10))
    assert plan["cost"] == 10 * len(batches) + sum(len(b) * lengths[b[0]] for b in batches)


def test_batch_by_length_keeps_within_the_working_memory():
    from pipeline.prm.prefix import Segment, batch_by_length

    root = Segment([], None)
    parents = [Segment([1] * p, root) for p in (2, 30)]
    segs = [Segment([2] * (3 + i % 5), parents[i % 2]) for i in range(40)]
    budget = batching.Budget(tokens=1000, work_bytes=300, token_bytes=1, kv_bytes=1)
    batches = batch_by_length(segs, budget.tokens, 1, budget.fits)
    assert sorted(map(id, (s for b in batches for s in b))) == sorted(map(id, segs))
    for b in batches:
        width, past = max(len(s.tokens) for s in b), max(s.start for s in b)
        assert len(b) == 1 or budget.fits(len(b), width, past)
    # without the memory bound the same segments take fewer, bigger passes
    assert len(batch_by_length(segs, budget.tokens, 1)) < len(batches)


def test_progress_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # importing tqdm fails
    items = [1, 2, 3]
    assert progress_mod.progress(items, desc="x") is items


# ---------------------------------------------------------------- tiny models
def make_prm(path, fmt="llemma-prm", dtype="float32"):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                      pad_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    word_tokenizer(WORDS, merge_dot_newline=True).save_pretrained(path)
    return prm_pkg.load(fmt, str(path), device="cpu", dtype=dtype)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("batching")
    make_prm(path)
    return path


def workload(questions=3, samples=6, seed=0):
    """Samples that share their question and sometimes their first step."""
    rng = random.Random(seed)
    qs, texts = [], []
    for q in range(questions):
        question = " ".join(rng.choices(WORDS, k=12))
        first = " ".join(rng.choices(WORDS, k=6)) + " ."
        for s in range(samples):
            steps = ([first] if s % 2 else []) + [" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) + " ."
                                                  for _ in range(rng.randint(1, 3))]
            qs.append(question)
            texts.append("\n".join(steps))
    return qs, texts, [step_ends(t) for t in texts]


def close(a, b, tol):
    worst = max(abs(x - y) for ra, rb in zip(a, b, strict=True) for x, y in zip(ra, rb, strict=True))
    assert worst <= tol, worst
    return worst


class Passes:
    """The (rows, new tokens, past) of every forward pass of a model body."""

    def __init__(self, prm):
        self.seen = []
        self.hook = prm.model.base_model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids, past = kwargs["input_ids"], kwargs.get("past_key_values")
        self.seen.append((ids.shape[0], ids.shape[1], past.get_seq_length() if past is not None else 0))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.hook.remove()


@pytest.mark.parametrize("fmt", ["llemma-prm", "logprob"])
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("bfloat16", 1e-4)])
def test_token_budget_batches_split_questions_and_score_as_the_plain_path(model_dir, fmt, dtype, tol):
    # the tolerances (measured here: <= 1e-8 in float32, <= 2.4e-5 in bfloat16;
    # math-shepherd's two-logit softmax on this tiny model moves by 2.4e-4 in bfloat16,
    # where its plain path moves by 6e-5 with the batch alone: tests/test_prefix.py)
    prm = prm_pkg.load(fmt, str(model_dir), device="cpu", dtype=dtype)
    q, t, e = workload()
    plain, tokens = prm.score(q, t, e, batch_size=32, reuse_prefix=False)
    budget = 24
    with Passes(prm) as passes:
        reuse, reuse_tokens = prm.score(q, t, e, reuse_prefix=True, token_budget=budget)
    assert reuse_tokens == tokens and prm.last_call["path"] == batching.REUSE
    assert prm.last_call["token_budget"] == budget and prm.last_call["forward_passes"] == len(passes.seen)
    for rows, width, _ in passes.seen:
        assert rows == 1 or rows * width <= budget
    # the continuations of one question (6 samples on one cached prefix) fill several passes
    on_cache = [rows for rows, _, past in passes.seen if past]
    assert len(on_cache) > 3 and max(on_cache) < 6
    close(reuse, plain, tol)
    # the plain path in token-budget batches (split as well) agrees with its count batches
    with Passes(prm) as passes:
        split, _ = prm.score(q, t, e, reuse_prefix=False, token_budget=2 * max(tokens))
    assert max(rows for rows, _, _ in passes.seen) < 6 < len(passes.seen) * 2
    close(split, plain, tol)


def test_session_never_holds_more_than_its_budget(model_dir):
    prm = prm_pkg.load("llemma-prm", str(model_dir), device="cpu")
    kv = prm_pkg.base.kv_bytes_per_token(prm.model.base_model)
    limit = 40  # tokens of KV cache; one call below reads ~10x as many
    session = prm.session(max_bytes=limit * kv)
    tree = session.tree
    held = []

    def measure(*_):  # bytes of KV the tree holds, counted from the tensors themselves
        held.append(sum(s.kv.numel() * s.kv.element_size() for s in tree._walk() if s.kv is not None))

    hook = prm.model.base_model.register_forward_pre_hook(measure)
    try:
        q, t, e = workload(questions=4, samples=6, seed=1)
        for part in (slice(0, 12), slice(0, 24)):  # the second call extends what the first read
            got, tokens = session.score(q[part], t[part], e[part], batch_size=4)
            measure()
            assert 0 < session.last_call["peak_kv_bytes"] <= limit * kv
            close(got, prm.score(q[part], t[part], e[part], reuse_prefix=False)[0], 1e-6)
    finally:
        hook.remove()
    assert sum(tokens) > 8 * limit and max(held) <= limit * kv
    assert max(held) > 0 and tree.cached_tokens() == tree.cached <= limit  # it kept what fit


def test_default_takes_the_cheaper_plan(model_dir):
    prm = prm_pkg.load("llemma-prm", str(model_dir), device="cpu")
    q, t, e = workload(questions=2, samples=12, seed=3)
    long_q = [x + " " + " ".join(["the answer is x ."] * 8) for x in q]  # a long shared question
    with Passes(prm) as passes:
        prm.score(long_q, t, e, batch_size=8)
    call = prm.last_call
    assert call["path"] == batching.REUSE and call["chosen"] == "auto" and any(p for _, _, p in passes.seen)
    assert call["estimated_cost"][batching.REUSE] <= batching.REUSE_MARGIN * call["estimated_cost"][batching.PLAIN]
    assert call["computed_tokens"] < call["tokens"]
    # distinct questions, one sample each: nothing to share, the plain path
    singles = [" ".join(random.Random(k).choices(WORDS, k=10)) for k in range(6)]
    prm.score(singles, t[:6], e[:6], batch_size=8)
    assert prm.last_call["path"] == batching.PLAIN and prm.last_call["computed_tokens"] == prm.last_call["tokens"]
