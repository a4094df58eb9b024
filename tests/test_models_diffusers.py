"""diffusers: a tiny random Stable Diffusion pipeline saved with save_pretrained and loaded through
`diffusers:<dir>` (needs the `fairgen[diffusers]` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import fairgen
from conftest import write_suite
from fairgen.models.protocols import capabilities_of
from fairgen import models
from fairgen.types import FairgenError

pytest.importorskip("diffusers", reason="diffusers is not installed (pip install 'fairgen[diffusers]')")


def build_sd(path: Path) -> Path:
    """Stable Diffusion's architecture at toy size: UNet on 8x8 latents, a 2-block VAE (16x16 px images),
    a 2-layer CLIP text encoder and a CLIP tokenizer over a hand-built byte-level vocabulary."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: len(vocab) + i for i, c in enumerate(alphabet)})
    vocab.update({c + "</w>": len(vocab) + i for i, c in enumerate(alphabet)})
    merges = [("o", "f</w>"), ("p", "h")]
    vocab.update({a + b: len(vocab) + i for i, (a, b) in enumerate(merges)})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=32, attention_head_dim=8)
    vae = AutoencoderKL(block_out_channels=[32, 64], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=16)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("sd"))


def test_generate_is_seeded_per_image(sd_dir):
    model = models.load(f"diffusers:{sd_dir}")
    assert capabilities_of(model) == {"generate"}
    prompts = ["a photo of a nurse", "a photo of a doctor"]
    a = model.generate(prompts, [1, 2], steps=3, cfg=3.0, temperature=0.9, top_p=0.6)  # token settings: no effect
    b = model.generate(prompts, [1, 2], steps=3, cfg=3.0)
    alone = model.generate(prompts[1:], [2], steps=3, cfg=3.0)
    assert [im.size for im in a] == [(16, 16), (16, 16)]
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    # Each image's starting noise is its own; the batch changes at most float rounding.
    assert np.abs(np.asarray(a[1], dtype=int) - np.asarray(alone[0], dtype=int)).max() <= 1
    assert not np.array_equal(np.asarray(a[0]), np.asarray(model.generate(prompts[:1], [3], steps=3, cfg=3.0)[0]))
    prov = model.provenance()
    assert "unet/diffusion_pytorch_model.safetensors" in prov["sha256"]
    with pytest.raises(FairgenError, match="unknown sampling"):
        model.generate(prompts[:1], [0], guidance_scale=2.0)


def test_audit_by_spec(sd_dir, tmp_path):
    suite = write_suite(tmp_path / "suite.yaml", ["nurse"])
    res = fairgen.audit(model=f"diffusers:{sd_dir}", suite=str(suite), images_per_prompt=2, perception_backend="world",
                        sampling={"cfg": 3.0, "steps": 2}, out=tmp_path / "run")
    assert res.results["prompts"][0]["n_images"] == 2 and res.results["prompts"][0]["n_faces"] == 0
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert "unet/diffusion_pytorch_model.safetensors" in json.dumps(manifest)


def test_not_a_pipeline_is_an_input_error(tmp_path):
    with pytest.raises(FairgenError, match="model_index.json"):
        models.load(f"diffusers:{tmp_path}")
