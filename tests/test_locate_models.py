"""The locate hooks and probes on real architectures: a random fairgen-tiny, and tiny random Janus and Emu3
checkpoints built offline (numbers meaningless, code paths real)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from fairgen import models, perception
from fairgen.labelled import labelled_set
from fairgen.locate import hidden_probe, measure_prompt, round_trip, summarise, vision_probes
from fairgen.locate.lm_audit import GEN_BATCH, merge, prompt_groups, sample_sequences, score_sequences
from fairgen.models.tiny import TinyModel
from fairgen.models.tiny.model import LMConfig, TinyLM
from fairgen.models.tiny.text import Vocab, lexicon
from fairgen.models.tiny.tokenizer import TokenizerConfig, VisionTokenizer
from fairgen.types import Prompt
from test_models_checkpoints import emu3_dir, janus_dir  # noqa: F401  (session fixtures)

PROMPTS = [Prompt("nurse", "A photo of the face of a nurse, a person", "nurse"),
           Prompt("judge", "A photo of the face of a judge, a person", "judge")]


def random_tiny(seed: int = 0) -> TinyModel:
    """Untrained fairgen-tiny with small dims, and word tokens as the shipped checkpoint has."""
    torch.manual_seed(seed)
    tok = VisionTokenizer(TokenizerConfig(width=16))
    words = lexicon(["A photo of the face of a nurse, a person", "female male White Black Asian Indian judge"])
    vocab = Vocab(tok.cfg.n_codes, tok.cfg.n_tokens, words)
    lm = TinyLM(LMConfig(vocab_size=vocab.size, n_image_tokens=vocab.n_image_tokens, n_layer=2, n_head=2, n_embd=32))
    return TinyModel(tok, lm, words=words)


@pytest.fixture(scope="module")
def tiny() -> TinyModel:
    torch.set_num_threads(1)
    return random_tiny()


@pytest.fixture(scope="module")
def janus(janus_dir):  # noqa: F811
    torch.set_num_threads(1)
    return models.load(f"janus:{janus_dir}", device="cpu")


@pytest.fixture(scope="module")
def emu3(emu3_dir):  # noqa: F811
    torch.set_num_threads(1)
    return models.load(f"emu3:{emu3_dir}", device="cpu", image_area=32 * 32)  # a 4x4 code grid


def _head(model, hidden: torch.Tensor) -> torch.Tensor:
    """The image-code logits each family computes from a final hidden state."""
    if isinstance(model, TinyModel):
        off, n = model.vocab.image_offset, model.vocab.n_codes
        return F.linear(hidden, model.lm.wte.weight)[:, off:off + n]
    if model.spec.startswith("janus"):
        return model.hf.model.generation_head(hidden.to(model.device))
    return model._visual_logits(hidden.to(model.device))


@pytest.mark.parametrize("name", ["tiny", "janus", "emu3"])
def test_lm_hooks_agree_with_generation_and_scoring(name, request) -> None:
    """generate_tokens is what generate decodes; image_token_logits scores what token_logprob scores; the
    image-start hidden state gives the first code's logits."""
    model = request.getfixturevalue(name)
    codes = model.generate_tokens(PROMPTS, [3, 4], cfg=1.0, temperature=1.0)
    images = model.generate(PROMPTS, [3, 4], cfg=1.0, temperature=1.0)
    # Decoded as the same batch: the VQ decoder's convolutions round differently at another batch size.
    assert np.array_equal(np.asarray(images[0]), np.asarray(model.decode_tokens(codes)[0]))
    with torch.no_grad():
        logits = model.image_token_logits(PROMPTS, codes)
        mean_logp = torch.log_softmax(logits, -1).gather(-1, codes.to(logits.device)[..., None]).squeeze(-1).mean(-1)
        scored = model.image_token_logprob(PROMPTS, codes) if name == "tiny" else model.token_logprob(PROMPTS, codes)
    assert logits.shape[:2] == codes.shape and logits.dtype == torch.float32
    assert torch.allclose(mean_logp, scored, atol=1e-5)
    hidden = model.image_start_hidden(PROMPTS)
    assert hidden.shape[0] == 2 and hidden.dim() == 2
    with torch.no_grad():
        assert torch.allclose(_head(model, hidden).float().cpu(), logits[:, 0].cpu(), atol=1e-4)


