"""PRM adapters on tiny random models built here: scores sit on the step positions, the
plain path runs one forward pass per sample, errors name the PRM and the sample; value
head learns and round-trips; the offset -> position helpers on their own. Prefix reuse
against the plain path: tests/test_prefix.py."""

import math
import random
from pathlib import Path

import pytest
from toy_tokenizer import SPECIALS, word_tokenizer

from pipeline import prm as prm_pkg
from pipeline.core import prompts
from pipeline.core.prompts import step_ends as split_step_ends
from pipeline.prm import positions as P

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

WORDS = ("# Question Solution question answer step one two three the is x y z = 2 3 4 5 . "
         "good bad add to get then so we have it").split()

Q = "x = 2 add 3"
TEXT = "step one x = 2 .\nstep two add 3 to get 5 .\nthe answer is 5 ."
ENDS = split_step_ends(TEXT)
ALL = ["math-shepherd", "qwen-prm", "llemma-prm", "value-head", "logprob"]


# ---------------------------------------------------------------- tiny models
def make_tokenizer(specials=SPECIALS):
    return word_tokenizer(WORDS, specials=specials)


def config(**kw):
    return transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                                    pad_token_id=1, **kw)


def make_dir(path, kind="causal", specials=SPECIALS, seed=0):
    torch.manual_seed(seed)
    if kind == "causal":
        model = transformers.LlamaForCausalLM(config())
    else:  # a causal body with 2 logits per position (the Qwen / Llemma PRM heads)
        model = transformers.LlamaForTokenClassification(config(num_labels=2))
    model.save_pretrained(path)
    make_tokenizer(specials).save_pretrained(path)
    return str(path)


KIND = {"math-shepherd": "causal", "qwen-prm": "cls", "llemma-prm": "causal", "value-head": "causal", "logprob": "causal"}


def train_head(policy_dir, n=8, **kw):
    texts = [TEXT.replace("5 .", f"{k % 4 + 2} .") for k in range(n)]
    labels = [k % 2 for k in range(n)]
    return prm_pkg.train_value_head(policy_dir, [Q] * n, texts, [split_step_ends(t) for t in texts], labels,
                                    epochs=20, device="cpu", **kw)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prm")
    return {"causal": make_dir(root / "causal"), "cls": make_dir(root / "cls", "cls")}


@pytest.fixture(scope="module")
def prms(dirs, tmp_path_factory):
    out = {f: prm_pkg.load(f, dirs[KIND[f]], device="cpu") for f in ("math-shepherd", "qwen-prm", "llemma-prm", "logprob")}
    head_dir = tmp_path_factory.mktemp("head") / "head"
    train_head(dirs["causal"]).save(head_dir)
    out["value-head"] = prm_pkg.load("value-head", str(head_dir), device="cpu")
    return out


