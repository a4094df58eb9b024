"""`fairgen fix` on tiny random Janus and Emu3 checkpoints (the real transformers architectures): the whole
pipeline end to end, every method, the training loss falling; and gradient checkpointing, which changes
no gradient."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_suite
from fairgen import models
from fairgen.fix import FixConfig, fix
from fairgen.fix.caption import CAPTION_QUESTION, caption_logprob
from fairgen.fix.pipeline import METHODS
from fairgen.fix.train import _checkpointing
from fairgen.models import OTHER
from test_models_checkpoints import emu3_dir, janus_dir, random_images  # noqa: F401  (session fixtures)

PROMPTS = ["A photo of the face of a nurse, a person", "A photo of the face of a firefighter, a person"]


@pytest.fixture(scope="module")
def sharp_janus(janus_dir, tmp_path_factory):  # noqa: F811
    """The tiny random Janus with its generation head's output layer scaled up 30x: at the initial scale
    (std 0.02) every code has probability ~1/64 whatever the language model's hidden state, so no LoRA on
    the language model could move the image loss; a trained head is far from uniform."""
    import shutil

    from transformers import JanusForConditionalGeneration

    path = tmp_path_factory.mktemp("sharp") / "janus"
    shutil.copytree(janus_dir, path)
    model = JanusForConditionalGeneration.from_pretrained(janus_dir)
    with torch.no_grad():
        model.model.generation_head.vision_head.weight.mul_(30.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def suite_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf-suites")
    return write_suite(d / "train.yaml", ["nurse", "firefighter"]), write_suite(d / "test.yaml", ["nurse"])


@pytest.mark.parametrize("family", ["janus", "emu3"])
def test_fix_every_method_end_to_end(family, sharp_janus, emu3_dir, suite_files, tmp_path):  # noqa: F811
    """Balanced set from the world renderer, before audits, the four methods, after audits, checks, table.
    Random weights draw no faces, so rd reads as not measured; the losses are what must move."""
    torch.set_num_threads(1)
    checkpoint = {"janus": sharp_janus, "emu3": emu3_dir}[family]
    train, test = suite_files
    config = FixConfig(model=f"{family}:{checkpoint}", train_suite=str(train), test_suite=str(test), method="all",
                       data_source="world", perception="world", images_per_group=2, sft_steps=6, bpo_steps=6,
                       lr=1e-2, units_per_batch=2, images_per_prompt=2, explicit_concepts=1, explicit_images=1,
                       check_suites=(str(test),), check_images=1, understanding_images=2, batch_size=8,
                       device="cpu", dtype="fp32", model_options={"image_area": 32 * 32} if family == "emu3" else {})
    out = tmp_path / family
    table = fix(config, out)
    assert list(table["methods"]) == list(METHODS)
    assert table["before"]["face_rate"] == 0.0 and table["before"]["rd"]["gender"]["mean"] is None
    for method, key in (("sft", "sft"), ("understanding-sft", "caption")):
        log = [json.loads(line) for line in (out / method / "train_log.jsonl").read_text().splitlines()]
        assert log[-1][key] < log[0][key] - 0.05, (method, log)
    bpo = [json.loads(line) for line in (out / "bpo" / "train_log.jsonl").read_text().splitlines()]
    sft_stage = [r["sft"] for r in bpo if r["stage"] == "sft"]
    assert sft_stage[-1] < sft_stage[0]
    adapter = out / "bpo" / "adapter"
    manifest = json.loads((out / "bpo" / "after" / "test" / "manifest.json").read_text())
    assert manifest["config"]["adapter"] == str(adapter)
    tuned = models.load(f"{family}:{checkpoint}", adapter=adapter, **config.model_options)
    assert all(".language_model." in n or ".text_model." in n
               for n, _ in tuned.peft_model.named_parameters() if "lora_" in n)
    assert (out / "fix_table.md").read_text().count("| BPO (bpo) |") == 2  # the main table and the checks


@pytest.mark.parametrize("family", ["janus", "emu3"])
def test_caption_logprob_is_the_answer_score(family, janus_dir, emu3_dir):  # noqa: F811
    """exp(mean log p * tokens) of a one-word caption is answer_distribution's raw mass of that answer, and
    scoring in a batch (padded answers) changes nothing."""
    model = models.load(f"{family}:{ {'janus': janus_dir, 'emu3': emu3_dir}[family]}")
    images = random_images(2)
    together = caption_logprob(model, images, ["male", PROMPTS[0]]).detach()
    alone = torch.cat([caption_logprob(model, [im], [t]).detach() for im, t in zip(images, ["male", PROMPTS[0]])])
    assert torch.allclose(together, alone, atol=1e-5)
    raw = 1.0 - model.answer_distribution(images[0], CAPTION_QUESTION, ["male"])[OTHER]
    n_tokens = round(torch.tensor(raw).log().item() / together[0].item())
    assert n_tokens >= 2  # the word and the end of the answer
    assert together[0].item() * n_tokens == pytest.approx(torch.tensor(raw).log().item(), rel=1e-4)


def test_gradient_checkpointing_recomputes_layers_and_keeps_gradients(janus_dir):  # noqa: F811
    """With checkpointing on, a decoder layer's projections run again in the backward pass, and the LoRA
    gradients equal those computed without it."""
    from peft import LoraConfig, get_peft_model

    model = models.load(f"janus:{janus_dir}")
    peft_model = get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_targets,
                                                            init_lora_weights=False))
    calls = []
    layer = model.hf.model.language_model.layers[0].self_attn.q_proj
    layer.register_forward_hook(lambda *_: calls.append(1))
    images = random_images(2)

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        peft_model.zero_grad(set_to_none=True)
        calls.clear()
        with _checkpointing(model, checkpointing) as pause:
            model.image_token_logprob(PROMPTS, images).mean().backward()
            if checkpointing:  # the validation's pause: eval mode and the KV cache back, then on again
                with pause():
                    assert not model.hf.model.language_model.layers[0].training
                    assert model.hf.config.get_text_config().use_cache
                assert model.hf.model.language_model.layers[0].training
        return {n: p.grad.clone() for n, p in peft_model.named_parameters() if p.requires_grad}

    plain, plain_calls = grads(False), len(calls)
    checkpointed, checkpointed_calls = grads(True), len(calls)
    assert (plain_calls, checkpointed_calls) == (1, 2)
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
    assert not model.hf.model.language_model.layers[0].training  # back in eval mode afterwards


def test_merged_adapter_on_janus_matches_the_applied_one_and_restores_exactly(janus_dir, tmp_path):  # noqa: F811
    """The after audits' merge on a transformers family: the merged model's image log-probabilities are the
    peft-applied ones, and every weight is bit-for-bit the original afterwards."""
    from peft import LoraConfig, get_peft_model

    from fairgen.models.adapters import applied_adapter, merged_adapter

    model = models.load(f"janus:{janus_dir}")
    peft_model = get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_targets,
                                                            init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    peft_model.unload()
    original = {k: v.clone() for k, v in model.lora_root.state_dict().items()}
    images = random_images(2)
    with torch.no_grad():
        plain = model.image_token_logprob(PROMPTS, images)
        with applied_adapter(model, tmp_path / "adapter") as adapted:
            applied = adapted.image_token_logprob(PROMPTS, images)
        with merged_adapter(model, tmp_path / "adapter") as adapted:
            merged = adapted.image_token_logprob(PROMPTS, images)
    assert not torch.allclose(applied, plain, atol=1e-5)
    torch.testing.assert_close(merged, applied, atol=1e-4, rtol=1e-4)
    restored = model.lora_root.state_dict()
    assert restored.keys() == original.keys() and all(torch.equal(restored[k], original[k]) for k in original)
