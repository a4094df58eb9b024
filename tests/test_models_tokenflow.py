"""tokenflow: the native port on a tiny random checkpoint in the official layout (tests/tokenflow_tiny.py),
checked number for number against upstream's own modules (tests/fixtures/tokenflow_upstream.json, written by
tests/fixtures/tokenflow_regenerate.py from ByteFlow-AI/TokenFlow at the commit it records)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairgen import models
from fairgen.models import tokenflow
from fairgen.types import FairgenError
from tokenflow_tiny import write

UPSTREAM = json.loads((Path(__file__).parent / "fixtures" / "tokenflow_upstream.json").read_text())
PROMPTS = UPSTREAM["prompts"]


@pytest.fixture(scope="session")
def tokenflow_dir(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("tokenflow") / "t2i")


@pytest.fixture(scope="module")
def tf(tokenflow_dir):
    torch.set_num_threads(1)
    return models.load(f"tokenflow:{tokenflow_dir}", device="cpu")


def synthetic_image() -> torch.Tensor:
    """The regeneration script's fixed pattern, [1, 3, 32, 32] in [-1, 1]."""
    y, x = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return torch.stack([torch.sin(x / 5), torch.cos(y / 7), torch.sin((x + y) / 9)]).unsqueeze(0)


def test_prompt_layout_is_upstreams(tf):
    """[PAD]-left-padded BOS + text to 128 tokens, then <img>; the negative prompt likewise."""
    assert tf.prompt_ids(PROMPTS).tolist() == UPSTREAM["prefix_ids"]
    assert tf.prompt_ids([tokenflow.NEGATIVE_PROMPT])[0].tolist() == UPSTREAM["negative_ids"]
    ids = tf.prompt_ids(["word " * 300])[0]  # cut to 128, keeping BOS and the start of the text
    assert len(ids) == len(UPSTREAM["prefix_ids"][0]) and ids[0] == tf.text.bos_token_id


def test_greedy_codes_and_pixels_are_upstreams(tf):
    """Greedy generation under the linear guidance ramp (upstream --cfg 3 = our cfg 4): the same 817 codes,
    and the decoder's 8-bit pixels identical."""
    codes = tf.generate_tokens(PROMPTS, [0, 1], temperature=0, cfg=1 + UPSTREAM["cfg_upstream"])
    assert codes.tolist() == UPSTREAM["greedy_codes"]
    pixels = np.stack([np.asarray(im) for im in tf.decode_tokens(codes)])
    assert np.array_equal(pixels, np.array(UPSTREAM["greedy_pixels"], dtype=np.uint8))


def test_teacher_forced_logits_are_upstreams(tf):
    codes = torch.tensor(UPSTREAM["greedy_codes"])
    logits = tf.image_token_logits(PROMPTS, codes)
    assert logits.shape == (2, 817, 64)
    assert torch.allclose(logits[:, UPSTREAM["logit_rows"]], torch.tensor(UPSTREAM["logits"]), atol=2e-5)
    assert torch.allclose(tf.token_logprob(PROMPTS, codes), torch.tensor(UPSTREAM["mean_logprob"]), atol=1e-5)


def test_tokenizer_is_upstreams(tf):
    """The dual-codebook multi-scale encoder picks upstream's codes; the decoder makes upstream's pixels."""
    codes = tf.vq.encode(synthetic_image())
    assert codes.tolist() == UPSTREAM["image_codes"]
    decoded = tf.vq.decode(codes).flatten()[:3072]
    assert torch.allclose(decoded, torch.tensor(UPSTREAM["image_decoded"]), atol=1e-4)


@pytest.mark.parametrize(
    "settings", [{}, {"cfg": 1.0}, {"cfg": 3.0, "temperature": 0.8, "top_k": 20, "top_p": 0.9}]
)
def test_cached_engine_is_upstreams_recompute_loop(tf, settings):
    """The per-scale KV cache gives the codes of upstream's loop, which runs the whole sequence at every
    scale (sampled, not greedy: the same per-image random numbers pick the same codes)."""
    fast = tf.generate_tokens(PROMPTS, [5, 6], **settings)
    slow = tf.generate_tokens(PROMPTS, [5, 6], engine=False, **settings)
    assert torch.equal(fast, slow)


def test_generation_samples_from_the_teacher_forced_distribution(tf):
    """Unguided greedy codes are the argmax of the one-pass teacher-forced logits at all 817 positions: the
    block-causal pass scores exactly the distributions generation draws from."""
    codes = tf.generate_tokens(PROMPTS, [0, 1], cfg=1.0, temperature=0)
    assert torch.equal(tf.image_token_logits(PROMPTS, codes).argmax(-1), codes)


