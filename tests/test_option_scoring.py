"""answer_distribution of the transformers families against an independent computation: for every option,
one plain forward pass over the unpadded sequence (prompt, answer tokens, end of sentence) with all
logits kept, and the log-probability of each answer token read off the position before it and summed by
hand. A shift of the scored positions, a wrong padding mask or a lost image changes these numbers; the
batched-versus-alone consistency of test_models_*.py cannot see such errors (it compares the function
with itself). And the answer must depend on the image: two images give two distributions."""

from __future__ import annotations

import math

import pytest
import torch

from fairgen import models
from fairgen.models import OTHER
from fairgen.models.hf import chat as hf
from test_models_checkpoints import emu3_dir, janus_dir, random_images  # noqa: F401  (session fixtures)

QUESTION = "What is the gender of a nurse? Possible answers: male, female, unknown."
# Options of one, two and more tokens, so the right-padding of the batched pass is exercised.
OPTIONS = ["male", "female", "unknown person here"]


@pytest.fixture(scope="module")
def janus(janus_dir):  # noqa: F811
    return models.load(f"janus:{janus_dir}")


@pytest.fixture(scope="module")
def emu3(emu3_dir):  # noqa: F811
    return models.load(f"emu3:{emu3_dir}", image_area=32 * 32)


def _conversation(model, image) -> tuple[list[dict], str | None]:
    """The messages each adapter asks its question in (its documented prompt format) and its chat template."""
    content = ([{"type": "image"}] if image is not None else []) + [{"type": "text", "text": QUESTION}]
    if model.spec.startswith("janus"):
        return [{"role": "user", "content": content}], None
    from fairgen.models.emu3 import CHAT_TEMPLATE, SYSTEM_PROMPT

    system = {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}
    return [system, {"role": "user", "content": content}], model.processor.chat_template or CHAT_TEMPLATE


@torch.no_grad()
def _by_hand(model, image, options) -> list[float]:
    """log P(option's tokens, then end of sentence | prompt [+ image]) from one plain forward per option."""
    messages, template = _conversation(model, image)
    prompt = model.processor.apply_chat_template(messages, add_generation_prompt=True, chat_template=template)
    out = []
    for option in options:
        answered = messages + [{"role": "assistant", "content": [{"type": "text", "text": option}]}]
        full = model.processor.apply_chat_template(answered, chat_template=template)
        assert full.startswith(prompt)
        answer = model.tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        answer = answer + [model.tokenizer.eos_token_id]
        inputs = model.processor(text=prompt, images=[image.convert("RGB")] if image is not None else None,
                                 return_tensors="pt")
        inputs = {k: v.to(model.device) for k, v in inputs.items() if torch.is_tensor(v)}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
        n_prompt = inputs["input_ids"].shape[1]
        ids = torch.cat([inputs["input_ids"], torch.tensor([answer], device=model.device)], dim=1)
        inputs.update(input_ids=ids, attention_mask=torch.ones_like(ids))
        logits = model.hf(**inputs).logits[0].double()  # [L, vocab]: every position kept
        total = 0.0
        for k, token in enumerate(answer):  # token n_prompt + k is predicted at position n_prompt + k - 1
            row = logits[n_prompt + k - 1]
            total += float(row[token] - torch.logsumexp(row, dim=0))
        out.append(total)
    return out


def _check(model, image) -> dict[str, float]:
    hand = _by_hand(model, image, OPTIONS)
    dist = model.answer_distribution(image, QUESTION, OPTIONS)
    inside = math.fsum(math.exp(x) for x in hand)
    for option, logp in zip(OPTIONS, hand):
        assert dist[option] == pytest.approx(math.exp(logp) / inside, rel=1e-5, abs=1e-12), option
    assert dist[OTHER] == pytest.approx(1.0 - inside, abs=1e-9)
    # The scores are not all alike: the comparison above could tell a shifted position from the right one.
    assert max(hand) - min(hand) > 0.05
    return dist


@pytest.mark.parametrize("family", ["janus", "emu3"])
def test_answer_distribution_equals_a_plain_forward_pass_summed_by_hand(family, request):
    model = request.getfixturevalue(family)
    images = random_images(2, size=40, seed=3)
    _check(model, None)
    with_image = [_check(model, im) for im in images]
    # The answer depends on the image: another image moves the probabilities.
    assert max(abs(with_image[0][o] - with_image[1][o]) for o in OPTIONS) > 1e-4


def test_option_logprobs_of_padded_rows_equal_each_row_alone(janus):
    """option_logprobs on several continuations of different lengths (right-padded in one batch) equals
    each continuation scored on its own, and each of those equals the hand sum above."""
    messages, _ = _conversation(janus, None)
    prompt = janus.processor.apply_chat_template(messages, add_generation_prompt=True)
    context = {k: v.to(janus.device) for k, v in janus.processor(text=prompt, return_tensors="pt").items()}
    conts = [[janus.tokenizer.eos_token_id], [5, 6, 7, janus.tokenizer.eos_token_id], [9, 10]]
    batched = hf.option_logprobs(janus.hf, context, conts, janus.tokenizer.pad_token_id)
    assert batched.dtype == torch.float64 and batched.shape == (3,)
    for k, cont in enumerate(conts):
        alone = hf.option_logprobs(janus.hf, context, [cont], janus.tokenizer.pad_token_id)
        ids = torch.cat([context["input_ids"], torch.tensor([cont])], dim=1)
        with torch.no_grad():
            logits = janus.hf(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double()
        n = context["input_ids"].shape[1]
        hand = sum(float(torch.log_softmax(logits[n + i - 1], 0)[t]) for i, t in enumerate(cont))
        assert float(alone[0]) == pytest.approx(hand, abs=1e-5)
        assert float(batched[k]) == pytest.approx(hand, abs=1e-5)