def direct(model, text, add_special_tokens=True, tok=None):
    """Tokens and a plain forward pass of one sequence (no batching, no padding)."""
    tok = tok or make_tokenizer()
    enc = tok(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
    ids = torch.tensor([enc["input_ids"]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return enc, out


# ---------------------------------------------------------------- positions
def test_step_token_positions_skips_empty_spans_and_straddling_tokens():
    # <s>, "ab", ".\n" (straddles the step end 3), "cd"
    offsets = [(0, 0), (0, 2), (2, 4), (4, 6)]
    assert P.step_token_positions(offsets, [2, 3, 6]) == [1, 1, 3]
    assert P.step_token_positions([(0, 0), (0, 5)], [3]) == [-1]


def test_tag_token_positions_overlap_and_id():
    text, spans = P.insert_tags("a b\nc d\n", [3, 7], "ки", " ")
    assert text == "a b ки\nc d ки" and [text[s:e] for s, e in spans] == ["ки", "ки"]
    # a SentencePiece-like "▁ки" whose span includes the space before the tag
    offsets = [(0, 0), (0, 1), (2, 3), (3, 6), (7, 8), (9, 10), (10, 13)]
    ids = [1, 5, 6, 9, 7, 8, 9]
    assert P.tag_token_positions(offsets, spans, ids, 9) == [3, 6]
    assert P.tag_token_positions(offsets, spans, ids, 4) == [-1, -1]
    # the tag merged into a longer token: no position
    assert P.tag_token_positions([(0, 1), (2, 7)], [(4, 6)]) == [-1]


def test_join_split_and_validate():
    steps = prompts.split_steps(TEXT, ENDS)
    assert steps == ["step one x = 2 .", "step two add 3 to get 5 .", "the answer is 5 ."]
    joined, spans = P.join_with_tags(steps, "<extra_0>")
    assert joined.count("<extra_0>") == 3 and joined.endswith("<extra_0>")
    assert all(joined[s:e] == "<extra_0>" for s, e in spans)
    assert P.find_last_occurrences("a<t>b<t>c<t>", "<t>", 2) == [(5, 8), (9, 12)]
    assert P.find_last_occurrences("a<t>", "<t>", 2) is None
    assert P.validate_step_ends(TEXT, ENDS) is None
    assert "no step" in P.validate_step_ends(TEXT, [])
    assert P.validate_step_ends(TEXT, [5, 5]) and P.validate_step_ends("abc", [4])


# ---------------------------------------------------------------- adapters
def test_math_shepherd_matches_direct_forward(prms):
    prm = prms["math-shepherd"]
    scores, tokens = prm.score([Q], [TEXT], [ENDS])
    tagged = Q + " " + TEXT.replace(" .\n", " . ки\n") + " ки"
    enc, out = direct(prm.model, tagged)
    tag = prm.tokenizer.convert_tokens_to_ids("ки")
    pos = [i for i, t in enumerate(enc["input_ids"]) if t == tag]
    plus, minus = prm.tokenizer.convert_tokens_to_ids(["+", "-"])
    expect = out.logits[0, pos][:, [plus, minus]].softmax(-1)[:, 0]
    assert len(pos) == len(scores[0]) == 3
    assert scores[0] == pytest.approx(expect.tolist(), abs=1e-5)
    assert tokens == [len(enc["input_ids"])]


def test_qwen_prm_matches_direct_forward(prms):
    prm = prms["qwen-prm"]
    scores, tokens = prm.score([Q], [TEXT], [ENDS])
    rendered = (f"<|im_start|>system\n{prm.system}<|im_end|>\n<|im_start|>user\n{Q}<|im_end|>\n<|im_start|>assistant\n"
                "step one x = 2 .<extra_0>step two add 3 to get 5 .<extra_0>the answer is 5 .<extra_0><|im_end|>\n")
    enc, out = direct(prm.model, rendered, add_special_tokens=False)
    tag = prm.tokenizer.convert_tokens_to_ids("<extra_0>")
    pos = [i for i, t in enumerate(enc["input_ids"]) if t == tag]
    assert scores[0] == pytest.approx(out.logits[0, pos].softmax(-1)[:, 1].tolist(), abs=1e-5)
    assert tokens == [len(enc["input_ids"])]


def test_llemma_prm_matches_direct_forward(prms):
    prm = prms["llemma-prm"]
    scores, tokens = prm.score([Q], [TEXT], [ENDS])
    # hf_score.py: question + solution, no template; " ки" after every step
    enc, out = direct(prm.model, Q + TEXT.replace(" .\n", " . ки\n") + " ки")
    tag = prm.tokenizer.encode(" ки", add_special_tokens=False)[-1]
    pos = [i for i, t in enumerate(enc["input_ids"]) if t == tag]
    assert len(pos) == 3
    assert scores[0] == pytest.approx(out.logits[0, pos].mean(-1).sigmoid().tolist(), abs=1e-5)
    assert tokens == [len(enc["input_ids"])]


def test_tag_steps_reuses_the_policys_own_tags():
    text = "Step 1: a ки\nStep 2: b\nThe answer is: 3 ки"
    tagged, spans = P.tag_steps(text, split_step_ends(text), "ки", " ")
    assert tagged == "Step 1: a ки\nStep 2: b ки\nThe answer is: 3 ки"
    assert [tagged[s:e] for s, e in spans] == ["ки"] * 3
    # a tag glued to the step ("b.ки") is not reused; a bare tag is not a step to reuse
    tagged, _ = P.tag_steps("b.ки\nки", [4, 7], "ки", " ")
    assert tagged == "b.ки ки\nки ки"


def test_math_shepherd_does_not_double_tag(prms):
    prm = prms["math-shepherd"]
    own = TEXT.replace(" .\n", " . ки\n") + " ки"  # the policy wrote every tag itself
    tag = prm.tokenizer.convert_tokens_to_ids("ки")
    item = prm.encode(0, Q, own, split_step_ends(own))
    assert item.input_ids.count(tag) == 3 and [item.input_ids[p] for p in item.positions] == [tag] * 3
    assert prm.score([Q], [own], [split_step_ends(own)])[0] == prm.score([Q], [TEXT], [ENDS])[0]


# A SentencePiece-like tokenizer (BPE over "▁"-prefixed words, as Llama's) in which " ки"
# is the single token "▁ки", and a LlamaForCausalLM whose lm_head rows alternate two rows,
# as convert_checkpoint_to_hf.py exports the paper's reward model.
CORPUS = [
    "Step 1: We have 3 + 4 = 7 . ки\nStep 2: So x = 7 / 4 . ки\nThe answer is: \\frac{7}{4} ки",
    "What is 3 + 4 ? Step 1: Add them . ки\nThe answer is: 7 ки",
    "Step 1: The area is 12 . ки\nStep 2: Half of it is 6 . ки\nThe answer is: 6 ки",
] * 20


def make_llemma_dir(path, *, seed=0, arch="llama"):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
    ])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tk.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=96, special_tokens=["<unk>", "<s>", "</s>"]))
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tk.token_to_id("<s>"))])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                               unk_token="<unk>", pad_token="</s>")
    vocab = len(tok)
    torch.manual_seed(seed)
    sizes = dict(vocab_size=vocab + vocab % 2, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=False)
    if arch == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes))
        with torch.no_grad():
            two = torch.randn(2, sizes["hidden_size"])
            model.lm_head.weight.copy_(two.repeat(sizes["vocab_size"] // 2, 1))  # rows r0, r1, r0, r1, ...
    else:  # Phi: an lm_head with a bias, random rows (the mean identity holds for any head)
        model = transformers.PhiForCausalLM(transformers.PhiConfig(**sizes))
        with torch.no_grad():
            torch.nn.init.normal_(model.lm_head.bias)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("arch", ["llama", "phi"])
def test_llemma_prm_on_a_released_style_checkpoint(tmp_path, arch):
    path = make_llemma_dir(tmp_path / "rm", arch=arch)
    prm = prm_pkg.load("llemma-prm", path, device="cpu")
    assert (prm.model.lm_head.bias is not None) == (arch == "phi")
    assert prm.tokenizer.convert_ids_to_tokens(prm.tag_id) == "▁ки"
    question = "What is 3 + 4 ?"
    own = "Step 1: We have 3 + 4 = 7 . ки\nStep 2: So x = 7 / 4 . ки\nThe answer is: \\frac{7}{4} ки"
    mixed = own.replace(" . ки\nStep 2", " .\nStep 2")  # the policy forgot one tag
    texts = [own, mixed]
    scores, tokens = prm.score([question] * 2, texts, [split_step_ends(t) for t in texts], batch_size=2)

    # the reference: model(**enc).logits.mean(dim=-1).sigmoid() at tokenizer.encode(" ки")[-1]
    tok = prm.tokenizer
    step_tag_id = tok.encode(" ки")[-1]
    for row, text in zip(scores, [own, own]):  # the forgotten tag is inserted where it belongs
        enc = tok(question + text, return_tensors="pt")
        with torch.no_grad():
            ref = prm.model(**enc).logits.mean(dim=-1).sigmoid()[0]
        at = enc["input_ids"][0] == step_tag_id
        assert int(at.sum()) == 3  # one tag per step: none doubled, none missing
        assert row == pytest.approx(ref[at].tolist(), abs=1e-5)
    assert tokens[0] == tokens[1] == len(tok(question + own)["input_ids"])
    assert len(set(scores[0])) == 3  # the positions differ, so do the scores


def test_llemma_prm_needs_a_language_model_head(dirs):
    with pytest.raises(ValueError, match="llemma-prm PRM .*has no language-model head"):
        prm_pkg.load("llemma-prm", dirs["cls"], device="cpu")


def test_value_head_and_logprob_match_direct_forward(prms):
    text = "Question: " + Q + "\nAnswer:\n" + TEXT
    tok = make_tokenizer()
    enc = tok(text, return_offsets_mapping=True)
    ids = enc["input_ids"]
    prefix = len("Question: " + Q + "\nAnswer:\n")
    # step k's token: the "." ending each line
    dots = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e == prefix + ENDS[0] or e == prefix + ENDS[1]
            or e == prefix + ENDS[2]]
    assert len(dots) == 3

    head = prms["value-head"]
    _, out = direct(head.model, text)
    hidden = out.hidden_states[-1][0]
    scores, _ = head.score([Q], [TEXT], [ENDS])
    assert scores[0] == pytest.approx(head.head(hidden[dots]).tolist(), abs=1e-5)

    lp = prms["logprob"]
    scores, tokens = lp.score([Q], [TEXT], [ENDS])
    logp = out.logits[0].log_softmax(-1)
    token_lp = [float(logp[j - 1, ids[j]]) for j in range(len(ids))]
    answer_end = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e <= prefix][-1]
    bounds = [answer_end] + dots
    expect = [math.exp(sum(token_lp[bounds[k] + 1:bounds[k + 1] + 1]) / (bounds[k + 1] - bounds[k])) for k in range(3)]
    assert scores[0] == pytest.approx(expect, abs=1e-5)
    assert all(0 < s <= 1 for s in scores[0])
    assert tokens == [len(ids)]


