"""PRMs that read a score at a step tag inserted after every step.

math-shepherd  (peiyi9979/math-shepherd-mistral-7b-prm) a causal LM. Input
               `question + " " + solution` with " ки" inserted at every step end (the
               solution's own newlines kept); a step that already ends with " ки" (a
               policy trained on Math-Shepherd-style data writes the tags itself) keeps
               its own tag and gets no second one. Score = P("+") of the softmax over the
               logits of the "+" and "-" tokens at each "ки" position. Token ids come
               from the tokenizer, as the reference code does: the tag is the last token
               of `tag_sep + tag` (" ки" -> "▁ки" with the Mistral tokenizer), "+"/"-" are
               the two tokens of f"{good} {bad}". Options: tag, tag_sep, good, bad,
               question_sep.
qwen-prm       (Qwen/Qwen2.5-Math-PRM-7B) the chat template with the system prompt
               below, the question as the user turn and the stripped steps as the
               assistant turn, "<extra_0>" after every step, the last included. The model
               returns 2 logits per position (remote code Qwen2ForProcessRewardModel,
               loaded with AutoModel + trust_remote_code unless the config names a class
               transformers has); score = softmax(logits)[1] at each "<extra_0>".
               Options: system, tag.
llemma-prm     (tkitsers/Llemma-reward-model, the reward model of Wu et al.'s inference
               scaling paper) as the paper's code scores it (thu-wyz/inference_scaling
               hf_score.py, and its SGLang fork's reward server):
               * the checkpoint is a plain causal LM (LlamaForCausalLM): training put a
                 2-output head on Llemma and `convert_checkpoint_to_hf.py` copied its two
                 rows across every vocabulary row of lm_head;
               * input `question + solution`, no template, no separator (the policy's
                 prompt for these "llemma" policies is the raw problem text; for GSM8K
                 the reference prompt is `question + "\n"`: set template "{question}\n").
                 The question is stripped of outer whitespace, as pipeline.core.prompts.render
                 strips it for the policy, so the PRM reads exactly the policy's prompt;
               * score = sigmoid(mean over the vocabulary of the logits) at the tag
                 token, the last token of `tokenizer.encode(" ки")` (the reference's
                 `step_tag_id`). The mean is computed without vocabulary-sized logits:
                 mean_v(W_v . h + b_v) = h . mean_v(W_v) + mean_v(b_v), with h the final
                 (normed) hidden state;
               * the policies (MetaMath-style Llemma fine-tunes) write "Step k: ... ки"
                 and "The answer is: X ки" themselves: a step that ends with " ки" is
                 scored at its own tag; a step without one gets " ки" appended (the
                 reference scores only the tags the policy wrote: see README).
               One score per step (a step with several tags is read at its last, as the
               reference's tree search reads the last score of a new step).
               Options: tag ("ки"), tag_sep (" "), template ("{question}").

Common options: device (default cuda when available), dtype (bfloat16 on CUDA, float32
on CPU), tokenizer (a different tokenizer path), revision, trust_remote_code;
`_loaded=(model, tokenizer)` wraps a model built by the caller (benchmarks/gpu_prm.py:
random weights of a named shape).
"""

from __future__ import annotations

from typing import Any

from pipeline.core.prompts import split_steps
from pipeline.prm import positions as P
from pipeline.prm.base import (
    HFPRM,
    Encoded,
    count_parameters,
    head_logits,
    last_hidden_state,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    split_body,
)


