"""The world renderer: determinism, the visual codes, nuisance, counterfactual pairs and input checks."""

from __future__ import annotations

import hashlib
import itertools
import re

import numpy as np
import pytest

from fairgen.types import ATTRIBUTES, FairgenError
from fairgen.world import concept_code, render
from fairgen.world.render import (
    BACKGROUND_JITTER,
    BACKGROUNDS,
    CLOTHING,
    EYE,
    HAIR_JITTER,
    OLD_HAIR,
    SKIN,
    YOUNG_HAIR,
)

COMBOS = list(itertools.product(ATTRIBUTES["gender"], ATTRIBUTES["race"], ATTRIBUTES["age"]))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def min_pairwise(a: list, b: list | None = None) -> float:
    """Smallest RGB distance between colours of a (pairs within a when b is None) and of b."""
    pairs = itertools.combinations(a, 2) if b is None else itertools.product(a, b)
    return min(float(np.linalg.norm(np.subtract(x, y))) for x, y in pairs)


def test_render_is_64x64_rgb_and_deterministic():
    for i, (g, r, a) in enumerate(COMBOS):
        first = render(g, r, a, "nurse", 1000 + i)
        assert first.size == (64, 64) and first.mode == "RGB"
        assert np.array_equal(pixels(first), pixels(render(g, r, a, "nurse", 1000 + i)))


def test_pixels_are_pinned():
    """512 renders (every attribute combination, 37 concepts, seeds covering every position jitter) hash to
    the digest of the renderer as first written: drawing faster (render._layers) must not move a pixel,
    since the world's images, records and fix's balanced sets are compared across versions."""
    digest = hashlib.sha256()
    for i in range(512):
        digest.update(render(*COMBOS[i % len(COMBOS)], f"concept {i % 37}", 7919 * i).tobytes())
    assert digest.hexdigest() == "fca40888f0da8ba6babf4144ccae069f21c4815b0db5e2ab0a78a3500d07fc10"


def test_seed_drives_nuisance():
    images = [pixels(render("female", "white", "young", "nurse", s)) for s in range(40)]
    corners = {tuple(im[0, 0]) for im in images}
    assert len(corners) >= 30  # background colour (6 bases x channel jitter) varies with the seed
    # Position jitter: the face colour's bounding box moves.
    skin = np.array(SKIN["white"])
    lefts = {int(np.nonzero((im == skin).all(axis=-1).any(axis=0))[0].min()) for im in images}
    tops = {int(np.nonzero((im == skin).all(axis=-1).any(axis=1))[0].min()) for im in images}
    assert len(lefts) == 7 and len(tops) == 7  # jitter -3..3 on each axis


@pytest.mark.parametrize(
    "change",
    [("gender", "female", "male"), ("race", "white", "indian"), ("age", "young", "old")],
)
def test_counterfactual_pairs_differ_only_in_the_attribute_cue(change):
    attr, a, b = change
    for seed in range(20):
        base = {"gender": "male", "race": "asian", "age": "young"}
        one = pixels(render(**{**base, attr: a}, concept="teacher", seed=seed))
        two = pixels(render(**{**base, attr: b}, concept="teacher", seed=seed))
        changed = (one != two).any(axis=-1)
        if attr == "gender":
            # Long hair vs background, from the temples (dy -4, centre y >= 23) down: never in the top rows.
            assert 150 <= changed.sum() <= 500 and not changed[:19].any()
        elif attr == "race":
            assert 300 <= changed.sum() <= 343  # the face ellipse minus the eyes
            assert (one[changed] == SKIN[a]).all() and (two[changed] == SKIN[b]).all()
        else:
            # Hair colour only; the face and the background keep their colours.
            assert changed.sum() >= 60
            assert not (one[changed] == SKIN["asian"]).all(axis=-1).any()
    # The concept changes the clothing and emblem, not the person.
    one = pixels(render("female", "black", "old", "nurse", 5))
    two = pixels(render("female", "black", "old", "firefighter", 5))
    rows = np.nonzero((one != two).any(axis=-1).any(axis=1))[0]
    assert rows.size and rows.min() >= 36  # below the chin (torso top is at dy 14, centre y 23..29)


def test_palettes_are_well_separated():
    skins = list(SKIN.values())
    hair = list(YOUNG_HAIR.values()) + list(OLD_HAIR.values())
    hair_jitter, bg_jitter = HAIR_JITTER * 3**0.5, BACKGROUND_JITTER * 3**0.5  # worst-case colour shift
    assert min_pairwise(skins) >= 90
    assert min_pairwise(hair, skins) - hair_jitter >= 60
    assert min_pairwise(list(BACKGROUNDS), skins) - bg_jitter >= 80
    assert min_pairwise(list(BACKGROUNDS), hair) - bg_jitter - hair_jitter >= 50
    assert min_pairwise(list(CLOTHING)) >= 95
    assert len(CLOTHING) == 8


def test_hair_shows_age_and_skin_shows_race():
    for seed in range(30):
        for age in ATTRIBUTES["age"]:
            im = pixels(render("male", "black", age, "judge", seed))
            colours = {tuple(c) for c in im.reshape(-1, 3)}
            palette = YOUNG_HAIR if age == "young" else OLD_HAIR
            colours.discard(EYE)
            hair = [c for c in colours
                    if min(np.abs(np.subtract(c, p)).max() for p in palette.values()) <= HAIR_JITTER]
            assert len(hair) == 1  # exactly one hair colour, from the right class, within its jitter
            assert SKIN["black"] in colours


def test_concept_code_is_deterministic_normalised_and_distinct():
    assert concept_code("nurse") == "3-11000000"  # stored runs depend on these codes: never change them
    assert concept_code("firefighter") == "1-11111110"
    assert concept_code("  NURSE ") == concept_code("nurse")
    assert re.fullmatch(r"[0-7]-[01]{8}", concept_code("a person who juggles"))
    codes = {concept_code(f"concept {i}") for i in range(200)}
    assert len(codes) >= 185  # 2048 codes: 200 names collide only occasionally (expected ~9 collisions)


@pytest.mark.parametrize(
    "args, message",
    [
        (("woman", "white", "young", "nurse", 0), "unknown gender 'woman'"),
        (("female", "latino", "young", "nurse", 0), "unknown race 'latino'"),
        (("female", "white", "middle", "nurse", 0), "unknown age 'middle'"),
        (("female", "white", "young", "   ", 0), "concept name is empty"),
        (("female", "white", "young", "nurse", -1), "seed must be a non-negative integer"),
        (("female", "white", "young", "nurse", 1.5), "seed must be a non-negative integer"),
    ],
)
def test_render_rejects_bad_input(args, message):
    with pytest.raises(FairgenError, match=message) as info:
        render(*args)
    assert "\n" not in str(info.value)