@pytest.mark.parametrize("fmt", ALL)
def test_score_depends_on_prefix_and_follows_boundaries(prms, fmt):
    prm = prms[fmt]
    a, b, c = ENDS
    moved = TEXT.index(" 2 .") + 2  # first step ends after "x = 2" instead of "."
    questions = [Q] * 3
    texts = [TEXT, TEXT[:a], TEXT]
    ends = [[a, b, c], [a], [moved, b, c]]
    scores, tokens = prm.score(questions, texts, ends, batch_size=2)  # batched, padded
    assert [len(s) for s in scores] == [3, 1, 3]
    assert all(0 <= v <= 1 for row in scores for v in row)
    # causal: the first step's score depends only on the prefix (and not on padding)
    assert scores[0][0] == pytest.approx(scores[1][0], abs=1e-5)
    assert abs(scores[0][0] - scores[2][0]) > 1e-6
    assert tokens[1] < tokens[0]
    # scoring alone equals scoring in a batch
    alone, _ = prm.score([Q], [TEXT], [[moved, b, c]], batch_size=1)
    assert alone[0] == pytest.approx(scores[2], abs=1e-5)


@pytest.mark.parametrize("fmt", ALL)
def test_plain_path_one_forward_per_sample(prms, fmt):
    prm = prms[fmt]
    calls = []
    hook = prm.model.base_model.register_forward_pre_hook(lambda mod, args, kwargs: calls.append(1), with_kwargs=True)
    try:
        texts = [TEXT, TEXT[:ENDS[1]], TEXT[:ENDS[0]], TEXT, TEXT[:ENDS[1]]]
        scores, tokens = prm.score([Q] * 5, texts, [split_step_ends(t) for t in texts], batch_size=2,
                                   reuse_prefix=False)
    finally:
        hook.remove()
    assert len(calls) == math.ceil(5 / 2)
    assert [len(s) for s in scores] == [3, 2, 1, 3, 2]
    assert len(tokens) == 5


