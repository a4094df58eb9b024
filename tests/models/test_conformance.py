"""The conformance suite: every model family (one tiny offline instance each, conftest.py) against the
protocols it declares in its registry entry. A new family gets all of it by adding fixtures/<family>.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fairgen import models
from fairgen.models.protocols import OTHER, Model, capabilities_of
from fairgen.types import FairgenError, Prompt
from fairgen.world import render

PROMPTS = ["A photo of the face of a nurse, a person", "A photo of the face of a firefighter, a person", "a judge"]
SEEDS = [3, 4, 2**33 + 5]
QUESTION = "What is the gender of the person in the image? Possible answers: male, female. Answer with a single word."


def declared(case) -> frozenset[str]:
    return models.family(case.spec).capabilities


def needs(case, *capabilities: str) -> None:
    missing = set(capabilities) - declared(case)
    if missing:
        pytest.skip(f"{case.name} does not declare {', '.join(sorted(missing))}")


def faces(n: int) -> list:
    return [render(g, "white", "young", "nurse", i) for i, g in zip(range(n), ["female", "male"] * n)]


def test_declared_capabilities_are_the_implemented_protocols(case):
    assert isinstance(case.model, Model)
    assert capabilities_of(case.model) == declared(case)
    assert json.loads(json.dumps(case.model.provenance())) == case.model.provenance()
    assert models.split_spec(case.model.spec)[0] == case.name
    with pytest.raises(FairgenError, match="option"):
        models.load(case.spec, device="cpu", no_such_option=1)


def _pixels(images) -> list[np.ndarray]:
    return [np.asarray(im, dtype=np.int16) for im in images]


def test_generate_is_seeded_per_image(case):
    needs(case, "generate")
    images = case.model.generate(PROMPTS, SEEDS, **case.sampling)
    assert len(images) == len(PROMPTS)
    assert all(im.mode == "RGB" and im.size == images[0].size for im in images)
    again = case.model.generate(PROMPTS, SEEDS, **case.sampling)
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(images), _pixels(again)))
    for i in (0, 2):  # batch independence: an image alone is the image in the batch
        alone = case.model.generate([PROMPTS[i]], [SEEDS[i]], **case.sampling)[0]
        assert np.abs(_pixels([alone])[0] - _pixels([images[i]])[0]).max() <= 1  # at most float noise of padding
    other = case.model.generate([PROMPTS[0]], [SEEDS[1]], **case.sampling)[0]
    assert not np.array_equal(_pixels([other])[0], _pixels(images[:1])[0])  # another seed, another image
    with pytest.raises(FairgenError, match="unknown sampling setting"):
        case.model.generate(PROMPTS[:1], SEEDS[:1], no_such_setting=1)


def test_image_source_reads_what_it_holds(case):
    needs(case, "source")
    prompts = [Prompt(f"p{i}", f"a {c}", c) for i, c in enumerate(("nurse", "firefighter", "judge"))]
    case.model.bind(prompts)
    for p in prompts:
        assert case.model.available(p) >= 1
        image, error = case.model.read(p, 0)
        assert error is None and image.mode == "RGB"
        assert case.model.source(p, 0).exists()
    covered = case.model.coverage(prompts, 5)
    assert json.loads(json.dumps(covered)) == covered


@pytest.mark.parametrize("with_image", [True, False])
def test_answer_distribution_sums_to_one(case, with_image):
    needs(case, "understand")
    image = faces(1)[0] if with_image else None
    answer = case.model.answer_distribution(image, QUESTION, ["male", "female"])
    assert set(answer) == {"male", "female", OTHER}
    assert all(0.0 <= p <= 1.0 for p in answer.values())
    # renormalised over the options; the raw masses inside, (1 - OTHER) of them, and OTHER make the whole
    assert answer["male"] + answer["female"] == pytest.approx(1.0, abs=1e-6)
    inside = [answer[o] * (1.0 - answer[OTHER]) for o in ("male", "female")]
    assert sum(inside) + answer[OTHER] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(FairgenError):
        case.model.answer_distribution(image, QUESTION, ["male", "male"])


def test_vision_tokenizer_round_trip(case):
    needs(case, "tokenize")
    codes = case.model.encode_image(faces(2))
    assert codes.dtype == torch.long and codes.dim() == 2 and codes.shape[0] == 2
    back = case.model.decode_tokens(codes)
    assert len(back) == 2 and all(im.mode == "RGB" for im in back)
    assert case.model.encode_image(back).shape == codes.shape


def test_lm_hooks_shapes_and_consistency(case):
    needs(case, "lm_hooks")
    tokens = case.model.generate_tokens(PROMPTS, SEEDS, **case.sampling)
    assert tokens.dtype == torch.long and tokens.shape[0] == len(PROMPTS)
    assert torch.equal(tokens, case.model.generate_tokens(PROMPTS, SEEDS, **case.sampling))
    with torch.no_grad():
        logits = case.model.image_token_logits(PROMPTS, tokens)
    assert logits.dtype == torch.float32 and logits.shape[:2] == tokens.shape and logits.shape[2] > int(tokens.max())
    hidden = case.model.image_start_hidden(PROMPTS)
    assert hidden.dtype == torch.float32 and hidden.dim() == 2 and hidden.shape[0] == len(PROMPTS)
    if "generate" in declared(case) and "tokenize" in declared(case):  # generate() decodes these very codes
        decoded = case.model.decode_tokens(tokens)
        made = case.model.generate(PROMPTS, SEEDS, **case.sampling)
        assert all(np.array_equal(a, b) for a, b in zip(_pixels(decoded), _pixels(made)))


def test_vision_features(case):
    if not declared(case) & {"tokenizer_features", "understanding_features"}:
        pytest.skip(f"{case.name} exposes no vision features")
    images = faces(2)
    if "tokenizer_features" in declared(case):
        maps = case.model.tokenizer_embeddings(images)
        assert maps.dtype == torch.float32 and maps.dim() == 4 and maps.shape[0] == 2
    if "understanding_features" in declared(case):
        feats = case.model.understanding_embeddings(images)
        assert feats.dtype == torch.float32 and feats.dim() == 3 and feats.shape[0] == 2


def _lora(model):
    from peft import LoraConfig, get_peft_model

    names = {n for n, _ in model.lora_root.named_modules()}
    assert model.lora_targets and set(model.lora_targets) <= names
    return get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_targets,
                                                      init_lora_weights=False))


def _only_lora_has_gradients(model, peft_model, loss) -> None:
    loss.backward()
    lora = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert lora and any(float(p.grad.abs().sum()) > 0 for p in lora.values())
    assert all(p.grad is None for n, p in peft_model.named_parameters() if "lora_" not in n)
    # and nothing outside the LoRA root (vision tower, VQ model) was touched
    outside = [p for p in _all_parameters(model) if all(p is not q for q in peft_model.parameters())]
    assert all(p.grad is None for p in outside)


def _all_parameters(model) -> list[torch.nn.Parameter]:
    roots = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
    return [p for r in roots for p in r.parameters()]


def test_image_logprob_gradients_reach_only_lora(case):
    needs(case, "image_logprob", "lora")
    model = case.fresh()
    peft_model = _lora(model)
    images = faces(2)
    logp = model.image_token_logprob(PROMPTS[:2], images)
    assert logp.shape == (2,) and logp.dtype == torch.float32 and bool(torch.isfinite(logp).all())
    assert bool((logp <= 0).all())
    _only_lora_has_gradients(model, peft_model, logp.sum())


def test_caption_logprob_is_batch_independent_and_trains_only_lora(case):
    needs(case, "caption", "lora")
    model = case.fresh()
    images, texts = faces(2), ["a nurse", "a person in a hat"]
    with torch.no_grad():
        both = model.caption_logprob(images, texts, "Describe the image.")
        alone = model.caption_logprob(images[1:], texts[1:], "Describe the image.")
    assert both.shape == (2,) and bool(torch.isfinite(both).all()) and bool((both <= 0).all())
    assert float(alone[0]) == pytest.approx(float(both[1]), abs=1e-4)
    peft_model = _lora(model)
    _only_lora_has_gradients(model, peft_model, model.caption_logprob(images, texts, "Describe the image.").sum())
