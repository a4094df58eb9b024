"""show-o: a tiny random Show-o in the released layout, loaded through `show-o:<dir>` and checked number for
number against upstream's code (tests/fixtures/show_o/upstream.json, made by regenerate.py there)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairgen import models
from fairgen.models import OTHER, show_o_sampling, show_o_tiny
from fairgen.types import FairgenError

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "show_o" / "upstream.json").read_text())
PROMPTS, SEEDS, STEPS = FIXTURE["prompts"], FIXTURE["seeds"], FIXTURE["steps"]


@pytest.fixture(scope="session")
def show_o_root(tmp_path_factory) -> Path:
    """The tiny checkpoint regenerate.py ran upstream on (same writer, same seed: same weights)."""
    root = tmp_path_factory.mktemp("show_o")
    show_o_tiny.write(root)
    return root


@pytest.fixture(scope="module")
def show_o(show_o_root):
    return models.load(f"show-o:{show_o_root / 'show-o'}", vq=str(show_o_root / "magvitv2"))


def fixture_image() -> Image.Image:
    """regenerate.image_u8: the same seeded pixels."""
    g = torch.Generator().manual_seed(5)
    return Image.fromarray((torch.rand(32, 32, 3, generator=g) * 255).round().to(torch.uint8).numpy(), "RGB")


@pytest.mark.parametrize("cache", [False, True])
def test_teacher_forced_logits_match_upstream(show_o, cache):
    """Code logits of whole t2i rows (prompts, then their empty-prompt twins) over partly masked codes:
    upstream's Showo forward vs fairgen's whole-row runner and its cached-prefix fast path."""
    codes = torch.tensor(FIXTURE["teacher_forced"]["codes"])
    expected = torch.tensor(FIXTURE["teacher_forced"]["logits"])
    text = show_o.guidance_text(PROMPTS, cfg=2.0)
    rows = codes.repeat(2, 1)
    with torch.no_grad():
        ours = (show_o_sampling.prefix_logits(show_o, text)(rows) if cache else show_o.full_logits(text, rows))
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("w", [0.0, 1.75])
@pytest.mark.parametrize("cache", [False, True])
def test_sampler_matches_upstream(show_o, w, cache):
    """upstream's t2i_generate and fairgen's sampler, fed the same uniforms, give the same codes."""
    noise = torch.tensor(FIXTURE["noise"])
    settings = show_o_sampling.Settings(cfg=1.0 + w, steps=STEPS, temperature=1.0)
    ours = show_o.sample_codes(PROMPTS, settings, show_o_sampling.Noise(noise[:, 0], noise[:, 1]), cache=cache)
    assert ours.tolist() == FIXTURE[f"sampled_w{w}"]


def test_cached_prefix_attention_is_the_masked_softmax():
    """The fast path's span attention: rows grouped by their left padding (out of order: five rows, four
    runs) each attend unmasked to their visible keys, from the buffers every layer refills with its own
    prefix; and a [PAD] inside a prompt (visibility not a suffix) falls back to one masked call. Both vs
    softmax over the visible keys in float64."""
    from fairgen.models.show_o_lm import CachedPrefix

    g = torch.Generator().manual_seed(0)
    r, h, t, span, d = 5, 2, 7, 4, 8
    for pads, hole in (([2, 2, 0, 5, 0], None), ([1, 0, 3, 0, 0], (1, 4))):
        visible = torch.arange(t) >= torch.tensor(pads).unsqueeze(1)
        if hole:
            visible[hole] = False
        kv = [tuple(torch.randn(r, h, t, d, generator=g) for _ in range(2)) for _ in range(3)]
        prefix = CachedPrefix(kv, visible, span)
        assert (prefix.mask is None) == (hole is None)
        assert hole or [grp[2] for grp in prefix.groups] == [2, 0, 5, 0]
        seen = torch.cat([visible, torch.ones(r, span, dtype=torch.bool)], 1)[:, None, None, :]
        for layer in (0, 2, 1):
            k_slot, v_slot = prefix.slots(layer)
            k_span, v_span, q = (torch.randn(r, h, span, d, generator=g) for _ in range(3))
            k_slot.copy_(k_span)
            v_slot.copy_(v_span)
            keys = torch.cat([kv[layer][0], k_span], 2).double()
            values = torch.cat([kv[layer][1], v_span], 2).double()
            scores = (q.double() @ keys.transpose(-1, -2) / d ** 0.5).masked_fill(~seen, float("-inf"))
            expected = (scores.softmax(-1) @ values).transpose(1, 2).float()
            torch.testing.assert_close(prefix.attend(q), expected, atol=1e-5, rtol=1e-5)


def test_rope_into_is_rope():
    from fairgen.models.show_o_lm import rope, rope_into

    g = torch.Generator().manual_seed(1)
    t, angle = torch.randn(2, 3, 5, 16, generator=g), torch.randn(5, 8, generator=g)
    cos, sin = angle.cos(), angle.sin()
    out = torch.zeros(2, 5, 3, 16).transpose(1, 2)  # a strided destination, like a key buffer's slot
    for dtype in (torch.float32, torch.bfloat16):  # bit for bit: the reference path runs rope()
        args = t.to(dtype), cos.to(dtype), sin.to(dtype)
        assert torch.equal(rope_into(*args, out.to(dtype)), rope(*args))


def test_fast_path_with_mixed_padding_matches_whole_rows(show_o):
    """Rows of four paddings out of order (grouped and put back by prefix_logits), the buffers reused over
    three calls, and a prompt holding a literal [PAD] (masked fallback): the same logits as whole rows
    through the LM, and the same codes as the reference loop for fixed seeds."""
    g = torch.Generator().manual_seed(3)
    for prompts in (["", PROMPTS[0], "a nurse", PROMPTS[1], ""], ["a [PAD] nurse", PROMPTS[1]]):
        text = show_o.t2i_text_ids(prompts)
        fn = show_o_sampling.prefix_logits(show_o, text)
        shape = (len(prompts), show_o.n_tokens)
        batches = [torch.randint(0, show_o.codebook, shape, generator=g) for _ in range(2)]
        for codes in (*batches, batches[0]):
            codes = torch.where(torch.rand(codes.shape, generator=g) < 0.5, show_o.mask_id, codes)
            with torch.no_grad():
                torch.testing.assert_close(fn(codes), show_o.full_logits(text, codes), atol=2e-5, rtol=1e-5)
    mixed = ["a nurse", PROMPTS[0], "a [PAD] nurse", PROMPTS[1]]
    fast = show_o.generate_tokens(mixed, [4, 5, 6, 7], steps=3)
    assert torch.equal(fast, show_o.generate_tokens(mixed, [4, 5, 6, 7], steps=3, cache=False))


def test_fast_path_runs_lora_layers(show_o):
    """With LoRA on the projections the fused input matrix is off (its weights would skip the adapters)
    and the fast path calls the modules: still the whole rows' logits, which the adapter changed."""
    from peft import LoraConfig, get_peft_model

    assert show_o.runner.fused_inputs() is not None
    text = show_o.guidance_text(PROMPTS, cfg=2.0)
    codes = torch.tensor(FIXTURE["teacher_forced"]["codes"]).repeat(2, 1)
    lora = LoraConfig(r=2, target_modules=show_o.lora_targets, init_lora_weights=False)
    peft = get_peft_model(show_o.lora_root, lora)
    try:
        assert show_o.runner.fused_inputs() is None
        with torch.no_grad():
            fast = show_o_sampling.prefix_logits(show_o, text)(codes)
            torch.testing.assert_close(fast, show_o.full_logits(text, codes), atol=2e-5, rtol=1e-5)
        assert not torch.allclose(fast, torch.tensor(FIXTURE["teacher_forced"]["logits"]), atol=1e-3)
    finally:
        peft.unload()
        show_o.lm.requires_grad_(True)


