"""The word-level tokenizer the PRM tests build their tiny models with (tests/test_prm.py,
tests/test_prefix.py): every word of `words`, "+", "-" and "\\n" is a token, spaces are
dropped, ".", "=", "#" stand alone, `specials` are special tokens, "<s>" is prepended and
the chat template is a ChatML one. `merge_dot_newline` makes ".\\n" ONE token, so a text
ending in "." and its continuation ".\\n..." share no last token (what prefix reuse must
handle)."""

SPECIALS = ("ки", "<extra_0>", "<|im_start|>", "<|im_end|>")
CHAT = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def word_tokenizer(words, *, specials=SPECIALS, merge_dot_newline: bool = False):
    import transformers
    from tokenizers import AddedToken, Regex, Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing

    vocab = {"[UNK]": 0, "[PAD]": 1, "<s>": 2, "+": 3, "-": 4, "\n": 5}
    if merge_dot_newline:
        vocab[".\n"] = 6
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior="removed"),
        pre_tokenizers.Split(Regex(r"\.\n|\n|[.=+#\-]" if merge_dot_newline else r"\n|[.=+#\-]"),
                             behavior="isolated"),
    ])
    tk.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tk.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>")
    tok.chat_template = CHAT
    return tok
