"""Exact scoring of answers through a chat template: answer_distribution's option probabilities and
caption_logprob's image -> text likelihood, in one format, so the two agree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ...types import FairgenError
from ..protocols import OTHER
from .checks import check_batch, check_options


@dataclass(frozen=True)
class ChatFormat:
    """How a family asks its chat model a question: an optional system prompt, and a chat template for
    processors that ship without one (None: the processor's)."""

    system: str | None = None
    template: str | None = None

    def messages(self, question: str, image: bool) -> list[dict]:
        """The conversation up to the question: [system], user([<image>] question)."""
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": question}]
        system = [{"role": "system", "content": [{"type": "text", "text": self.system}]}] if self.system else []
        return [*system, {"role": "user", "content": content}]

    def continuation(self, processor: Any, messages: list[dict], answer: str) -> str:
        """What the chat template appends after the generation prompt when the assistant answers `answer`
        (e.g. " male" for Janus): the answer exactly as the model saw answers in training."""
        prefix = processor.apply_chat_template(messages, add_generation_prompt=True, chat_template=self.template)
        answered = messages + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        full = processor.apply_chat_template(answered, add_generation_prompt=False, chat_template=self.template)
        if not full.startswith(prefix):
            raise FairgenError("the chat template does not extend the prompt with the answer; cannot score answers")
        return full[len(prefix):]


def _chat_context(model: Any, chat: ChatFormat, messages: list[dict], images: Sequence[Image.Image], rows: int
                  ) -> dict[str, torch.Tensor]:
    """The processor's tensors for `rows` copies of the chat prompt (with images[i] in row i when given),
    on the model's device, pixel values in its dtype."""
    prompt = model.processor.apply_chat_template(messages, add_generation_prompt=True, chat_template=chat.template)
    context = model.processor(text=[prompt] * rows, images=[im.convert("RGB") for im in images] or None,
                              return_tensors="pt")
    context = {k: v.to(model.device) for k, v in context.items() if torch.is_tensor(v)}
    if "pixel_values" in context:
        context["pixel_values"] = context["pixel_values"].to(model.dtype)
    return context


def _answer_ids(model: Any, chat: ChatFormat, messages: list[dict], answer: str) -> list[int]:
    """Token ids of an answer as the assistant's turn, ending with end of sentence."""
    text = chat.continuation(model.processor, messages, answer)
    return model.tokenizer(text, add_special_tokens=False)["input_ids"] + [model.tokenizer.eos_token_id]


def answer_distribution(model: Any, chat: ChatFormat, image: Image.Image | None, question: str,
                        options: Sequence[str], family: str) -> dict[str, float]:
    """Exact probability of each option as the whole answer (its tokens and end of sentence) after the chat
    prompt and the image when given; renormalised over the options, the mass outside them under OTHER.
    model: a transformers family's adapter (hf, processor, tokenizer, device, dtype)."""
    check_options(family, options)
    messages = chat.messages(question, image is not None)
    context = _chat_context(model, chat, messages, [image] if image is not None else [], 1)
    continuations = [_answer_ids(model, chat, messages, o) for o in options]
    logprobs = option_logprobs(model.hf, context, continuations, model.tokenizer.pad_token_id)
    return option_distribution(options, logprobs, OTHER)


def caption_logprob(model: Any, chat: ChatFormat, images: Sequence[Image.Image], texts: Sequence[str],
                    question: str, family: str) -> torch.Tensor:
    """Mean per-token log-probability (float32 [B]) of texts[i] as the answer to `question` about images[i],
    scored as answer_distribution scores an option (right-padded after the equal-length prompts), with
    gradients w.r.t. the language model."""
    check_batch(family, images, texts, "texts")
    messages = chat.messages(question, True)
    inputs = _chat_context(model, chat, messages, images, len(texts))
    answers = [_answer_ids(model, chat, messages, t) for t in texts]
    cont, valid = pad_continuations(answers, model.tokenizer.pad_token_id, inputs["input_ids"])
    longest = cont.shape[1]
    inputs["input_ids"] = torch.cat([inputs["input_ids"], cont], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], valid.long()], dim=1)
    logits = model.hf(**inputs, logits_to_keep=longest + 1).logits[:, :longest]
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, cont.unsqueeze(-1)).squeeze(-1)
    return (logp * valid).sum(-1) / valid.sum(-1)


def pad_continuations(continuations: list[list[int]], pad_id: int, like: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded with pad_id: (ids [K, longest] in like's dtype and device, valid [K, longest]
    bool, False on padding)."""
    longest = max(len(c) for c in continuations)
    cont = torch.full((len(continuations), longest), pad_id, dtype=like.dtype, device=like.device)
    valid = torch.zeros((len(continuations), longest), dtype=torch.bool, device=like.device)
    for i, c in enumerate(continuations):
        cont[i, :len(c)] = torch.tensor(c, dtype=like.dtype)
        valid[i, :len(c)] = True
    return cont, valid


def option_logprobs(model: Any, context: dict[str, torch.Tensor], continuations: list[list[int]],
                    pad_id: int) -> torch.Tensor:
    """Log-probability (float64 [K]) of each token continuation after one context, in one batched forward.

    context: the processor's output for one row (input_ids [1, L], attention_mask, pixel_values, ...),
    on the model's device. Rows are the context followed by a continuation, right-padded, so every row's
    positions are those of an unpadded sequence. No gradients (a with block rather than a decorator, which
    would keep the mutation run of docs/testing.md from mutating this function).
    """
    k = len(continuations)
    cont, valid = pad_continuations(continuations, pad_id, context["input_ids"])
    longest = cont.shape[1]
    inputs = {name: t.repeat(k, *[1] * (t.dim() - 1)) for name, t in context.items() if torch.is_tensor(t)}
    inputs["input_ids"] = torch.cat([inputs["input_ids"], cont], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], valid.long()], dim=1)
    # Logits only where a continuation token is predicted: the last context position onwards.
    with torch.no_grad():
        logits = model(**inputs, logits_to_keep=longest + 1).logits[:, :longest]
    logp = torch.log_softmax(logits.double(), dim=-1).gather(-1, cont.unsqueeze(-1)).squeeze(-1)
    return (logp * valid).sum(-1)


def option_distribution(options: Sequence[str], logprobs: torch.Tensor, other_key: str) -> dict[str, float]:
    """{option: probability renormalised over the options, other_key: mass outside all of them}."""
    total = torch.logsumexp(logprobs, dim=0)
    out = {o: float(torch.exp(lp - total)) for o, lp in zip(options, logprobs)}
    out[other_key] = float(max(0.0, 1.0 - torch.exp(total).item()))
    return out
