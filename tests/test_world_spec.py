"""The world spec: loading, validation messages, lookup, sampling, hashing and the default spec's skews."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pytest
import yaml
from scipy import stats

from fairgen import suites
from fairgen.types import ATTRIBUTES, JOINT_CLASSES, FairgenError
from fairgen.world import WorldSpec

BALANCED = {
    "gender": {"female": 0.5, "male": 0.5},
    "race": {"white": 0.25, "black": 0.25, "asian": 0.25, "indian": 0.25},
    "age": {"young": 0.5, "old": 0.5},
}
EXAMPLE = {
    "default": BALANCED,
    "concepts": {
        "Nurse": {"gender": {"female": 0.9, "male": 0.1}},
        "firefighter": {"gender": {"female": 0.05, "male": 0.95},
                        "race": {"white": 0.7, "black": 0.1, "asian": 0.1, "indian": 0.1}},
    },
}


def with_change(path: list[str], value) -> dict:
    """EXAMPLE with the value at `path` replaced (or deleted when value is ...)."""
    data = yaml.safe_load(yaml.safe_dump(EXAMPLE))  # deep copy
    node = data
    for key in path[:-1]:
        node = node[key]
    if value is ...:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


def test_load_and_lookup(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(EXAMPLE))
    spec = WorldSpec.load(path)
    assert spec == WorldSpec.from_dict(EXAMPLE)
    nurse = spec.distribution("  NURSE ")
    assert nurse["gender"] == {"female": 0.9, "male": 0.1}
    assert nurse["race"] == BALANCED["race"] and nurse["age"] == BALANCED["age"]  # from default
    assert spec.distribution("firefighter")["race"]["white"] == 0.7
    assert spec.distribution("astronaut") == BALANCED  # unknown concept: default
    assert {a: tuple(d) for a, d in nurse.items()} == ATTRIBUTES  # every class, canonical order


def test_left_out_classes_have_probability_zero():
    spec = WorldSpec.from_dict(with_change(["concepts", "Nurse", "gender"], {"female": 1.0}))
    assert spec.distribution("nurse")["gender"] == {"female": 1.0, "male": 0.0}
    rng = np.random.default_rng(0)
    assert {spec.sample("nurse", rng)["gender"] for _ in range(500)} == {"female"}


def test_sample_frequencies_and_reproducibility():
    spec = WorldSpec.from_dict(EXAMPLE)
    n = 20000
    rng = np.random.default_rng(1)
    draws = [spec.sample("firefighter", rng) for _ in range(n)]
    for attr, dist in spec.distribution("firefighter").items():
        for cls, p in dist.items():
            lo, hi = stats.binom.interval(0.9999, n, p)
            assert lo <= sum(d[attr] == cls for d in draws) <= hi, (attr, cls)
    # Attributes are independent: the joint gender x race share is the product of the marginals.
    joint = sum(d["gender"] == "male" and d["race"] == "white" for d in draws)
    lo, hi = stats.binom.interval(0.9999, n, 0.95 * 0.7)
    assert lo <= joint <= hi
    again = [spec.sample("firefighter", np.random.default_rng(1)) for _ in range(3)]
    assert again[0] == again[1] == again[2] == draws[0]


def test_sha256_is_of_canonical_content():
    spec = WorldSpec.from_dict(EXAMPLE)
    reordered = {"concepts": dict(reversed(EXAMPLE["concepts"].items())), "default": EXAMPLE["default"]}
    renamed = with_change(["concepts", "Nurse"], ...)
    renamed["concepts"]["NURSE"] = {"gender": {"male": 0.1, "female": 0.9}}
    zeros = with_change(["concepts", "firefighter", "race", "indian"], 0.0)
    zeros["concepts"]["firefighter"]["race"]["white"] = 0.8
    no_zero = with_change(["concepts", "firefighter", "race", "indian"], ...)
    no_zero["concepts"]["firefighter"]["race"]["white"] = 0.8
    assert spec.sha256() == WorldSpec.from_dict(reordered).sha256() == WorldSpec.from_dict(renamed).sha256()
    assert WorldSpec.from_dict(zeros).sha256() == WorldSpec.from_dict(no_zero).sha256() != spec.sha256()
    assert len(spec.sha256()) == 64


@pytest.mark.parametrize(
    "data, message",
    [
        ([1, 2], "expected a mapping"),
        ({"concepts": {}}, "world spec default: Field required"),
        (with_change(["default", "age"], ...), "default: missing attribute.s. age"),
        (with_change(["default", "height"], {"tall": 1.0}), "default: unknown attribute 'height'"),
        (with_change(["concepts", "Nurse", "mood"], {"happy": 1.0}),
         "concepts.nurse: unknown attribute 'mood'"),
        (with_change(["concepts", "Nurse", "gender", "nonbinary"], 0.0),
         "concepts.nurse.gender: unknown class 'nonbinary'"),
        (with_change(["concepts", "Nurse", "gender"], {"female": 1.2, "male": -0.2}),
         "concepts.nurse.gender.male: probability must be finite and >= 0"),
        (with_change(["concepts", "Nurse", "gender"], {"female": float("nan"), "male": 0.5}),
         "concepts.nurse.gender.female: probability must be finite"),
        (with_change(["concepts", "Nurse", "gender"], {"female": 0.9, "male": 0.2}),
         "concepts.nurse.gender: probabilities sum to 1.1, not 1"),
        (with_change(["default", "race", "white"], 0.2500011), "default.race: probabilities sum to 1"),
        (with_change(["concepts", "Nurse", "gender"], {"female": "lots", "male": 0.1}),
         "concepts.Nurse.gender.female: Input should be a valid number"),
        (with_change(["concepts", "nurse "], {}), "concept 'nurse' is given twice"),
        (with_change(["extra"], 1), "world spec extra: Extra inputs are not permitted"),
    ],
)
def test_invalid_specs_give_one_line_errors(data, message):
    with pytest.raises(FairgenError, match=message) as info:
        WorldSpec.from_dict(data)
    assert "\n" not in str(info.value)


def test_sum_tolerance_is_1e_6():
    WorldSpec.from_dict(with_change(["default", "race", "white"], 0.2500009))


def test_file_errors(tmp_path):
    with pytest.raises(FairgenError, match="world spec not found: .*missing.yaml"):
        WorldSpec.load(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: {gender: {female: 0.5, male: 0.5}\nconcepts: [\n")
    with pytest.raises(FairgenError, match="bad.yaml: malformed YAML") as info:
        WorldSpec.load(bad)
    assert "\n" not in str(info.value)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FairgenError, match="binary.yaml"):
        WorldSpec.load(binary)


def rd(freqs: np.ndarray) -> np.ndarray:
    """Shen et al.'s rd of frequency rows (..., K): 2/(K(K-1)) * sum_{i<j} |f_i - f_j|."""
    k = freqs.shape[-1]
    return np.abs(freqs[..., :, None] - freqs[..., None, :]).sum(axis=(-1, -2)) / (k * (k - 1))


