"""Validation on known truth (slow: builds plant.validation_set — two fairgen-tiny LMs, three decoder plants
and an understanding plant — then locates each on its six occupations; set FAIRGEN_LOCATE_VALIDATION=DIR to
keep the checkpoints in DIR and reuse them). No verdict may be wrong, and at least 90% of the component
verdicts must be decisive within the default budget (issue 27)."""

from __future__ import annotations

import os

import pytest
import torch

from fairgen import suites
from fairgen.locate import locate
from fairgen.models.tiny.plant import VALIDATION_TRUTH, validation_set
from fairgen.locate.verdict import BIASED, COMPONENTS, NOT_BIASED

pytestmark = [pytest.mark.slow, pytest.mark.timeout(7200)]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.set_num_threads(2)
    root = os.environ.get("FAIRGEN_LOCATE_VALIDATION") or tmp_path_factory.mktemp("validation")
    return validation_set(root, device="cuda" if torch.cuda.is_available() else "cpu")


def test_every_planted_variant_gets_its_truth(checkpoints, tmp_path) -> None:
    prompts = suites.load("occupations:test")[:6]  # the six concepts the validation LMs are trained on
    decisive = 0
    for name, truth in VALIDATION_TRUTH.items():
        v = locate(f"tiny:{checkpoints[name]}", prompts, tmp_path / name, images_per_prompt=64,
                   labelled="world:800", sequences=16)["verdicts"]
        for c in COMPONENTS:
            assert v[c]["verdict"] in (truth[c], "inconclusive"), (name, c, v[c]["text"])
            decisive += v[c]["verdict"] in (BIASED, NOT_BIASED)
    assert decisive >= 0.9 * len(VALIDATION_TRUTH) * len(COMPONENTS)
