"""`clip`: a tiny random CLIP and a hand-built tokenizer, saved with save_pretrained, loaded offline."""

from __future__ import annotations

import string

import pytest
from PIL import Image
from skimage import data
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from fairgen import perception
from fairgen.perception.clip import PROMPTS
from fairgen.types import ATTRIBUTES, FairgenError


def write_clip(out, logit_scale: float | None = None):
    """A CLIP checkpoint directory as save_pretrained writes it: random weights, a character-level BPE
    vocabulary (no merges) covering every prompt, a 32x32 PIL image processor."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    if logit_scale is not None:
        model.logit_scale.data.fill_(logit_scale)
    model.save_pretrained(out)
    CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        out
    )
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clip"))


def test_prompts_cover_exactly_the_fixed_classes():
    assert {attr: tuple(classes) for attr, classes in PROMPTS.items()} == ATTRIBUTES


def test_clip_checkpoint_gives_probabilities_over_the_fixed_classes(checkpoint):
    backend = perception.load(f"clip:{checkpoint}")
    assert backend.name == f"clip:dir={checkpoint}"
    out = backend.perceive([Image.fromarray(data.astronaut()), Image.new("RGB", (64, 64), "white")])
    assert out[0].face and not out[1].face
    assert set(out[0].probs) == set(ATTRIBUTES)
    for attr, probs in out[0].probs.items():
        assert tuple(probs) == ATTRIBUTES[attr]
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        assert all(0.0 < p < 1.0 for p in probs.values())
    prov = backend.provenance()
    assert len(prov["sha256"]["model.safetensors"]) == 64 and prov["versions"]["transformers"]


def test_classes_with_more_prompts_get_no_head_start(tmp_path):
    # With CLIP's temperature at ~0 every prompt scores the same: each class must read 1/K, although `white`
    # has three prompts and `black` one.
    backend = perception.load(f"clip:{write_clip(tmp_path, logit_scale=-30.0)}")
    (p,) = backend.perceive([Image.fromarray(data.astronaut())])
    for attr, probs in p.probs.items():
        assert probs == pytest.approx({c: 1 / len(ATTRIBUTES[attr]) for c in ATTRIBUTES[attr]}, abs=1e-6)


def test_not_a_clip_directory_fails_in_one_line(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    for spec, message in (
        (f"clip:{tmp_path}", "cannot load a CLIP model"),
        (f"clip:{tmp_path / 'no'}", "no config.json"),
    ):
        with pytest.raises(FairgenError, match=message) as err:
            perception.load(spec)
        assert "\n" not in str(err.value)