def test_image_tokenizer_matches_upstream(show_o):
    codes = show_o.encode_image([fixture_image()])
    assert codes.tolist() == FIXTURE["vq"]["codes"]
    with torch.no_grad():
        pixels = show_o.vq.decode(torch.tensor(FIXTURE["sampled_w1.75"]))
    torch.testing.assert_close(pixels, torch.tensor(FIXTURE["vq"]["decoded"]), atol=2e-5, rtol=1e-5)
    images = show_o.decode_tokens(torch.tensor(FIXTURE["sampled_w1.75"]))
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    back = show_o.encode_image(images)  # the round trip runs (random weights: codes need not survive it)
    assert back.shape == (2, show_o.n_tokens)


def test_option_logprobs_match_upstream(show_o):
    expected = FIXTURE["options"]
    ours = show_o.option_logprobs(fixture_image(), expected["question"], expected["options"])
    np.testing.assert_allclose(ours.numpy(), expected["logprobs"], atol=1e-4)
    dist = show_o.answer_distribution(fixture_image(), expected["question"], expected["options"])
    assert sum(dist[o] for o in expected["options"]) == pytest.approx(1.0, abs=1e-9)
    raw = np.exp(expected["logprobs"])
    assert dist["male"] == pytest.approx(raw[0] / raw.sum(), rel=1e-3)
    assert dist[OTHER] == pytest.approx(1.0 - raw.sum(), abs=1e-6)