@pytest.mark.parametrize("fmt", ALL)
def test_errors_name_prm_and_sample(prms, fmt):
    prm = prms[fmt]
    with pytest.raises(ValueError, match=rf"{fmt}.*sample 1 has no step boundaries"):
        prm.score([Q, Q], [TEXT, TEXT], [ENDS, []])
    with pytest.raises(ValueError, match="sample 0"):
        prm.score([Q], [TEXT], [[ENDS[1], ENDS[0]]])

    def nan(mod, args, out):
        out.last_hidden_state = torch.full_like(out.last_hidden_state, float("nan"))
        return out

    hook = prm.model.base_model.register_forward_hook(nan)
    try:
        with pytest.raises(ValueError, match=rf"{fmt} PRM .*non-finite score nan at sample 0"):
            prm.score([Q], [TEXT], [ENDS])
    finally:
        hook.remove()
    assert prm.score([Q], [TEXT], [ENDS])[0][0][0] == prm.score([Q], [TEXT], [ENDS])[0][0][0]


@pytest.mark.parametrize("fmt,specials,options", [
    ("math-shepherd", ("<extra_0>",), {}),
    ("qwen-prm", ("ки", "<|im_start|>", "<|im_end|>"), {}),
    ("llemma-prm", SPECIALS, {"tag": "<step>"}),
    ("llemma-prm", ("<extra_0>",), {}),
    ("math-shepherd", SPECIALS, {"good": "yes"}),
])
def test_tokenizer_lacking_the_tag(tmp_path, fmt, specials, options):
    path = make_dir(tmp_path / "m", KIND[fmt], specials=specials)
    with pytest.raises(ValueError, match=rf"{fmt} PRM .*m: tokenizer lacks"):
        prm_pkg.load(fmt, path, device="cpu", **options)


