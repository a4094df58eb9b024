"""The world reader: exact on clean and mildly degraded renders, face=False on everything else."""

from __future__ import annotations

import io
import itertools
from importlib import resources

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

from fairgen.types import ATTRIBUTES, Perception
from fairgen.world import concept_code, concept_matches, read, render
from fairgen.world.render import BACKGROUNDS, CLOTHING, SKIN

COMBOS = list(itertools.product(ATTRIBUTES["gender"], ATTRIBUTES["race"], ATTRIBUTES["age"]))
OCCUPATIONS = resources.files("fairgen.suites").joinpath("data/occupations_test.txt").read_text().splitlines()
CONCEPTS = [o for o in OCCUPATIONS if o.strip()] + [f"made-up concept {i}" for i in range(30)]


def cases(n: int, seed: int) -> list[tuple[str, str, str, str, int]]:
    """n (gender, race, age, concept, seed) tuples: every attribute combination equally often, concepts
    cycling through 50 occupations and 30 made-up names, random render seeds."""
    rng = np.random.default_rng(seed)
    return [(*COMBOS[i % len(COMBOS)], CONCEPTS[i % len(CONCEPTS)], int(rng.integers(2**31)))
            for i in range(n)]


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def colour_noise(image: Image.Image, sigma: float, rng: np.random.Generator) -> Image.Image:
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0.0, sigma, (*image.size[::-1], 3))
    return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


def assert_reads(images: list[Image.Image], truth: list[tuple], min_confidence: float) -> list[Perception]:
    """Each image is read exactly (face, gender, race, age, concept code), argmax probs >= min_confidence."""
    out = [read(im) for im in images]
    wrong = []
    for p, (g, r, a, concept, seed) in zip(out, truth):
        ok = p.face and p.label() == {"gender": g, "race": r, "age": a}
        ok = ok and p.concept_read == concept_code(concept)
        if not ok or min(max(p.probs[attr].values()) for attr in ATTRIBUTES) < min_confidence:
            wrong.append((g, r, a, concept, seed, p))
    assert not wrong, f"{len(wrong)}/{len(images)} misread, e.g. {wrong[:2]}"
    return out


def test_reads_2048_clean_renders_exactly():
    truth = cases(2048, seed=0)
    out = assert_reads([render(*t) for t in truth], truth, min_confidence=0.99)
    for p in out:
        for attr, classes in ATTRIBUTES.items():
            assert tuple(p.probs[attr]) == classes  # every class, canonical order
            assert sum(p.probs[attr].values()) == pytest.approx(1.0)
        x0, y0, x1, y1 = p.box
        assert (x1 - x0, y1 - y0) == (19, 23) and 23 <= x0 + 9 <= 35 and 20 <= y0 + 11 <= 32


def test_reads_jpeg_quality_90_exactly():
    truth = cases(512, seed=1)
    assert_reads([jpeg(render(*t), 90) for t in truth], truth, min_confidence=0.9)


def test_reads_blurred_renders_exactly():
    truth = cases(512, seed=2)
    assert_reads([render(*t).filter(ImageFilter.GaussianBlur(0.7)) for t in truth], truth, min_confidence=0.9)


def test_reads_colour_noise_exactly():
    truth, rng = cases(512, seed=3), np.random.default_rng(3)
    assert_reads([colour_noise(render(*t), 8.0, rng) for t in truth], truth, min_confidence=0.9)


def test_reads_blur_noise_and_jpeg_combined_exactly():
    truth, rng = cases(256, seed=4), np.random.default_rng(4)
    blurred = [render(*t).filter(ImageFilter.GaussianBlur(0.7)) for t in truth]
    degraded = [jpeg(colour_noise(im, 8.0, rng), 90) for im in blurred]
    assert_reads(degraded, truth, min_confidence=0.8)