def test_generation_is_seeded_per_image(show_o):
    a = show_o.generate_tokens(PROMPTS, [21, 22], steps=3)
    alone = show_o.generate_tokens(PROMPTS[1:], [22], steps=3)
    other = show_o.generate_tokens(PROMPTS, [23, 24], steps=3)
    assert torch.equal(a[1], alone[0]) and not torch.equal(a, other)
    assert int((a == show_o.mask_id).sum()) == 0 and int(a.max()) < show_o.codebook
    images = show_o.generate(PROMPTS, [21, 22], steps=3)
    assert np.array_equal(np.asarray(images[1]), np.asarray(show_o.decode_tokens(a[1:])[0]))


def test_defaults_follow_upstream(show_o):
    """64-token tiny checkpoint -> the 256 px demo settings (w 1.75, 16 steps); 1024 tokens -> 512 px ones."""
    assert show_o.defaults == show_o_sampling.Settings(cfg=2.75, steps=16, temperature=1.0)
    assert show_o_sampling.defaults_for(1024) == show_o_sampling.Settings(cfg=6.0, steps=50, temperature=1.0)
    assert show_o.provenance()["default_sampling"]["guidance_scale"] == pytest.approx(1.75)


def test_bad_settings_and_options_are_input_errors(show_o, show_o_root):
    with pytest.raises(FairgenError, match="top_p"):
        show_o.generate(PROMPTS[:1], [0], top_p=0.5)
    with pytest.raises(FairgenError, match="unknown sampling"):
        show_o.generate(PROMPTS[:1], [0], guidance=2.0)
    with pytest.raises(FairgenError, match="cfg >= 1"):
        show_o.generate(PROMPTS[:1], [0], cfg=0.5)
    with pytest.raises(FairgenError, match="seeds"):
        show_o.generate(PROMPTS, [0])
    with pytest.raises(FairgenError, match="distinct"):
        show_o.answer_distribution(None, "q", ["a", "a"])
    with pytest.raises(FairgenError, match="graphs"):
        models.load(f"show-o:{show_o_root / 'show-o'}", graphs="true")
    with pytest.raises(FairgenError, match="not a Show-o config"):
        models.load(f"show-o:{show_o_root / 'magvitv2'}")


def test_surrogate_is_deterministic_and_trains_lora(show_o):
    from peft import LoraConfig, get_peft_model

    images = show_o.generate(PROMPTS, [1, 2], steps=2)
    a = show_o.image_token_logprob(PROMPTS, images)
    b = show_o.image_token_logprob(PROMPTS, images)
    assert torch.equal(a, b) and a.shape == (2,) and bool((a < 0).all())
    peft = get_peft_model(show_o.lora_root, LoraConfig(r=2, target_modules=show_o.lora_targets, init_lora_weights=False))
    try:
        show_o.image_token_logprob(PROMPTS, images).sum().backward()
        grads = [p.grad for n, p in peft.named_parameters() if "lora_" in n]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    finally:
        peft.unload()
        show_o.lm.requires_grad_(True)  # peft froze the base weights; later tests check gradients flow