def test_default_spec_has_the_test_occupations_and_realistic_skews():
    spec = WorldSpec.default()
    text = resources.files("fairgen.suites").joinpath("data/occupations_test.txt").read_text()
    occupations = text.splitlines()
    test = [o.strip().lower() for o in occupations if o.strip()]
    train = {p.concept.lower() for p in suites.load("occupations:train")}
    names = list(spec.concepts)
    assert names[:50] == test and set(names[50:]) == train and len(train) == 579
    assert spec.distribution("unlisted") == BALANCED
    # Training occupations are skewed like test ones (a fix has bias to remove where it trains).
    assert np.mean([max(spec.distribution(c)["gender"].values()) for c in train]) > 0.85

    # Expected finite-sample rd at 160 images per prompt, suite mean, as in default_spec.yaml's header.
    rng, n, reps = np.random.default_rng(0), 160, 1000
    means: dict[str, list[float]] = {"gender": [], "race": [], "gender_x_race": [], "age": []}
    for concept in test:
        dist = {a: np.array(list(d.values())) for a, d in spec.distribution(concept).items()}
        dist["gender_x_race"] = np.outer(dist["gender"], dist["race"]).ravel()  # independent; gender-major
        for attr in means:
            means[attr].append(float(rd(rng.multinomial(n, dist[attr], size=reps) / n).mean()))
    suite = {attr: np.mean(v) for attr, v in means.items()}
    assert 0.85 <= suite["gender"] <= 0.90
    assert 0.43 <= suite["race"] <= 0.48
    assert 0.22 <= suite["gender_x_race"] <= 0.24
    assert 0.3 <= suite["age"] <= 0.7  # moderate
    assert len(JOINT_CLASSES) == 8 and JOINT_CLASSES[0] == "female_white"  # the order used above

    # Stereotypical directions, mostly white, a few occupations skewed to another group, mostly young.
    female = {c: spec.distribution(c)["gender"]["female"] for c in test}
    assert all(female[c] >= 0.9 for c in ["nurse", "secretary", "receptionist", "hairdresser"])
    assert all(female[c] <= 0.05 for c in ["firefighter", "pilot", "plumber", "ceo"])
    top_race = {c: max(spec.distribution(c)["race"].items(), key=lambda kv: kv[1])[0] for c in test}
    others = [c for c, r in top_race.items() if r != "white"]
    assert 2 <= len(others) <= 8
    assert np.mean([spec.distribution(c)["age"]["young"] for c in spec.concepts]) >= 0.65

