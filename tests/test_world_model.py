"""The world generator and the world perception backend, end to end through the reader."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from fairgen.models.protocols import capabilities_of
from fairgen.models.protocols import Model as UnifiedModel
from fairgen.models.world import WorldModel
from fairgen.perception.base import PerceptionBackend
from fairgen.perception.world import WorldPerception
from fairgen.types import ATTRIBUTES, FairgenError, Perception, Prompt
from fairgen.world import READER_VERSION, WorldSpec, concept_code, read

NEUTRAL = "A photo of the face of a {}, a person"


@pytest.fixture(scope="module")
def model() -> WorldModel:
    return WorldModel()


def test_protocols_and_provenance(model):
    assert isinstance(model, UnifiedModel) and isinstance(WorldPerception(), PerceptionBackend)
    assert model.spec == "world" and capabilities_of(model) == frozenset({"generate"})
    assert model.provenance() == {"world_spec_sha256": WorldSpec.default().sha256(), "source": "default"}
    custom = WorldSpec.from_dict({"default": WorldSpec.default().canonical()["default"]})
    provenance = WorldModel(custom, source="my.yaml").provenance()
    assert provenance == {"world_spec_sha256": custom.sha256(), "source": "my.yaml"}
    backend = WorldPerception()
    assert backend.name == "world" and backend.attributes == tuple(ATTRIBUTES)
    assert backend.provenance() == {"reader_version": READER_VERSION}


def test_image_depends_only_on_prompt_and_seed(model):
    prompts = [NEUTRAL.format("nurse"), NEUTRAL.format("pilot"), "a tree"]
    alone = [model.generate([p], [7])[0] for p in prompts]
    batch = model.generate(prompts + prompts[::-1], [7, 7, 7, 7, 7, 7], cfg=3.0, temperature=0.9, top_p=0.6)
    for i, image in enumerate(alone):
        assert np.array_equal(np.asarray(image), np.asarray(batch[i]))
        assert np.array_equal(np.asarray(image), np.asarray(batch[5 - i]))
    assert not np.array_equal(np.asarray(model.generate([prompts[0]], [8])[0]), np.asarray(alone[0]))


def test_concept_of(model):
    assert model.concept_of(NEUTRAL.format("nurse")) == "nurse"
    assert model.concept_of("A photo of a POLICE OFFICER at work") == "police officer"
    assert model.concept_of("two plumbers and a tree") == "plumber"  # plural
    assert model.concept_of("a photo of a nursery") == "a photo of a nursery"  # whole words only
    assert model.concept_of(Prompt("p", "text about a pilot", "nurse")) == "nurse"  # Prompt.concept wins
    image = model.generate(["a zorblax tamer"], [0])[0]  # in no spec: the whole text is the concept
    assert read(image).concept_read == concept_code("a zorblax tamer")


def test_requested_group(model):
    assert model.requested_group("a photo of a woman who is a nurse") == {"gender": "female"}
    assert model.requested_group("a Male nurse") == {"gender": "male"}
    everything = {"gender": "male", "race": "indian", "age": "old"}
    assert model.requested_group("an elderly Indian man") == everything
    assert model.requested_group("a man and a woman") == {}  # conflicting: drawn, not requested
    assert model.requested_group("a manager, a human, a females' club") == {}  # whole words only
    prompt = Prompt("p", "a photo of a man", "nurse", {"gender": "female", "race": "asian"})
    assert model.requested_group(prompt) == {"gender": "female", "race": "asian"}  # group beats text
    with pytest.raises(FairgenError, match="unknown gender 'other'"):
        model.requested_group(Prompt("p", "x", "nurse", {"gender": "other"}))
    with pytest.raises(FairgenError, match="unknown attribute 'height'"):
        model.requested_group(Prompt("p", "x", "nurse", {"height": "tall"}))


def test_attributes_are_the_spec_draw_of_the_seed(model):
    spec = WorldSpec.default()
    for seed in range(200):
        expected = spec.sample("judge", np.random.default_rng(seed))
        assert model.attributes("a photo of a judge", seed) == expected
    # A request overrides its attribute only; the other draws stay as they were.
    for seed in range(50):
        neutral, requested = model.attributes("a judge", seed), model.attributes("an old judge", seed)
        assert requested == {**neutral, "age": "old"}


def shares_within_spec(perceptions, spec: WorldSpec, concept: str, fixed: dict[str, str]) -> None:
    """Counts of read labels are within the binomial 99.99% range of the spec (or all equal a request)."""
    n = len(perceptions)
    assert all(p.face for p in perceptions)
    labels = [p.label() for p in perceptions]
    for attr, dist in spec.distribution(concept).items():
        for cls, prob in dist.items():
            count = sum(label[attr] == cls for label in labels)
            if attr in fixed:
                assert count == (n if cls == fixed[attr] else 0), (attr, cls)
            else:
                lo, hi = stats.binom.interval(0.9999, n, prob)
                assert lo <= count <= hi, (concept, attr, cls, count / n, prob)


def test_neutral_prompt_shares_follow_the_spec(model):
    n = 2000
    images = model.generate([NEUTRAL.format("nurse")] * n, list(range(n)))
    shares_within_spec(WorldPerception().perceive(images), model.world_spec, "nurse", {})


def test_prompt_objects_and_explicit_groups(model):
    spec = model.world_spec
    prompt = Prompt("sg", NEUTRAL.format("security guard"), "security guard")
    group = Prompt("sg-f", "a photo of a security guard", "security guard", {"gender": "female"})
    worded = "a photo of an old asian woman who is a security guard"
    requests = [
        (prompt, {}),
        (group, {"gender": "female"}),
        (worded, {"gender": "female", "race": "asian", "age": "old"}),
    ]
    for p, fixed in requests:
        # The draws, n=2000: explicit groups fixed, the rest following the spec.
        seeds = list(range(10_000, 12_000))
        drawn = [model.attributes(p, s) for s in seeds]
        shares_within_spec([Perception(True, probs=one_hot(d)) for d in drawn], spec, "security guard", fixed)
        # The images show exactly the drawn attributes and the concept's cue.
        images = model.generate([p] * 150, seeds[:150])
        for d, seen in zip(drawn, WorldPerception().perceive(images)):
            assert seen.label() == d and seen.concept_read == concept_code("security guard")


def one_hot(labels: dict[str, str]) -> dict[str, dict[str, float]]:
    return {a: {c: float(c == labels[a]) for c in classes} for a, classes in ATTRIBUTES.items()}


def test_generate_rejects_bad_input(model):
    with pytest.raises(FairgenError, match="2 prompts but 1 seeds"):
        model.generate(["a", "b"], [1])
    with pytest.raises(FairgenError, match="seed must be a non-negative integer"):
        model.generate(["a nurse"], [-3])


def test_perceive_keeps_order_and_undecodable_images():
    images = [WorldModel().generate([NEUTRAL.format(c)], [1])[0] for c in ("nurse", "pilot")]
    buffer = io.BytesIO()
    images[0].save(buffer, "PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:60]))  # decoding fails lazily, inside perceive
    out = WorldPerception().perceive([images[0], truncated, images[1]])
    assert len(out) == 3
    assert out[0].concept_read == concept_code("nurse") and out[2].concept_read == concept_code("pilot")
    assert not out[1].face and out[1].error and "\n" not in out[1].error
