"""read_batch (world/batch.py) gives reader.read's Perception, equal in every field and every bit of every
probability, on fairgen-tiny's images (neutral and explicit prompts of three suites), on those images
degraded until some lose their face, on world renders, non-avatars, other sizes and modes, and on the
cases its vectorised steps decide by other code than read's (equal blobs, an emblem cell at its
threshold, stacks cut at other places)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image, ImageFilter

from fairgen import models, suites
from fairgen.perception.world import WorldPerception
from fairgen.suites.explicit import explicit
from fairgen.types import Perception
from fairgen.world import batch, read, read_batch, render
from fairgen.world import reader as r
from fairgen.world.render import BACKGROUNDS, SKIN


def _same(images: list[Image.Image]) -> list[Perception]:
    """Assert read_batch(images) == [read(im) ...], probabilities compared as exact floats; return them."""
    want, got = [read(im) for im in images], read_batch(images)
    assert len(got) == len(images)
    differ = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert not differ, f"{len(differ)}/{len(images)} differ, e.g. {differ[:2]}"
    return got


@pytest.fixture(scope="module")
def tiny_images() -> list[Image.Image]:
    """224 fairgen-tiny images: 32 occupations (test), 32 sports, 32 personal descriptors (test), each
    twice, and 32 explicit prompts (female, male, black, asian) of the occupations."""
    prompts = []
    for name in ("occupations:test", "sports", "personal_descriptors:test"):
        found = suites.load(name)
        prompts += [found[i * len(found) // 32] for i in range(32)]
    occupations = suites.load("occupations:test")
    for group in ({"gender": "female"}, {"gender": "male"}, {"race": "black"}, {"race": "asian"}):
        prompts += [explicit(p, group) for p in occupations[:8]]
    prompts = prompts[:96] * 2 + prompts[96:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the images do not depend on it; on a busy machine two threads wait on each other
    try:
        return models.load("tiny").generate(prompts, list(range(100, 100 + len(prompts))))
    finally:
        torch.set_num_threads(threads)


def test_equals_read_on_tiny_images(tiny_images):
    seen = _same(tiny_images)
    assert sum(p.face for p in seen) >= 0.9 * len(seen)  # the model draws avatars: the face path is covered


def test_equals_read_on_degraded_tiny_images(tiny_images):
    """Blur, noise, shifts and crops push many readings to their thresholds and some images to no face."""
    rng = np.random.default_rng(0)
    degraded = []
    for i, image in enumerate(tiny_images):
        pixels = np.asarray(image, dtype=np.int32)
        kind = i % 4
        if kind == 0:
            degraded.append(image.filter(ImageFilter.GaussianBlur(0.6 + 1.4 * rng.random())))
        elif kind == 1:
            noisy = pixels + rng.normal(0, 6 + 30 * rng.random(), pixels.shape)
            degraded.append(Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8)))
        elif kind == 2:
            shifted = np.roll(pixels, tuple(rng.integers(-6, 7, 2)), axis=(0, 1)) + rng.integers(-40, 41, 3)
            degraded.append(Image.fromarray(np.clip(shifted, 0, 255).astype(np.uint8)))
        else:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=int(rng.integers(20, 80)))
            degraded.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    seen = _same(degraded)
    faces = sum(p.face for p in seen)
    assert 0 < faces < len(seen)  # both outcomes of the checks are exercised


def test_equals_read_on_renders_non_avatars_and_other_sizes():
    rng = np.random.default_rng(1)
    images = [render(g, race, a, f"concept {i}", int(rng.integers(2**31)))
              for i, (g, race, a) in enumerate([("female", "white", "young"), ("male", "black", "old"),
                                                 ("female", "asian", "old"), ("male", "indian", "young")] * 8)]
    images += [im.filter(ImageFilter.GaussianBlur(0.8)) for im in images[:8]]
    images += [Image.new("RGB", (64, 64), c) for c in [*SKIN.values(), *BACKGROUNDS, (0, 0, 0), (255, 255, 255)]]
    images += [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in range(4)]
    images += [Image.fromarray(skimage.data.astronaut()[100:164, 180:244])]
    # other sizes and modes go through read itself, in their place among the others
    images.insert(3, images[0].resize((128, 128), Image.Resampling.BICUBIC))
    images.insert(7, images[1].convert("P", palette=Image.Palette.ADAPTIVE, colors=256))
    images.insert(9, images[2].convert("L"))
    images.insert(11, Image.fromarray(skimage.data.coffee()))
    seen = _same(images)
    assert seen[3].face and seen[3].box[2] > 64  # the box in the pixels of the 128 x 128 image
    assert read_batch([]) == []


def test_blank_and_faceless_stacks():
    blank = [Image.new("RGB", (64, 64), c) for c in [(0, 0, 0), (255, 255, 255), SKIN["white"], BACKGROUNDS[0]]]
    assert read_batch(blank) == [Perception(face=False)] * 4


def test_skin_patches_read_as_read_does():
    """Avatars with two skin-toned patches beside the face, and images of two equal skin blobs only."""
    images = []
    for k in range(6):
        avatar = np.asarray(render("male", "white", "young", "nurse", k)).copy()
        y, x = 2 + k, 2 + 3 * k
        avatar[y : y + 6, x : x + 6] = np.array(SKIN["white"]) - 8 * k  # a patch of the face's tone
        avatar[y : y + 6, 50 - x : 56 - x] = np.array(SKIN["white"]) - 20
        images.append(Image.fromarray(avatar))
    blobs = [np.full((64, 64, 3), BACKGROUNDS[0], dtype=np.uint8) for _ in range(3)]
    for k, pixels in enumerate(blobs):  # no face, only two equal blobs of the white tone in the fit region
        pixels[10:20, 16:26] = np.array(SKIN["white"]) - 10 * k
        pixels[30:40, 36:46] = SKIN["white"]
    _same(images + [Image.fromarray(b) for b in blobs])


def test_skin_seeds_break_ties_as_read_does():
    """Equal blobs, of one tone and of several: the seed mask of each image of a stack is reader's."""
    rng = np.random.default_rng(3)
    tones = list(SKIN.values())
    regions = []
    for k in range(40):
        region = np.full((41, 37, 3), BACKGROUNDS[k % len(BACKGROUNDS)], dtype=np.float32)
        side = int(rng.integers(3, 9))
        spots = [(y, x) for y in range(0, 41 - side, side + 2) for x in range(0, 37 - side, side + 2)]
        for y, x in [spots[i] for i in rng.choice(len(spots), min(len(spots), 4), replace=False)]:
            tone = tones[int(rng.integers(len(tones)))] if k % 2 else tones[k % len(tones)]
            region[y : y + side, x : x + side] = np.asarray(tone) + rng.integers(-10, 11, 3)
        regions.append(region)
    got = batch._skin_seeds(np.ascontiguousarray(np.moveaxis(np.stack(regions), -1, 0)))
    for region, seed in zip(regions, got):
        want = r._skin_seed(region)
        np.testing.assert_array_equal(seed, np.zeros_like(seed) if want is None else want)


