"""emu3: a tiny random Emu3 saved with save_pretrained and loaded back through `emu3:<dir>`."""

from __future__ import annotations

import pytest
import torch

from fairgen import models
from fairgen.models import OTHER
from fairgen.types import FairgenError
from test_models_checkpoints import EMU3_CODES, emu3_dir, janus_dir, random_images  # noqa: F401  (session fixtures)

PROMPTS = ["A photo of the face of a nurse, a person", "a firefighter"]
AREA = 32 * 32  # a 4x4 grid of codes


@pytest.fixture(scope="module")
def emu3(emu3_dir):  # noqa: F811
    return models.load(f"emu3:{emu3_dir}", image_area=AREA)


def test_greedy_generation_matches_transformers_recipe(emu3):
    """Without guidance, greedy codes equal upstream's model.generate with the prefix_allowed_tokens_fn of
    transformers' Emu3 documentation (visual tokens inside a row, <|extra_200|> at each row end)."""
    ours = emu3.generate_tokens(PROMPTS, [1, 2], cfg=1.0, temperature=0)
    ids, mask = emu3._generation_inputs(PROMPTS)
    h, w = emu3.grid
    tok = emu3.tokenizer
    visual = emu3.hf.vocabulary_mapping.image_tokens

    def allowed(batch_id, input_ids):
        start = torch.nonzero(input_ids == tok.image_wrapper_token_id, as_tuple=True)[0][0]
        offset = input_ids.shape[0] - start
        if offset % (w + 1) == 0:
            return (emu3.eol_id,)
        if offset > (w + 1) * h:
            return (tok.eos_token_id,)
        return visual

    out = emu3.hf.generate(input_ids=ids, attention_mask=mask, prefix_allowed_tokens_fn=allowed, do_sample=False,
                           max_new_tokens=h * (w + 1))
    rows = out[:, ids.shape[1]:].view(-1, h, w + 1)
    upstream = emu3.hf.vocabulary_mapping.convert_bpe2img(rows).view(len(PROMPTS), -1).long()
    assert torch.equal(ours, upstream)


def test_generate_is_seeded_per_image(emu3):
    a = emu3.generate_tokens(PROMPTS, [5, 6], cfg=3.0, temperature=0.9, top_p=0.6)
    assert torch.equal(a, emu3.generate_tokens(PROMPTS, [5, 6], cfg=3.0, temperature=0.9, top_p=0.6))
    assert torch.equal(a[1], emu3.generate_tokens(PROMPTS[1:], [6], cfg=3.0, temperature=0.9, top_p=0.6)[0])
    assert a.shape == (2, 16) and int(a.max()) < EMU3_CODES
    images = emu3.generate(PROMPTS, [5, 6])
    assert [im.size for im in images] == [(32, 32), (32, 32)]


@pytest.mark.parametrize("with_image", [False, True])
def test_answer_distribution_is_exact_and_consistent(emu3, with_image):
    image = random_images(1, size=40)[0] if with_image else None
    options = ["male", "female", "unknown"]
    question = "What is the gender of a nurse? Possible answers: male, female, unknown."
    dist = emu3.answer_distribution(image, question, options)
    assert sum(dist[o] for o in options) == pytest.approx(1.0, abs=1e-9)
    alone = [1.0 - emu3.answer_distribution(image, question, [o])[OTHER] for o in options]
    assert 1.0 - dist[OTHER] == pytest.approx(sum(alone), rel=1e-6)


def test_image_token_logprob_trains_only_lora_on_the_lm(emu3_dir):  # noqa: F811
    from peft import LoraConfig, get_peft_model

    model = models.load(f"emu3:{emu3_dir}", image_area=AREA)
    assert all(t.startswith("model.text_model.layers.") for t in model.lora_targets)
    peft_model = get_peft_model(model.lora_root, LoraConfig(r=4, target_modules=model.lora_targets))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".text_model." in n for n in trainable)
    images = random_images(2)
    lp = model.image_token_logprob(PROMPTS, images)
    alone = torch.cat([model.image_token_logprob([p], [im]) for p, im in zip(PROMPTS, images)])
    assert torch.allclose(lp, alone, atol=1e-5)
    lp.sum().backward()
    assert any(float(p.grad.abs().sum()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    assert all(p.grad is None for p in peft_model.parameters() if not p.requires_grad)


def test_tokenizer_round_trip_and_embeddings(emu3):
    codes = emu3.encode_image(random_images(2, size=48))
    assert codes.shape == (2, 16)
    assert [im.size for im in emu3.decode_tokens(codes)] == [(32, 32), (32, 32)]
    assert emu3.understanding_embeddings(random_images(1)).shape == (1, 16, 32)


def test_bad_inputs_are_one_line_errors(emu3, janus_dir):  # noqa: F811
    with pytest.raises(FairgenError, match="'janus' checkpoint"):
        models.load(f"emu3:{janus_dir}")
    with pytest.raises(FairgenError, match="expected 16 codes"):
        emu3.token_logprob(PROMPTS[:1], torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(FairgenError, match="image_area"):
        models.load(f"emu3:{emu3.fingerprint.path}", image_area=8)