def test_generation_is_seeded_per_image(tf):
    a = tf.generate_tokens(PROMPTS, [11, 12])
    alone = tf.generate_tokens(PROMPTS[1:], [12])
    other = tf.generate_tokens(PROMPTS, [13, 12])
    assert torch.equal(a[1], alone[0]) and torch.equal(a[1], other[1]) and not torch.equal(a[0], other[0])
    images = tf.generate(PROMPTS, [11, 12])
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert np.array_equal(
        np.asarray(images[1]), np.asarray(tf.decode_tokens(a)[1])
    )  # generate = decode(codes)


def test_logprob_is_differentiable_through_lora(tokenflow_dir):
    """image_token_logprob backpropagates into LoRA on the LM's projections, and only there."""
    from peft import LoraConfig, get_peft_model

    model = models.load(f"tokenflow:{tokenflow_dir}", device="cpu")
    assert model.lora_targets and all(t.startswith("model.layers.") for t in model.lora_targets)
    images = [Image.fromarray(np.full((40, 48, 3), 60 * i, dtype=np.uint8)) for i in range(2)]
    before = model.image_token_logprob(PROMPTS, images).detach()
    peft_model = get_peft_model(
        model.lora_root, LoraConfig(r=2, target_modules=model.lora_targets, init_lora_weights=False)
    )
    logp = model.image_token_logprob(PROMPTS, images)
    logp.sum().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all("lora_" in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert not torch.allclose(before, logp.detach())


def test_tokenizer_round_trip_and_embeddings(tf):
    """Any image size goes through upstream's centre crop to the tokenizer's resolution; codes decode back."""
    images = [
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (70, 50, 3), dtype=np.uint8))
        for i in range(2)
    ]
    codes = tf.encode_image(images)
    assert codes.shape == (2, 817) and codes.max() < 64
    assert [im.size for im in tf.decode_tokens(codes)] == [(32, 32), (32, 32)]
    emb = tf.tokenizer_embeddings(images)
    assert emb.shape == (2, 40, 16, 16) and torch.allclose(emb, tf.vq.summed(codes))


def test_capabilities_and_hooks(tf):
    """The protocols the registry entry names, and no understanding (no understanding model is loaded)."""
    from fairgen.models import protocols

    assert models.family("tokenflow").capabilities == {
        name for name, proto in protocols.CAPABILITIES.items() if isinstance(tf, proto)
    }
    assert not isinstance(tf, protocols.Understander)
    assert tf.image_start_hidden(PROMPTS).shape == (2, 64)
    prov = tf.provenance()
    assert prov["family"] == "tokenflow" and len(prov["tokenizer"]["sha256"]) == 64
    assert prov["default_sampling"] == {"cfg": 8.5, "temperature": 1.0, "top_p": 0.6, "top_k": 600}


def test_bad_inputs_are_one_line_errors(tokenflow_dir, tmp_path):
    with pytest.raises(FairgenError, match="understanding model"):
        models.load(f"tokenflow:{tokenflow_dir}", understanding="/x")
    with pytest.raises(FairgenError, match="unknown option"):
        models.load(f"tokenflow:{tokenflow_dir}", image_area=4)
    with pytest.raises(FairgenError, match="not a checkpoint directory"):
        models.load(f"tokenflow:{tmp_path}")
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "x": Path("/")}, evil)  # an object outside plain tensors and containers
    with pytest.raises(FairgenError, match="weights_only=True"):
        models.load(f"tokenflow:{tokenflow_dir}", tokenizer=str(evil))
    with pytest.raises(FairgenError, match="top_p"):
        models.load(f"tokenflow:{tokenflow_dir}").generate(PROMPTS[:1], [0], top_p=0)


def test_gradient_checkpointing_keeps_gradients(tokenflow_dir):
    """fix's checkpointing switch recomputes the layers in backward and gives the same gradients."""
    from peft import LoraConfig, get_peft_model

    from fairgen.fix.train import _checkpointing

    model = models.load(f"tokenflow:{tokenflow_dir}", device="cpu")
    peft_model = get_peft_model(
        model.lora_root, LoraConfig(r=2, target_modules=model.lora_targets, init_lora_weights=False)
    )
    codes = torch.tensor(UPSTREAM["greedy_codes"])
    grads = []
    for enabled in (False, True):
        peft_model.zero_grad()
        with _checkpointing(model, enabled):
            assert model.hf.model.checkpointing == enabled
            model.token_logprob(PROMPTS, codes).sum().backward()
        grads.append([p.grad.clone() for p in peft_model.parameters() if p.requires_grad])
    assert not model.hf.model.checkpointing
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(*grads))


def test_projector_follows_the_config():
    """LLaVA's projector names: TokenFlow-t2i's linear one, and mlpNx_gelu with its checkpoint keys."""
    from fairgen.models.tokenflow_lm import projector

    assert isinstance(projector("linear", 40, 8), torch.nn.Linear)
    mlp = projector("mlp2x_gelu", 40, 8)
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(FairgenError, match="mm_projector_type"):
        projector("qformer", 40, 8)