def test_tag_not_at_its_place_names_the_sample(prms, monkeypatch):
    prm = prms["math-shepherd"]
    monkeypatch.setattr(prm, "tag_id", prm.tokenizer.convert_tokens_to_ids("step"))
    with pytest.raises(ValueError, match=r"math-shepherd PRM .*sample 0 step 0: the tag 'ки' is not a token"):
        prm.score([Q, Q], [TEXT, TEXT], [ENDS, ENDS])


def test_unknown_format_and_option(dirs):
    with pytest.raises(ValueError, match="unknown PRM format"):
        prm_pkg.load("nope", dirs["causal"])
    with pytest.raises(TypeError, match="unknown option"):
        prm_pkg.load("math-shepherd", dirs["causal"], device="cpu", bogus=1)
    assert set(prm_pkg.FORMATS) == set(ALL)


# ---------------------------------------------------------------- value head
def keyword_data(n, seed):
    rng = random.Random(seed)
    filler = "x y z = 2 3 4 add to get then so we have it".split()
    questions, texts, labels = [], [], []
    for i in range(n):
        label = i % 2
        word = "good" if label else "bad"
        lines = [" ".join(rng.choices(filler, k=rng.randint(2, 5)) + [word, "."]) for _ in range(rng.randint(1, 3))]
        lines.append("the answer is " + rng.choice("2345") + " .")
        texts.append("\n".join(lines))
        questions.append(" ".join(rng.choices(filler, k=3)))
        labels.append(label)
    return questions, texts, [split_step_ends(t) for t in texts], labels


