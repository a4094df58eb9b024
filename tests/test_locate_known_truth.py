"""A cheap known-truth case in the default run (issue 33): the packaged fairgen-tiny is planted by
construction (docs/tiny.md) — its language model learned the skewed spec, its tokenizer keeps every group
on the round trip, and its blank-image answers were trained uniform over the groups. locate must say
exactly that on two occupations, at a small effort (two looks: 32 then 64 sequences per prompt)."""

from __future__ import annotations

import pytest
import torch

from fairgen import models
from fairgen.locate import locate
from fairgen.locate.verdict import BIASED, NOT_BIASED
from fairgen.types import Prompt

PROMPTS = [Prompt("nurse", "A photo of the face of a nurse, a person", "nurse"),
           Prompt("carpenter", "A photo of the face of a carpenter, a person", "carpenter")]


@pytest.mark.timeout(1800)  # seconds when idle; a shared 2-core machine at load 17 took over 600 s
def test_packaged_tiny_gets_its_planted_verdicts(tmp_path) -> None:
    torch.set_num_threads(2)
    findings = locate(models.load("tiny"), PROMPTS, tmp_path / "loc", images_per_prompt=4, labelled="world:32",
                      sequences=32, budget=2, batch_size=32)
    v = findings["verdicts"]
    assert (v["understanding"]["verdict"], v["tokenizer"]["verdict"], v["language_model"]["verdict"]) == \
        (NOT_BIASED, NOT_BIASED, BIASED), v["headline"]
    assert v["culprits"] == ["language_model"]
    lm = findings["language_model"]["controlled"]
    # the spec: nurse 90% female, carpenter 98% male; the LM's own tokens read the same way
    assert lm["gender"]["prompts"][0]["lm_majority"] == "female" and lm["gender"]["prompts"][1]["lm_majority"] == "male"
    assert v["language_model"]["effort"]["sequences"] in (32, 64)