@pytest.mark.parametrize("size", [(96, 96), (128, 128), (200, 200), (100, 80)])
def test_reads_rescaled_renders(size):
    truth = cases(48, seed=5)
    resized = [render(*t).resize(size, Image.Resampling.BICUBIC) for t in truth]
    out = assert_reads(resized, truth, min_confidence=0.9)
    for p in out:  # the box is in the pixels of the image as given
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        assert (x1 - x0) == pytest.approx(19 * size[0] / 64, abs=2)


def test_degraded_images_read_less_confidently():
    truth, rng = cases(64, seed=6), np.random.default_rng(6)
    clean = [read(render(*t)) for t in truth]
    noisy = [read(colour_noise(render(*t).filter(ImageFilter.GaussianBlur(1.0)), 16.0, rng)) for t in truth]
    for attr in ATTRIBUTES:
        def confidence(ps: list[Perception]) -> float:
            return float(np.mean([max(p.probs[attr].values()) for p in ps]))

        assert confidence(noisy) < confidence(clean)


def non_avatars() -> dict[str, Image.Image]:
    rng = np.random.default_rng(7)
    out = {
        "uniform noise 64": Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)),
        "uniform noise 256": Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)),
        "astronaut": Image.fromarray(skimage.data.astronaut()),
        "camera": Image.fromarray(skimage.data.camera()),
        "coffee": Image.fromarray(skimage.data.coffee()),
        "chelsea": Image.fromarray(skimage.data.chelsea()),
        "upside-down avatar": render("female", "white", "young", "nurse", 0).rotate(180),
    }
    blanks = [*SKIN.values(), *BACKGROUNDS, *CLOTHING, (0, 0, 0), (255, 255, 255), (128, 128, 128)]
    out.update({f"blank {c}": Image.new("RGB", (64, 64), c) for c in blanks})
    return out


@pytest.mark.parametrize("name, image", list(non_avatars().items()))
def test_non_avatars_have_no_face(name, image):
    p = read(image)
    assert p == Perception(face=False), name


def test_photo_crops_have_no_face():
    rng = np.random.default_rng(8)
    photos = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket()]
    found = 0
    for photo in photos:
        height, width = photo.shape[:2]
        for _ in range(50):
            side = int(rng.integers(48, min(height, width)))
            y, x = int(rng.integers(height - side)), int(rng.integers(width - side))
            found += read(Image.fromarray(photo[y : y + side, x : x + side])).face
    assert found == 0


def test_concept_matches():
    p = read(render("male", "black", "old", "Firefighter", 3))
    assert concept_matches(p, "firefighter") and concept_matches(p.concept_read, " FIREFIGHTER ")
    assert not concept_matches(p, "nurse")
    assert not concept_matches(Perception(face=False), "firefighter")
    assert not concept_matches(None, "firefighter")


def test_grey_and_palette_images_are_converted():
    # Any PIL mode is read after conversion to RGB; a palette copy of a render reads the same.
    image = render("female", "indian", "old", "teacher", 9)
    assert read(image.convert("P", palette=Image.Palette.ADAPTIVE, colors=256)).label() == read(image).label()
    assert read(image.convert("RGBA")) == read(image)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["jpeg quality 50", "blur radius 1.5", "colour noise sigma 24", "half resolution", "colour shift 20"],
)
def test_margins_beyond_the_contract(name):
    """Degradations well past the contract (JPEG q>=90, blur ~0.7, noise sigma ~8) are still read exactly."""
    rng = np.random.default_rng(9)
    degrade = {
        "jpeg quality 50": lambda im: jpeg(im, 50),
        "blur radius 1.5": lambda im: im.filter(ImageFilter.GaussianBlur(1.5)),
        "colour noise sigma 24": lambda im: colour_noise(im, 24.0, rng),
        "half resolution": lambda im: im.resize((32, 32), Image.Resampling.BILINEAR).resize((64, 64)),
        "colour shift 20": lambda im: Image.fromarray(
            np.clip(np.asarray(im, dtype=np.int32) + rng.integers(-20, 21, 3), 0, 255).astype(np.uint8)),
    }[name]
    truth = cases(1024, seed=10)
    assert_reads([degrade(render(*t)) for t in truth], truth, min_confidence=0.5)