class TaggedPRM(HFPRM):
    format = ""
    default_model = ""
    auto_class = "AutoModelForCausalLM"
    default_trust_remote_code = False

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        dtype: Any = None,
        tokenizer: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool | None = None,
        _loaded: tuple[Any, Any] | None = None,
        **options: Any,
    ) -> None:
        self.name = str(model or self.default_model)
        if _loaded is not None:  # (model, tokenizer) built by the caller: benchmarks/gpu_prm.py
            self.model, self.tokenizer = _loaded
            self.device = str(next(self.model.parameters()).device)
            self.configure(**options)
            self.num_parameters = count_parameters(self.model)
            return
        self.device = resolve_device(device)
        remote = self.default_trust_remote_code if trust_remote_code is None else bool(trust_remote_code)
        self.tokenizer = load_tokenizer(tokenizer or self.name, revision=revision, trust_remote_code=remote)
        self.configure(**options)  # checks the tag before the (large) model loads
        self.model = load_model(
            self.name, self.auto_class, device=self.device, dtype=resolve_dtype(dtype, self.device),
            revision=revision, trust_remote_code=remote,
        )
        self.num_parameters = count_parameters(self.model)

    def configure(self, **options: Any) -> None:
        if options:
            raise TypeError(f"{self.format} PRM: unknown option(s) {sorted(options)}")

    # -- token checks -------------------------------------------------------------
    def _lacks(self, what: str) -> ValueError:
        return ValueError(f"{self.format} PRM {self.name}: tokenizer lacks {what}")

    def _single_token(self, text: str, context: str = "") -> int:
        """The id of `text` as the last token of `context + text`; it must decode to it."""
        ids = self.tokenizer.encode(context + text, add_special_tokens=False)
        if not ids or ids[-1] == self.tokenizer.unk_token_id:
            raise self._lacks(f"the token {text!r}")
        if self.tokenizer.decode([ids[-1]]).strip() != text.strip():
            raise self._lacks(f"the token {text!r} (it encodes as {self.tokenizer.convert_ids_to_tokens(ids)})")
        return int(ids[-1])

    def _encode_tagged(self, index: int, full: str, spans, tag_id: int | None, add_special_tokens: bool, tag: str) -> Encoded:
        enc = self.tokenizer(full, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        found = P.tag_token_positions(enc["offset_mapping"], spans, ids, tag_id)
        for k, p in enumerate(found):
            if p < 0:
                raise self.error(index, f"step {k}: the tag {tag!r} is not a token of the encoded input "
                                        "(the tokenizer lacks it or merged it with its neighbours)")
        return Encoded(ids, found)


class MathShepherdPRM(TaggedPRM):
    format = "math-shepherd"
    default_model = "peiyi9979/math-shepherd-mistral-7b-prm"
    auto_class = "AutoModelForCausalLM"

    def configure(self, *, tag: str = "ки", tag_sep: str = " ", good: str = "+", bad: str = "-",
                  question_sep: str = " ", **options: Any) -> None:
        super().configure(**options)
        self.tag, self.tag_sep, self.question_sep = tag, tag_sep, question_sep
        # the tag's id as it tokenizes after a step ("1 ки" -> "▁1", "▁ки" with SentencePiece)
        self.tag_id = self._single_token(tag, "1" + tag_sep)
        ids = [i for i in self.tokenizer.encode(f"{good} {bad}", add_special_tokens=False)
               if self.tokenizer.decode([i]).strip()]
        if len(ids) != 2 or [self.tokenizer.decode([i]).strip() for i in ids] != [good.strip(), bad.strip()]:
            raise self._lacks(f"single tokens for {good!r} and {bad!r}")
        self.good_id, self.bad_id = int(ids[0]), int(ids[1])

    def encode(self, index, question, text, step_ends):
        solution, spans = P.tag_steps(text, step_ends, self.tag, self.tag_sep)
        head = question + self.question_sep
        spans = [(s + len(head), e + len(head)) for s, e in spans]
        return self._encode_tagged(index, head + solution, spans, self.tag_id, True, self.tag)

    def forward(self, input_ids, attention_mask):
        return last_hidden_state(self.model, input_ids, attention_mask)

    def split_forward(self):
        return split_body(self.model)

    def read(self, out, row, item):
        hidden = out[row, item.positions]
        logits = self.model.get_output_embeddings()(hidden).float()
        return logits[:, [self.good_id, self.bad_id]].softmax(dim=-1)[:, 0]


class _TwoLogitPRM(TaggedPRM):
    def split_forward(self):
        # the token-classification head (LlamaForTokenClassification, the Qwen PRM's
        # remote code: `score`) on the body's hidden states (dropout is off in eval);
        # a subclass with its own `forward` computes something else: plain path
        head = getattr(self.model, "score", None)
        if type(self).forward is not _TwoLogitPRM.forward or not callable(head):
            return None
        return split_body(self.model, lambda hidden: self._checked(head(hidden)))

    def forward(self, input_ids, attention_mask):
        return self._checked(head_logits(self.model, input_ids, attention_mask))

    def _checked(self, logits):
        if logits.dim() != 3 or logits.shape[-1] != 2:
            raise ValueError(f"{self.format} PRM {self.name}: expected logits [batch, seq, 2], "
                             f"got {tuple(logits.shape)} from {type(self.model).__name__}")
        return logits


class QwenPRM(_TwoLogitPRM):
    format = "qwen-prm"
    default_model = "Qwen/Qwen2.5-Math-PRM-7B"
    auto_class = "AutoModel"
    default_trust_remote_code = True
    SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

    def configure(self, *, system: str = SYSTEM, tag: str = "<extra_0>", **options: Any) -> None:
        super().configure(**options)
        self.system, self.tag = system, tag
        self.tag_id = self._single_token(tag)
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"{self.format} PRM {self.name}: tokenizer has no chat template")

    def encode(self, index, question, text, step_ends):
        content, _ = P.join_with_tags(split_steps(text, step_ends), self.tag)
        messages = [
            {"role": "system", "content": self.system},
            {"role": "user", "content": question},
            {"role": "assistant", "content": content},
        ]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        spans = P.find_last_occurrences(rendered, self.tag, len(step_ends))
        if spans is None:
            raise self.error(index, f"the chat template dropped {self.tag!r} tags")
        return self._encode_tagged(index, rendered, spans, self.tag_id, False, self.tag)

    def read(self, out, row, item):
        return out[row, item.positions].float().softmax(dim=-1)[:, 1]