def test_emblem_cell_at_its_threshold():
    """A cell whose luminance lies within batch._LUMA_MARGIN of the threshold is decided by read's own
    float32 expression: such a grey is painted on each cell in turn."""
    near = [(red, green, blue) for red in range(100, 160) for green in range(100, 160) for blue in range(100, 160)
            if abs(float(np.array([red, green, blue], np.float32) @ r._LUMA) - r.EMBLEM_THRESHOLD) < 0.004]
    assert near
    images = []
    for cell, offsets in enumerate(r.EMBLEM_SAMPLES):
        avatar = np.asarray(render("female", "black", "young", "judge", cell)).copy()
        centre = np.asarray(read(Image.fromarray(avatar)).box[:2]) + (r._RX, r._RY)
        avatar[centre[1] + offsets[:, 1], centre[0] + offsets[:, 0]] = near[cell % len(near)]
        images.append(Image.fromarray(avatar))
    _same(images)


def test_chunks_and_order_do_not_matter(tiny_images, monkeypatch):
    images = tiny_images[:40]
    whole = read_batch(images)
    monkeypatch.setattr(batch, "CHUNK", 7)
    assert read_batch(images) == whole
    assert read_batch(images[::-1]) == whole[::-1]


def test_median3x3_is_the_median_of_each_window():
    """reader._median3x3 (one image or a stack, shifts of the flat padded array) against np.median."""
    rng = np.random.default_rng(2)
    for shape in [(64, 64, 3), (5, 7, 3), (3, 9, 4, 3)]:
        pixels = rng.integers(0, 256, shape).astype(np.float32)
        flat = pixels.reshape(-1, *shape[-3:])
        padded = np.pad(flat, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
        height, width = shape[-3:-1]
        windows = [padded[:, dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
        np.testing.assert_array_equal(r._median3x3(pixels), np.median(windows, axis=0).reshape(shape))
        np.testing.assert_array_equal(r._median3x3(pixels.astype(np.uint8)), r._median3x3(pixels))


def test_backend_reads_batches_and_keeps_unreadable_images(tiny_images):
    buffer = io.BytesIO()
    tiny_images[0].save(buffer, "PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[:60]))
    out = WorldPerception().perceive([tiny_images[0], truncated, tiny_images[1]])
    assert out[0] == read(tiny_images[0]) and out[2] == read(tiny_images[1])
    assert not out[1].face and out[1].error


def test_distances_round_as_reader_does():
    """The stack's RGB distances (three slices, channel planes) equal reader._distance bit for bit, also on
    values that round (the eyes' means): the same sum order."""
    rng = np.random.default_rng(4)
    colours = (rng.normal(0, 100, (4096, 3)) * rng.choice([1e-3, 1.0, 1e3], (4096, 1))).astype(np.float32)
    reference = rng.normal(0, 100, 3).astype(np.float32)
    want = r._distance(colours, reference)
    np.testing.assert_array_equal(batch._norm(colours - reference), want)
    np.testing.assert_array_equal(batch._planar_distance(np.ascontiguousarray(colours.T), reference), want)
