"""`judge`: a unified model labels images through answer_distribution."""

from __future__ import annotations

import random
import re

import pytest

from fairgen import models, perception
from fairgen.models.protocols import OTHER
from fairgen.world import read, render


class ReaderModel:
    """A protocol model whose understanding is the world's exact reader: it answers the attribute a question
    names, puts 0.2 of its mass outside the options, and records what it was asked. Used as
    `plugin:test_perception_judge:ReaderModel` (pytest puts this directory on sys.path)."""

    spec = "plugin:test_perception_judge:ReaderModel"
    capabilities = frozenset({"generate", "understand"})
    asked: list[tuple[str, tuple[str, ...]]] = []

    def provenance(self):
        return {"reader": "world"}

    def generate(self, prompts, seeds, **sampling):
        return [render("female", "white", "young", str(p), s) for p, s in zip(prompts, seeds)]

    def answer_distribution(self, image, question, options):
        attr = re.match(r"What is the (\w+) of the person in the image\? Possible answers: ", question).group(
            1
        )
        assert question.endswith(f"Possible answers: {', '.join(options)}. Answer with a single word.")
        ReaderModel.asked.append((attr, tuple(options)))
        truth = read(image).label()[attr]
        return {**{o: 0.8 if o == truth else 0.0 for o in options}, OTHER: 0.2}


def world_renders(n: int, seed: int = 0):
    rng = random.Random(seed)
    truth = [
        {
            "gender": rng.choice(["female", "male"]),
            "race": rng.choice(["white", "black", "asian", "indian"]),
            "age": rng.choice(["young", "old"]),
        }
        for _ in range(n)
    ]
    return truth, [render(t["gender"], t["race"], t["age"], "nurse", 1000 + i) for i, t in enumerate(truth)]


def test_judge_asks_each_attribute_and_renormalises_over_the_options():
    backend = perception.load("judge:plugin:test_perception_judge:ReaderModel,face=whole")
    assert backend.name == "judge:face=whole,model=plugin:test_perception_judge:ReaderModel"
    truth, images = world_renders(6)
    ReaderModel.asked.clear()
    out = backend.perceive(images)
    assert ReaderModel.asked[:3] == [
        ("gender", ("male", "female")),
        ("race", ("white", "black", "asian", "indian")),
        ("age", ("young", "old")),
    ]
    for p, t in zip(out, truth):
        assert p.face and p.box == (0, 0, 64, 64)
        assert p.label() == t
        assert all(sum(probs.values()) == pytest.approx(1.0) for probs in p.probs.values())
    assert backend.provenance()["model_provenance"] == {"reader": "world"}


def test_judge_with_trained_tiny_reads_gender_of_world_renders():
    try:
        models.load("tiny")
    except Exception as e:  # the packaged checkpoint is built by a colleague; absent until it lands
        pytest.skip(f"fairgen-tiny is not available: models.load('tiny') raised {type(e).__name__}: {e}")
    backend = perception.load("judge:tiny")
    assert backend.name == "judge:face=whole,model=tiny"  # world avatars: the whole image, no photo detector
    truth, images = world_renders(100, seed=7)
    out = backend.perceive(images)
    accuracy = sum(p.label()["gender"] == t["gender"] for p, t in zip(out, truth)) / len(truth)
    assert accuracy >= 0.9, f"judge:tiny gender accuracy {accuracy:.2f} on world renders"
