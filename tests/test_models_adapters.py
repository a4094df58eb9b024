"""`load(spec, adapter=DIR)` / apply_adapter: a peft LoRA adapter saved on a model's lora_root is applied
in place to a freshly loaded model, and only ever to its language model."""

from __future__ import annotations

import pytest
import torch

from fairgen.models.protocols import capabilities_of
from fairgen import models
from fairgen.models.adapters import apply_adapter
from fairgen.types import FairgenError
from test_models_checkpoints import janus_dir, random_images  # noqa: F401  (session fixture)

PROMPTS = ["A photo of the face of a nurse, a person", "a doctor"]


def save_adapter(model, path, targets, seed: int = 0):
    """A LoRA adapter on `targets` with random (non-zero) weights, as a trained one would have."""
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    peft_model.save_pretrained(path)
    return peft_model


def test_adapter_round_trip_changes_the_model(janus_dir, tmp_path):  # noqa: F811
    images = random_images(2)
    trained = models.load(f"janus:{janus_dir}")
    base_lp = trained.image_token_logprob(PROMPTS, images).detach()
    save_adapter(trained, tmp_path / "adapter", trained.lora_targets)
    trained_lp = trained.image_token_logprob(PROMPTS, images).detach()
    assert not torch.allclose(base_lp, trained_lp)

    adapted = models.load(f"janus:{janus_dir}", adapter=tmp_path / "adapter")
    assert torch.allclose(adapted.image_token_logprob(PROMPTS, images).detach(), trained_lp, atol=1e-5)
    assert adapted.spec == f"janus:{janus_dir}" and "lora" in capabilities_of(adapted)
    assert len(adapted.generate(PROMPTS[:1], [0])) == 1  # every method runs with the adapter
    prov = adapted.provenance()
    assert prov["family"] == "janus"
    assert set(prov["adapter"]["sha256"]) == {"adapter_config.json", "adapter_model.safetensors"}
    assert all(not p.requires_grad for p in adapted.lora_root.parameters())  # inference mode


def test_adapter_outside_the_language_model_is_refused(janus_dir, tmp_path):  # noqa: F811
    model = models.load(f"janus:{janus_dir}")
    vision = [n for n, m in model.lora_root.named_modules()
              if n.startswith("model.vision_model.") and n.endswith("self_attn.q_proj")]
    save_adapter(model, tmp_path / "vision-adapter", vision)
    fresh = models.load(f"janus:{janus_dir}")
    with pytest.raises(FairgenError, match="outside the language model"):
        apply_adapter(fresh, tmp_path / "vision-adapter")
    assert not any(hasattr(m, "lora_A") for m in fresh.lora_root.modules())  # left as it was


def test_bad_adapters_are_input_errors(janus_dir, tmp_path):  # noqa: F811
    with pytest.raises(FairgenError, match="missing adapter_config.json"):
        models.load(f"janus:{janus_dir}", adapter=tmp_path)
    with pytest.raises(FairgenError, match="does not support adapters"):
        models.load("world", adapter=tmp_path)


def test_adapter_on_fairgen_tiny(tmp_path):
    """The same contract on fairgen-tiny, whose lora_root is its language model."""
    from fairgen.models.tiny import TinyModel
    from fairgen.models.tiny.model import LMConfig, TinyLM
    from fairgen.models.tiny.text import Vocab
    from fairgen.models.tiny.tokenizer import TokenizerConfig, VisionTokenizer

    tokenizer = VisionTokenizer(TokenizerConfig(grid=4, levels=(4, 4), width=8))
    vocab = Vocab(tokenizer.cfg.n_codes, tokenizer.cfg.n_tokens)
    torch.manual_seed(0)
    lm = TinyLM(LMConfig(vocab_size=vocab.size, n_image_tokens=vocab.n_image_tokens, n_layer=1, n_head=2, n_embd=32))
    TinyModel(tokenizer, lm).save(tmp_path / "tiny")
    trained = models.load(f"tiny:{tmp_path / 'tiny'}")
    images = random_images(2, size=64)
    save_adapter(trained, tmp_path / "adapter", trained.lora_targets)
    trained_lp = trained.image_token_logprob(PROMPTS, images).detach()
    adapted = models.load(f"tiny:{tmp_path / 'tiny'}", adapter=tmp_path / "adapter")
    assert torch.allclose(adapted.image_token_logprob(PROMPTS, images).detach(), trained_lp, atol=1e-5)
    assert "adapter" in adapted.provenance()
