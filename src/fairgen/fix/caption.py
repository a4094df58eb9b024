"""Image -> text log-probabilities: what `--method understanding-sft` (the paper's "FT image->text") trains.

    caption_logprob(model, images, texts) -> Tensor[B]
        mean log-probability per token of each text as the model's answer to CAPTION_QUESTION about its
        image (the text's tokens and the end of the answer), differentiable with respect to the language
        model and any LoRA adapter on it.

A model provides it through a `caption_logprob(images, texts)` method (the protocol's way, for plugins:
list "caption" in capabilities), else fairgen scores it here for the built-in families that understand
images, in exactly the format their answer_distribution scores an answer in:
    tiny    <bos> <boi> img <eoi> question <ans> text <eos>
    janus   the chat prompt "<|User|>: <image>\\n{question}\\n\\n<|Assistant|>:" then " {text}" and end of sentence
    emu3    "You are a helpful assistant. USER: <image>{question} ASSISTANT:" then " {text}" and end of sentence
So exp(caption_logprob * n_tokens) of a one-option answer is answer_distribution's raw mass for it (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..models import split_spec
from ..types import FairgenError

CAPTION_QUESTION = "Describe the image."
FAMILIES = ("tiny", "janus", "emu3")


def can_caption(model: Any) -> bool:
    """Whether caption_logprob can score this model: its own method, or a built-in family here."""
    return hasattr(model, "caption_logprob") or split_spec(model.spec)[0] in FAMILIES


def caption_logprob(model: Any, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
    """Mean per-token log-probability (float32 [B], on the model's device) of texts[i] as the answer to
    CAPTION_QUESTION about images[i]; differentiable w.r.t. the language model (module docstring)."""
    if len(images) != len(texts) or not texts:
        raise FairgenError(f"caption_logprob: {len(images)} images but {len(texts)} texts")
    if hasattr(model, "caption_logprob"):
        return model.caption_logprob(images, texts)
    family = split_spec(model.spec)[0]
    if family == "tiny":
        return _tiny(model, images, texts)
    if family == "janus":
        return _chat(model, images, texts, [], None)
    if family == "emu3":
        from ..models.emu3 import CHAT_TEMPLATE, SYSTEM_PROMPT

        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}]
        return _chat(model, images, texts, messages, model.processor.chat_template or CHAT_TEMPLATE)
    raise FairgenError(f"model {model.spec} cannot score captions: it has no caption_logprob(images, texts)")


def _tiny(model: Any, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
    """fairgen-tiny: the understanding format of models/tiny/text.py, left-padded as answer_distribution does."""
    from ..models.tiny.text import left_pad

    vocab, lm = model.vocab, model.lm
    codes = model.encode_image(list(images))
    answers = [vocab.answer(t) for t in texts]
    rows = [vocab.question_prefix(c, CAPTION_QUESTION) + a for c, a in zip(codes, answers)]
    if max(len(r) for r in rows) > lm.cfg.block_size:
        raise FairgenError(f"caption too long for fairgen-tiny (at most {lm.cfg.block_size} tokens with the image)")
    ids, valid, pos, img = left_pad(rows, vocab, model.device)
    logp = torch.log_softmax(lm(ids, pos, img, valid)[:, :-1].float(), dim=-1)
    token_logp = logp.gather(2, ids[:, 1:, None]).squeeze(2)  # [B, L-1]: log p of token t+1
    length = ids.shape[1]
    n = torch.tensor([len(a) for a in answers], device=ids.device)
    scored = torch.arange(1, length, device=ids.device)[None, :] >= (length - n)[:, None]  # the answer tokens
    return (token_logp * scored).sum(1) / n


def _chat(model: Any, images: Sequence[Image.Image], texts: Sequence[str], messages: list[dict],
          template: str | None) -> torch.Tensor:
    """Janus / Emu3: the chat prompt with the image, then each text as the assistant's answer, right-padded
    after the (equal-length) prompts, as models/hf_common.option_logprobs scores options, with gradients."""
    from ..models.hf_common import continuation_text, pad_continuations

    processor, tokenizer = model.processor, model.tokenizer
    asked = messages + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CAPTION_QUESTION}]}]
    prompt = processor.apply_chat_template(asked, add_generation_prompt=True, chat_template=template)
    context = processor(text=[prompt] * len(texts), images=[im.convert("RGB") for im in images], return_tensors="pt")
    inputs = {k: v.to(model.device) for k, v in context.items() if torch.is_tensor(v)}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    answers = [tokenizer(continuation_text(processor, asked, t, template), add_special_tokens=False)["input_ids"]
               + [tokenizer.eos_token_id] for t in texts]
    cont, valid = pad_continuations(answers, tokenizer.pad_token_id, inputs["input_ids"])
    longest = cont.shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], cont], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], valid.long()], dim=1)
    logits = model.hf(**inputs, logits_to_keep=longest + 1).logits[:, :longest]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, cont.unsqueeze(-1)).squeeze(-1)
    return (logp * valid).sum(-1) / valid.sum(-1)