def test_surrogate_orders_sequences_as_generation_frequency(tmp_path):
    """Planted: a tiny Show-o with peaked code distributions over a 2x2 grid of 4 codes (256 possible
    images). Sampled 600 times, the sequences' frequencies and their surrogate scores agree in order
    (Spearman's rho over the sequences seen 5 times or more)."""
    from scipy.stats import spearmanr

    root = show_o_tiny.write(tmp_path, image_size=8, vq_levels=3, codebook_dim=2, sharpness=6.0, seed=1)
    model = models.load(f"show-o:{root}", vq=str(tmp_path / "magvitv2"))
    codes = model.generate_tokens(["a nurse"] * 600, list(range(600)), cfg=1.0, steps=2)
    seqs, counts = torch.unique(codes, dim=0, return_counts=True)
    keep = counts >= 5
    assert int(keep.sum()) >= 6
    with torch.no_grad():
        score = model.token_logprob(["a nurse"] * int(keep.sum()), seqs[keep])
    rho = spearmanr(counts[keep].numpy(), score.numpy()).statistic
    assert rho > 0.4, rho  # 0.65 here; 0.47-0.54 with 3000 samples (docs/models.md)


def test_locate_and_audit_through_the_cli(show_o_root, tmp_path):
    """`fairgen locate --model show-o:<dir>` end to end (it audits first, through the same CLI run): the
    MAGVIT-v2 and Phi-1.5 directories beside the checkpoint are found without options, and the findings
    say what the LM audit of a parallel decoder measures."""
    from typer.testing import CliRunner

    from conftest import write_suite
    from fairgen.cli import app

    suite = write_suite(tmp_path / "suite.yaml", ["nurse", "firefighter"])
    out = tmp_path / "locate"
    result = CliRunner().invoke(app, ["locate", "--model", f"show-o:{show_o_root / 'show-o'}", "--suite", str(suite),
                                      "-n", "2", "--perception", "world", "--sequences", "2", "--labelled",
                                      "world:16", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    audit = json.loads((out / "audit" / "results.json").read_text())
    assert [p["n_images"] for p in audit["prompts"]] == [2, 2]
    assert "pytorch_model.safetensors" in (out / "audit" / "manifest.json").read_text()
    findings = json.loads((out / "findings.json").read_text())
    assert {"understanding", "tokenizer", "language_model", "verdicts"} <= set(findings)
    assert any("decodes in parallel" in n for n in findings["notes"])


def test_fix_through_the_cli(show_o_root, tmp_path):
    """`fairgen fix --model show-o:<dir>`: LoRA on the Phi LM trained on the masked-token surrogate (SFT then
    BPO), the adapter saved and the after-audit run with it."""
    from typer.testing import CliRunner

    from conftest import write_suite
    from fairgen.cli import app

    suite = str(write_suite(tmp_path / "suite.yaml", ["nurse", "firefighter"]))
    out = tmp_path / "fix"
    result = CliRunner().invoke(app, [
        "fix", "--model", f"show-o:{show_o_root / 'show-o'}", "--train-suite", suite, "--test-suite", suite,
        "--data-source", "world", "--perception", "world", "--images-per-group", "1", "--sft-steps", "2",
        "--bpo-steps", "2", "--units-per-batch", "2", "-n", "2", "--explicit-concepts", "0", "--check-suites", "none",
        "--understanding-images", "0", "--out", str(out)])
    assert result.exit_code == 0, (result.output, result.exception)
    report = json.loads((out / "fix_report.json").read_text())
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "show-o" in json.dumps(report)


def test_clip_variant_option_logprobs_match_upstream(tmp_path):
    """A -w-clip-vit checkpoint (CLIP-L/14-336 geometry: 576 features through the projector): option
    log-probabilities as upstream's inference_mmu.py input and create_attention_mask_for_mmu_vit give them."""
    root = show_o_tiny.write(tmp_path, w_clip_vit=True)
    model = models.load(f"show-o:{root}")
    expected = FIXTURE["options"]
    ours = model.option_logprobs(fixture_image(), expected["question"], expected["options"])
    np.testing.assert_allclose(ours.numpy(), FIXTURE["clip_options"], atol=1e-5)
    assert model.understanding_embeddings([fixture_image()]).shape == (1, 576, 64)


def test_caption_logprob_is_the_answer_score(show_o):
    """caption_logprob (fix's understanding-sft) scores a text exactly as answer_distribution scores an answer."""
    from fairgen.fix.caption import CAPTION_QUESTION, caption_logprob

    image = fixture_image()
    per_token = caption_logprob(show_o, [image], ["male"])
    n_tokens = len(show_o.tokenizer(" male")["input_ids"]) + 1
    whole = show_o.option_logprobs(image, CAPTION_QUESTION, ["male"])
    assert per_token.requires_grad
    assert float(per_token[0].detach()) * n_tokens == pytest.approx(float(whole[0]), rel=1e-5)