def test_value_head_learns_and_round_trips(dirs, tmp_path):
    q, t, e, y = keyword_data(80, seed=1)
    head = prm_pkg.train_value_head(dirs["causal"], q, t, e, y, epochs=100, l2=1e-2, seed=0, device="cpu", batch_size=16)
    assert head.training["supervision"] == "outcome" and head.training["steps"] == sum(map(len, e))
    q2, t2, e2, y2 = keyword_data(60, seed=2)
    scores, _ = head.score(q2, t2, e2, batch_size=16)
    step_scores = [s for row in scores for s in row]
    step_labels = [label for row, label in zip(scores, y2) for _ in row]
    assert prm_pkg.auc(step_scores, step_labels) > 0.9

    head.save(tmp_path / "head")
    loaded = prm_pkg.load("value-head", str(tmp_path / "head"), device="cpu")
    assert loaded.prompt_template == head.prompt_template
    assert loaded.score(q2, t2, e2, batch_size=16)[0] == scores
    # a head belongs to its policy
    other = make_dir(tmp_path / "other", seed=1)
    (tmp_path / "other" / "config.json").write_text((tmp_path / "other" / "config.json").read_text() + " ")
    with pytest.raises(ValueError, match="identity"):
        prm_pkg.load("value-head", str(tmp_path / "head"), policy=other, device="cpu")


def test_value_head_finds_its_policy_after_the_folder_moves(dirs, tmp_path):
    import json
    import shutil

    results = tmp_path / "results"
    shutil.copytree(dirs["causal"], results / "models" / "policy")
    head = train_head(results / "models" / "policy")
    head.save(results / "prms" / "head")
    meta = json.loads((results / "prms" / "head" / "value_head.json").read_text())
    assert meta["policy"] == "../../models/policy"  # no absolute path in a results folder
    moved = shutil.move(results, tmp_path / "elsewhere")
    loaded = prm_pkg.load("value-head", str(Path(moved) / "prms" / "head"), device="cpu")
    assert Path(loaded.policy) == (Path(moved) / "models" / "policy").resolve()


def test_value_head_per_step_labels(dirs):
    q, t, e, _ = keyword_data(20, seed=3)
    per_step = [[1.0 if "good" in t_[s:e_] else 0.0 for s, e_ in zip([0] + ends[:-1], ends)]
                for t_, ends in zip(t, e)]
    head = prm_pkg.train_value_head(dirs["causal"], q, t, e, None, labels_per_step=per_step, epochs=10, device="cpu",
                                    prompt_template="Q: {question}\nA:\n")
    assert head.training["supervision"] == "per-step" and head.prompt_template == "Q: {question}\nA:\n"
    with pytest.raises(ValueError, match="sample 0 has"):
        prm_pkg.train_value_head(dirs["causal"], q, t, e, None, labels_per_step=[[1.0]] + per_step[1:], device="cpu")


