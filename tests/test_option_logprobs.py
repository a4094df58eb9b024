"""The option scoring of the transformers families (models/hf/chat.py, models/hf/checks.py) on a small random causal LM (a
2-layer Llama built from its config): every continuation's log-probability equals a plain forward pass
over the unpadded sequence summed by hand, whatever the other options' lengths, and the distribution over
options follows from them. Fast (well under a second), so the mutation run (docs/testing.md) uses it;
test_option_scoring.py checks the same on the tiny Janus and Emu3 checkpoints through answer_distribution."""

from __future__ import annotations

import math

import pytest
import torch

from fairgen.models import OTHER
from fairgen.models.hf import chat as hf
from fairgen.models.hf.checks import check_options
from fairgen.types import FairgenError

PAD = 0


@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def _by_hand(lm, context: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([context + continuation])
    with torch.no_grad():
        logits = lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double()
    n = len(context)
    return math.fsum(float(torch.log_softmax(logits[n + k - 1], 0)[t]) for k, t in enumerate(continuation))


@pytest.mark.parametrize("continuations", [
    [[7], [3, 9, 4, 11], [12, 5]],  # padded to the longest
    [[8, 8, 2]],  # one option alone
    [[5, 6], [6, 5]],  # same length, other order
])
def test_option_logprobs_equal_plain_forward_passes_summed_by_hand(lm, continuations):
    context_ids = [1, 17, 23, 4, 9]
    context = {"input_ids": torch.tensor([context_ids]), "attention_mask": torch.ones(1, 5, dtype=torch.long),
               "note": "not a tensor: left out of the batch"}
    got = hf.option_logprobs(lm, context, continuations, PAD)
    assert got.dtype == torch.float64 and got.shape == (len(continuations),)
    assert not got.requires_grad
    want = [_by_hand(lm, context_ids, c) for c in continuations]
    assert got.tolist() == pytest.approx(want, abs=1e-5)
    # the context stays as it was given (one row, not the batch)
    assert context["input_ids"].shape == (1, 5) and context["attention_mask"].shape == (1, 5)


def test_a_left_padded_context_is_scored_as_the_unpadded_one(lm):
    """A context whose attention mask hides its first tokens scores like the context without them (rotary
    attention depends on relative positions only) only if the batch keeps the context's own mask."""
    masked = {"input_ids": torch.tensor([[PAD, PAD, 1, 17, 23]]), "attention_mask": torch.tensor([[0, 0, 1, 1, 1]])}
    full = {"input_ids": torch.tensor([[1, 17, 23]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    conts = [[4, 5], [6]]
    unmasked = {"input_ids": masked["input_ids"], "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    a = hf.option_logprobs(lm, full, conts, PAD)
    b = hf.option_logprobs(lm, unmasked, conts, PAD)
    assert hf.option_logprobs(lm, masked, conts, PAD).tolist() == pytest.approx(a.tolist(), abs=1e-5)
    assert (a - b).abs().max() > 1e-3  # the padding tokens, seen, change the scores


def test_option_distribution_renormalises_and_keeps_the_outside_mass():
    logprobs = torch.log(torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64))
    out = hf.option_distribution(["a", "b", "c"], logprobs, OTHER)
    assert list(out) == ["a", "b", "c", OTHER]
    assert out == pytest.approx({"a": 2 / 6, "b": 1 / 6, "c": 3 / 6, OTHER: 0.4}, abs=1e-12)
    assert all(isinstance(v, float) for v in out.values())
    # tiny masses renormalise without underflow, and the outside mass is then all but 1
    tiny = hf.option_distribution(["a", "b"], torch.tensor([-800.0, -800.0 + math.log(3)], dtype=torch.float64), OTHER)
    assert tiny == pytest.approx({"a": 0.25, "b": 0.75, OTHER: 1.0}, abs=1e-12)
    # mass above one (rounding) never makes OTHER negative
    over = hf.option_distribution(["a"], torch.tensor([1e-12], dtype=torch.float64), OTHER)
    assert over == {"a": 1.0, OTHER: 0.0}


def test_pad_continuations_marks_real_tokens():
    like = torch.zeros(1, 2, dtype=torch.int32)
    ids, valid = hf.pad_continuations([[4], [5, 6, 7], [8, 9]], 3, like)
    assert ids.tolist() == [[4, 3, 3], [5, 6, 7], [8, 9, 3]] and ids.dtype == torch.int32
    assert valid.dtype == torch.bool
    assert valid.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    # both on like's device: "meta" stands in for a GPU, another device than the CPU's default
    ids, valid = hf.pad_continuations([[4], [5, 6]], 3, torch.zeros(1, 2, dtype=torch.long, device="meta"))
    assert (ids.device.type, valid.device.type) == ("meta", "meta") and ids.shape == valid.shape == (2, 2)


@pytest.mark.parametrize("options", [[], ["a", "a"], ["a", " "], ["a", ""], ["a", 3]])
def test_check_options_refuses_what_cannot_be_scored(options):
    with pytest.raises(FairgenError, match=r"^fam: answer options must be distinct non-empty strings"):
        check_options("fam", options)


def test_check_options_accepts_distinct_strings():
    check_options("fam", ["male", "female", "unknown person"])
