"""Validation on known truth (slow: trains two fairgen-tiny checkpoints on CPU, about 12 minutes on 2
cores; set FAIRGEN_LOCATE_VALIDATION=DIR to keep the pair in DIR and reuse it on the next run): locate names
the language model for a model whose LM learned a skewed spec, and the vision tokenizer for a model whose LM
learned balanced data but whose decoder turns young women into men."""

from __future__ import annotations

import os

import pytest
import torch

from fairgen import suites
from fairgen.locate import locate
from fairgen.models.tiny.plant import validation_pair
from fairgen.locate.verdict import BIASED, NOT_BIASED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.set_num_threads(2)
    root = os.environ.get("FAIRGEN_LOCATE_VALIDATION") or tmp_path_factory.mktemp("validation")
    return validation_pair(root)


def _run(checkpoint, out) -> dict:
    prompts = suites.load("occupations:test")[:6]  # the six concepts the validation LMs are trained on
    return locate(f"tiny:{checkpoint}", prompts, out, images_per_prompt=64, labelled="world:400", sequences=16)


def test_language_model_bias_is_located_in_the_language_model(pair, tmp_path) -> None:
    v = _run(pair[0], tmp_path / "lm")["verdicts"]
    assert v["culprits"] == ["language_model"]
    assert v["tokenizer"]["verdict"] == NOT_BIASED
    assert v["partial_alignment"]["attributes"]["gender"] is True


def test_tokenizer_bias_is_located_in_the_tokenizer(pair, tmp_path) -> None:
    findings = _run(pair[1], tmp_path / "tok")
    v = findings["verdicts"]
    assert v["culprits"] == ["tokenizer"] and v["tokenizer"]["attributes"]["gender"] == BIASED
    gender = findings["tokenizer"]["round_trip"]["gender"]
    assert gender["worst"] == "female" and gender["groups"]["male"]["rate"] > 0.95
    # the tokenizer still encodes gender: encoding is not the bias, the decoder's change is
    assert findings["tokenizer"]["probes"]["tokenizer"]["gender"]["balanced_accuracy"] > 0.9