@pytest.mark.parametrize("name", ["tiny", "janus", "emu3"])
def test_probes_and_lm_audit_run_end_to_end(name, request) -> None:
    model = request.getfixturevalue(name)
    labelled = labelled_set("world:32")
    probes = vision_probes(model, labelled, batch_size=16)
    assert set(probes) == {"tokenizer", "understanding"}
    for path in probes:
        acc = probes[path]["gender"]["balanced_accuracy"]
        assert probes[path]["features"] > 0 and 0.0 <= acc <= 1.0
    assert set(probes["tokenizer"]["race"]["accuracy"]) == {"white", "black", "asian", "indian"}
    rt = round_trip(model, labelled_set("world:16"), perception.load("world"), batch_size=8)
    assert rt["n_images"] == 16 and rt["looks_used"] == 1
    measured = [measure_prompt(model, p, 0, 2, seed=1) for p in PROMPTS]
    assert np.array(measured[0]["race"]["loglik"]).shape == (4, 2)
    # a later look's sequences continue the first look's: the first two of 0..3 are 0..1
    longer = measure_prompt(model, PROMPTS[0], 0, 3, seed=1)
    assert np.allclose(np.array(longer["gender"]["loglik"])[:, :2], measured[0]["gender"]["loglik"], atol=1e-4)
    majority = {"nurse": {"gender": "female", "race": "white"}}
    controlled = summarise(PROMPTS, [merge([m]) for m in measured], majority)
    s = controlled["gender"]["summary"]
    assert s["n_prompts"] == 2 and s["n_scored"] == 1 and s["hit_rate"] in (0.0, 1.0)
    assert s["skew_ci"][0] <= s["skew_ci"][1]
    assert controlled["race"]["prompts"][1]["hit"] is None  # no audit majority: not scored
    assert sum(controlled["race"]["prompts"][0]["shares"].values()) == pytest.approx(1.0)
    probe = hidden_probe(model, PROMPTS, {"nurse": {"gender": {"female": 0.9, "male": 0.1}}})
    assert probe["gender"]["n_variants"] == 2 * 10 and probe["gender"]["agreement"] in (0.0, 1.0)
    assert sum(probe["race"]["prompts"][0]["probe_shares"].values()) == pytest.approx(1.0, abs=1e-5)


def test_sequences_sampled_across_prompts_are_each_prompts_own(tiny) -> None:
    """The LM audit samples several prompts' sequences in one generation call: each prompt gets the
    sequences it gets alone (per-image seeds), and scoring given them equals scoring that samples itself."""
    together = sample_sequences(tiny, PROMPTS, 1, 4, seed=4)
    alone = [sample_sequences(tiny, [p], 1, 4, seed=4)[0] for p in PROMPTS]
    assert [t.shape[0] for t in together] == [3, 3]
    assert all(torch.equal(a, b) for a, b in zip(together, alone))
    assert not torch.equal(together[0], together[1])
    assert measure_prompt(tiny, PROMPTS[1], 1, 4, 4, codes=together[1]) == measure_prompt(tiny, PROMPTS[1], 1, 4, 4)
    groups = prompt_groups(PROMPTS * 40, 3)
    assert [len(g) for g in groups] == [GEN_BATCH // 3] * 3 + [80 - 3 * (GEN_BATCH // 3)]
    assert [p for g in groups for p in g] == PROMPTS * 40
    assert [len(g) for g in prompt_groups(PROMPTS, GEN_BATCH + 1)] == [1, 1]


def test_sequence_scores_are_the_models_own_likelihoods(tiny) -> None:
    """log P(s | v) equals the model's own per-token score (image_token_logprob, a mean) times T; JS of a
    prompt to itself is 0 and to another prompt positive, at most 1 bit."""
    codes = tiny.generate_tokens(PROMPTS[:1] * 3, [0, 1, 2])
    loglik, js = score_sequences(tiny, PROMPTS[0], [PROMPTS[0], PROMPTS[1]], codes)
    with torch.no_grad():
        own = tiny.image_token_logprob(PROMPTS[:1] * 3, codes).double().numpy() * codes.shape[1]
        other = tiny.image_token_logprob(PROMPTS[1:] * 3, codes).double().numpy() * codes.shape[1]
    assert loglik.shape == (2, 3) and np.allclose(loglik[0], own, rtol=1e-4) and np.allclose(loglik[1], other, rtol=1e-4)
    assert np.allclose(js[0], 0.0, atol=1e-6)
    assert (js[1] > 10 * np.abs(js[0]).max()).all() and (js[1] <= 1.0).all()