class LlemmaPRM(TaggedPRM):
    format = "llemma-prm"
    default_model = "tkitsers/Llemma-reward-model"
    auto_class = "AutoModelForCausalLM"

    def __init__(self, model: str | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        import torch

        head = self.model.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise ValueError(f"{self.format} PRM {self.name}: {type(self.model).__name__} has no language-model "
                             "head; the paper's reward model is a causal LM (LlamaForCausalLM)")
        if getattr(self.model.config, "final_logit_softcapping", None):
            raise ValueError(f"{self.format} PRM {self.name}: logit soft-capping makes the mean of the logits "
                             "non-linear in the hidden state; not supported")
        with torch.no_grad():
            # float32 accumulation: the mean of ~32k rows in bfloat16 would lose digits
            self.row_mean = head.weight.mean(dim=0, dtype=torch.float32)
            bias = getattr(head, "bias", None)
            self.bias_mean = (bias.mean(dtype=torch.float32) if bias is not None
                              else torch.zeros((), device=head.weight.device))

    def configure(self, *, tag: str = "ки", tag_sep: str = " ", template: str = "{question}", **options: Any) -> None:
        super().configure(**options)
        if "{question}" not in template:
            raise ValueError(f"{self.format} PRM: template must contain {{question}}")
        self.tag, self.tag_sep, self.template = tag, tag_sep, template
        # hf_score.py: step_tag_id = tokenizer.encode(f" {step_tag}")[-1]
        self.tag_id = self._single_token(tag, tag_sep)

    def encode(self, index, question, text, step_ends):
        head = self.template.replace("{question}", question.strip())
        solution, spans = P.tag_steps(text, step_ends, self.tag, self.tag_sep)
        spans = [(s + len(head), e + len(head)) for s, e in spans]
        return self._encode_tagged(index, head + solution, spans, self.tag_id, True, self.tag)

    def forward(self, input_ids, attention_mask):
        return last_hidden_state(self.model, input_ids, attention_mask)

    def split_forward(self):
        return split_body(self.model)

    def read(self, out, row, item):
        hidden = out[row, item.positions].float()
        return (hidden @ self.row_mean + self.bias_mean).sigmoid()