def test_first_layers_is_the_full_models_hidden_state():
    from pipeline.prm.base import count_parameters, first_layers

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=1)).eval()
    ids = torch.randint(3, 64, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # right padding, as the PRMs batch
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        for k in (1, 2):
            cut = first_layers(model, k)
            out = cut.base_model(input_ids=ids, attention_mask=mask)
            assert torch.equal(out.last_hidden_state, full[k])  # unnormed, as transformers reports it
            assert len(out.past_key_values.layers) == k  # the cache holds only the layers that ran
            assert count_parameters(cut) < count_parameters(model)
        assert first_layers(model, 3) is model
    assert len(model.model.layers) == 3 and not isinstance(model.model.norm, torch.nn.Identity)  # untouched
    for bad in (0, 4):
        with pytest.raises(ValueError, match=f"layer {bad}: the policy has 3 decoder layers"):
            first_layers(model, bad)


def test_value_head_reads_a_middle_layer(dirs, tmp_path):
    q, t, e, y = keyword_data(40, seed=4)
    head = prm_pkg.train_value_head(dirs["causal"], q, t, e, y, epochs=20, device="cpu", batch_size=8, layer=1)
    whole = prm_pkg.train_value_head(dirs["causal"], q, t, e, y, epochs=20, device="cpu", batch_size=8)
    assert head.layer == head.training["layer"] == 1 and whole.layer is None
    assert head.num_parameters < whole.num_parameters  # FLOPs count only the blocks that run
    # the score is the logistic head on the policy's hidden_states[1] at the step tokens
    _, out = direct(prm_pkg.load("logprob", dirs["causal"], device="cpu").model, "Question: " + Q + "\nAnswer:\n" + TEXT)
    tok = make_tokenizer()
    enc = tok("Question: " + Q + "\nAnswer:\n" + TEXT, return_offsets_mapping=True)
    prefix = len("Question: " + Q + "\nAnswer:\n")
    dots = [i for i, (_, end) in enumerate(enc["offset_mapping"]) if end in {prefix + x for x in ENDS}]
    scores, _ = head.score([Q], [TEXT], [ENDS])
    assert scores[0] == pytest.approx(head.head(out.hidden_states[1][0][dots]).tolist(), abs=1e-5)
    assert scores[0] != pytest.approx(head.head(out.hidden_states[-1][0][dots]).tolist(), abs=1e-3)
    # prefix reuse and the plain path agree; the layer survives a save and load
    plain, _ = head.score(q, t, e, batch_size=8, reuse_prefix=False)
    reused, _ = head.score(q, t, e, batch_size=8)
    assert [v for r in reused for v in r] == pytest.approx([v for r in plain for v in r], abs=1e-5)
    head.save(tmp_path / "head")
    loaded = prm_pkg.load("value-head", str(tmp_path / "head"), device="cpu")
    assert loaded.layer == 1 and loaded.num_parameters == head.num_parameters
    assert loaded.score(q, t, e, batch_size=8)[0] == reused
    with pytest.raises(ValueError, match="layer 3: the policy has 2 decoder layers"):
        prm_pkg.train_value_head(dirs["causal"], q, t, e, y, epochs=1, device="cpu", layer=3)


def test_auc():
    assert prm_pkg.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert prm_pkg.auc([0.5, 0.5, 0.5], [0, 1, 1]) == pytest.approx(0.5)
    assert prm_pkg.auc([0.2, 0.2, 0.9], [False, True, True]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="both classes"):
        prm_pkg.auc([0.1, 0.2], [1, 1])


def test_metamath_sample_through_grading_steps_and_llemma_prm(tmp_path):
    """A sample as the paper's policies write it, through every stage that reads it."""
    import polars as pl

    from pipeline import score
    from pipeline.tasks import answers

    question = "What is 3 / 4 ?"
    text = "Step 1: We have 3 / 4 . ки\nStep 2: So x = 3 / 4 . ки\nThe answer is: \\frac{3}{4} ки"
    assert answers.extract_answer(text) == "\\frac{3}{4}"
    problems = pl.DataFrame({"problem_id": ["p"], "question": [question], "answer": ["0.75"], "metadata": ["{}"]})
    samples = pl.DataFrame({"problem_id": ["p"], "sample_idx": pl.Series([0], dtype=pl.Int32), "text": [text],
                            "step_ends": [split_step_ends(text)]})
    graded = answers.grade(samples, problems)
    assert graded["answer"].to_list() == ["3/4"] and graded["correct"].to_list() == [True]
    ends = split_step_ends(text)
    assert [text[:e].rsplit("\n", 1)[-1] for e in ends] == text.split("\n")  # one step per line, tag included

    prm = prm_pkg.load("llemma-prm", make_llemma_dir(tmp_path / "rm"), device="cpu")
    item = prm.encode(0, question, text, ends)
    assert item.input_ids.count(prm.tag_id) == 3  # the policy's three tags, none added
    assert [item.input_ids[p] for p in item.positions] == [prm.tag_id] * 3
    scored = score.score_samples(prm, "rm", samples, problems, batch_size=1)
    assert len(scored["scores"][0]) == 3 and all(0 < s < 1 for s in scored["scores"][0])
    assert scored["prm_tokens"][0] == len(prm.tokenizer(question + text)["input_ids"])
