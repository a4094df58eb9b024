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


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two OpenMP threads waiting on each other made the packaged
    model's 300 answers run past the test timeout."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_packaged_tiny_answers_about_the_image_it_is_shown(one_thread):
    """The packaged checkpoint ships with fairgen: it loads (a failure is a failure, not a skip), and its
    answers follow the image: renders of one concept that differ only in gender get opposite most likely
    genders, and renders that differ only in race get their own races (a model that ignored the image
    would answer them all alike)."""
    from fairgen.models.tiny.data import image_question

    tiny = models.load("tiny")
    races = ("white", "black", "asian", "indian")
    for attr, groups in (("gender", ("female", "male")), ("race", races)):
        answers = []
        for k, group in enumerate(groups):
            gender, race = (group, "white") if attr == "gender" else ("female", group)
            out = tiny.answer_distribution(render(gender, race, "young", "nurse", 40 + k), image_question(attr),
                                           list(groups))
            answers.append(max(groups, key=out.__getitem__))
        assert answers == list(groups), (attr, answers)


def test_judge_with_trained_tiny_reads_gender_of_world_renders(one_thread):
    backend = perception.load("judge:tiny")
    assert backend.name == "judge:face=whole,model=tiny"  # world avatars: the whole image, no photo detector
    truth, images = world_renders(40, seed=7)
    out = backend.perceive(images)
    accuracy = sum(p.label()["gender"] == t["gender"] for p, t in zip(out, truth)) / len(truth)
    assert accuracy >= 0.9, f"judge:tiny gender accuracy {accuracy:.2f} on world renders"
