"""The world reader over a stack of images at once: reader.read's Perception, bit for bit, at a fraction of
its time per image.

reader.read spends most of its ~2.5 ms per 64x64 image in a few hundred small numpy calls. Here every step
that is the same for all images (the 3x3 median, the skin-tone classification, the blob labelling, the
fit of the face ellipse, the samples at fixed offsets from each face centre, their medians and means) runs
once over the whole stack, and only what is per image by nature (the seed blob's median, the box, the
probabilities) runs per image, through reader's own functions.

Why the records are the same, not merely close: the pixels are whole numbers (0..255), so every value the
checks compare (medians: whole or half numbers; sums of a few hundred pixels; squared RGB distances and
counts of skin pixels) is exact in float32 whatever the order of the sums, and a correctly rounded sqrt
or division of an exact value is the same number everywhere. The probabilities, which do round, are
computed per image by reader's functions from those same exact inputs. The one rounded value a check
compares, an emblem cell's luminance against its threshold, is decided here in float64 and handed back
to reader's float32 expression whenever it lies within 0.01 of the threshold (float32 rounding moves it
by < 1e-4). tests/test_world_batch.py holds read_batch equal to read on tiny's images and on edge cases.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from ..types import Perception
from . import reader as r
from . import render as layout

CHUNK = 64  # images per stack: the arrays of one stack stay a few MB (cache-sized), the numpy calls few

# Blob labelling within each image of a stack, never across images: 4-connected in the image plane
# (reader labels with scipy's default 2-D cross), nothing along the stack axis; erosion by the 3x3 square.
_LABEL_3D = np.zeros((3, 3, 3), dtype=bool)
_LABEL_3D[1] = ndimage.generate_binary_structure(2, 1)
_ERODE_3D = r._SQUARE[None]
_FIT_ROWS, _FIT_COLS = r._FIT_REGION  # the fit region's slices (rows, columns)
_PLACES = 2 * r.CENTRE_SLACK + 1  # candidate centres per axis (13)
_LUMA64 = r._LUMA.astype(np.float64)
_LUMA_MARGIN = 0.01  # luminance this close to the threshold is decided by reader's own float32 expression


def _runs() -> list[tuple[int, int, int, int]]:
    """The three fit masks (reader._FIT_MASKS: place core, accept core, outside) as horizontal runs of
    pixels: (mask, window row, first column, last column + 1) of each run. A window's count under a mask
    is the sum, over the mask's runs, of a difference of row prefix sums (118 runs against 725 pixels)."""
    masks = r._FIT_MASKS.reshape(*r._OUTSIDE.shape, 3).astype(bool)
    runs = []
    for m in range(3):
        for i, line in enumerate(masks[:, :, m]):
            edges = np.flatnonzero(np.diff(np.concatenate([[0], line.astype(np.int8), [0]])))
            runs += [(m, i, int(lo), int(hi)) for lo, hi in zip(edges[::2], edges[1::2])]
    return runs


_RUNS = _runs()
_MASK_SIZES = r._FIT_MASKS[:, :2].sum(axis=0)  # float32 (2,): place core, accept core, as reader divides


def read_batch(images: Sequence[Image.Image]) -> list[Perception]:
    """reader.read(image) for each image, in order. 64x64 images are read as stacks of CHUNK; images of
    other sizes (resized first by read) are read one by one."""
    out: list[Perception | None] = [None] * len(images)
    stack: list[np.ndarray] = []
    where: list[int] = []
    for i, image in enumerate(images):
        rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert copies even an RGB image
        if rgb.size == (layout.SIZE, layout.SIZE):
            stack.append(np.asarray(rgb))
            where.append(i)
        else:
            out[i] = r.read(image)
    for start in range(0, len(stack), CHUNK):
        seen = _read_stack(np.stack(stack[start : start + CHUNK]))
        for i, p in zip(where[start : start + CHUNK], seen):
            out[i] = p
    return out  # type: ignore[return-value]


def _gather(arr: np.ndarray, centres: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Pixels (B, N, 3) of arr (B, 64, 64, 3) at each image's centre (B, 2) (x, y) + offsets (N, 2)."""
    ys = centres[:, 1, None] + offsets[None, :, 1]
    xs = centres[:, 0, None] + offsets[None, :, 0]
    return arr[np.arange(len(arr))[:, None], ys, xs]


def _norm(a: np.ndarray) -> np.ndarray:
    """Euclidean norm over the last axis (RGB), summed in reader's _distance's order ((red + green) + blue,
    as numpy sums three values): numpy's reduction over an axis of 3 is slow, three slices are not."""
    r2, g2, b2 = a[..., 0] * a[..., 0], a[..., 1] * a[..., 1], a[..., 2] * a[..., 2]
    return np.sqrt(r2 + g2 + b2)


def _planar_distance(planes: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """RGB distance of channel planes (3, ...) to colour (3,) or (3, ...) broadcast against a plane,
    summed in reader's _distance's order."""
    d = [planes[c] - colour[c] for c in range(3)]
    return np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])


def _median(values: np.ndarray, image: np.ndarray, count: int) -> np.ndarray:
    """np.median(axis=0) of each image's pixels, from per-channel histograms of the whole numbers 0..255:
    values (M, 3) uint8 belonging to images image (M,) of 0..count-1 -> (count, 3) float32, the middle
    value or the mean of the two middle values, as np.median gives them (meaningless for an image with no
    pixel: the caller drops its row)."""
    bins = (image[:, None] * 3 + np.arange(3)) * 256 + values  # (M, 3)
    cumulative = np.bincount(bins.ravel(), minlength=count * 768).reshape(count, 3, 256).cumsum(axis=-1)
    n = cumulative[:, :, -1:]  # (count, 3, 1): pixels per image, the same for every channel
    low = np.argmax(cumulative > (n - 1) // 2, axis=-1)  # the ((n - 1) // 2)-th smallest, from 0
    high = np.argmax(cumulative > n // 2, axis=-1)
    return (low.astype(np.float32) + high.astype(np.float32)) / np.float32(2)


def _stack_median(pixels: np.ndarray) -> np.ndarray:
    """np.median(pixels, axis=1) of uint8 pixels (B, N, 3) -> (B, 3) float32."""
    count, n = pixels.shape[:2]
    return _median(pixels.reshape(-1, 3), np.repeat(np.arange(count), n), count)


def _uniform(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reader._uniform_share of each image's uint8 pixels (B, N, 3): medians (B, 3), shares (B,)."""
    median = _stack_median(pixels)
    return median, np.mean(_norm(pixels.astype(np.float32) - median[:, None]) < r.UNIFORM_TOLERANCE, axis=1)


def _skin_seeds(planes: np.ndarray) -> np.ndarray:
    """reader._skin_seed of each image of a stack of fit regions as channel planes (3, B, 41, 37): bool
    (B, 41, 37), all False where an image has no skin. Tones are tried in order and a later tone's largest
    blob wins only when strictly larger, as in reader; blobs are labelled in raster order within each
    image, so equal blobs of one tone resolve to the same one as reader's per-image labelling."""
    # argmin and min over the tones, the first tone winning ties (as argmin does), one tone at a time
    nearest = np.zeros(planes.shape[1:], dtype=np.int64)
    least = _planar_distance(planes, r._TONES[0])
    for tone in range(1, len(r._TONES)):
        distance = _planar_distance(planes, r._TONES[tone])
        nearest[distance < least] = tone
        least = np.minimum(least, distance)
    nearest[least >= r.SEED_TOLERANCE] = -1
    count = planes.shape[1]
    best_size = np.zeros(count, dtype=np.int64)
    seed = np.zeros(nearest.shape, dtype=bool)
    for tone in range(len(r._TONES)):
        labels, n = ndimage.label(ndimage.binary_erosion(nearest == tone, structure=_ERODE_3D), structure=_LABEL_3D)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        image = np.zeros(n + 1, dtype=np.int64)
        image[labels.ravel()] = np.repeat(np.arange(count), labels[0].size)
        blob = np.arange(1, n + 1)
        # per image, its largest blob and among equal ones the first labelled
        order = np.lexsort((blob, -sizes[1:], image[1:]))
        lead = order[np.r_[True, image[1:][order][1:] != image[1:][order][:-1]]]
        size = np.zeros(count, dtype=np.int64)
        label = np.zeros(count, dtype=np.int64)
        size[image[1:][lead]], label[image[1:][lead]] = sizes[1:][lead], blob[lead]
        better = size > best_size
        best_size[better] = size[better]
        seed[better] = labels[better] == label[better, None, None]
    return seed


def _fit_faces(skin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """reader._fit_face of each skin mask (B, 41, 37): centres (B, 2) (x, y) and acceptance scores (B,).
    Window counts come from row prefix sums over the masks' runs: whole numbers, exact in float32."""
    prefix = np.zeros((*skin.shape[:2], skin.shape[2] + 1), dtype=np.float32)
    np.cumsum(skin, axis=2, dtype=np.float32, out=prefix[:, :, 1:])
    counts = np.zeros((3, len(skin), _PLACES, _PLACES), dtype=np.float32)  # place hits, accept hits, spill
    for m, row, start, stop in _RUNS:
        band = prefix[:, row : row + _PLACES]
        counts[m] += band[:, :, stop : stop + _PLACES] - band[:, :, start : start + _PLACES]
    counts = counts.reshape(3, len(skin), -1)
    place = counts[0] / (_MASK_SIZES[0] + counts[2])
    accept = counts[1] / (_MASK_SIZES[1] + counts[2])
    best = np.argmax(place, axis=1)
    row, col = np.divmod(best, _PLACES)
    centres = np.stack([layout.CENTRE[0] - r.CENTRE_SLACK + col, layout.CENTRE[1] - r.CENTRE_SLACK + row], axis=1)
    return centres, accept[np.arange(len(skin)), best]


def _read_stack(pixels: np.ndarray) -> list[Perception]:
    """Perceptions of a stack of 64x64 RGB images (B, 64, 64, 3) uint8: reader._find_face's checks and
    reader.read's readings, over the stack."""
    count = len(pixels)
    arr = pixels.astype(np.float32)
    smooth = r._median3x3(pixels)  # uint8: the median of whole numbers is the same on uint8 as on float32
    region = smooth[:, _FIT_ROWS, _FIT_COLS]
    planes = np.moveaxis(region, -1, 0).astype(np.float32, order="C")  # (3, B, 41, 37)
    seed = _skin_seeds(planes)
    face = seed.any(axis=(1, 2))
    seed_colour = np.zeros((count, 3), dtype=np.float32)
    seed_colour[face] = _median(pixels[:, _FIT_ROWS, _FIT_COLS][seed], np.nonzero(seed)[0], count)[face]
    skin = _planar_distance(planes, seed_colour.T[:, :, None, None]) < r.REGROW_TOLERANCE
    centres, fit = _fit_faces(skin)
    face &= fit >= r.MIN_FACE_FIT
    colour = _stack_median(_gather(pixels, centres, r.FACE_INTERIOR))
    face &= _norm(colour[:, None] - r._TONES).min(axis=1) <= r.MAX_TONE_DISTANCE
    eyes = np.stack([_gather(arr, centres, o).mean(axis=1) for o in r.EYE_SAMPLES], axis=1)  # (B, 2, 3)
    face &= _norm(eyes - colour[:, None]).min(axis=1) >= r.MIN_EYE_CONTRAST
    smooth_background, background_share = _uniform(smooth[:, r._EDGE])
    smooth_hair, hair_share = _uniform(_gather(smooth, centres, r.HAIR_SAMPLE))
    face &= np.minimum(background_share, hair_share) >= r.MIN_UNIFORM_SHARE
    contrast = np.stack([_norm(colour - smooth_hair), _norm(colour - smooth_background),
                         _norm(smooth_hair - smooth_background)], axis=1)
    face &= contrast.min(axis=1) >= r.MIN_REGION_CONTRAST
    # The readings of the images with a face.
    hair = _stack_median(_gather(pixels, centres, r.HAIR_SAMPLE))
    background = _stack_median(pixels[:, r._EDGE])
    sides = _gather(arr, centres, r.SIDE_SAMPLE)
    cloth = _stack_median(_gather(pixels, centres, r.CLOTH_SAMPLE))
    clothing = np.argmin(_norm(cloth[:, None] - r._CLOTHING), axis=1)
    cells = np.stack([_gather(arr, centres, cell).mean(axis=1) for cell in r.EMBLEM_SAMPLES], axis=1)  # (B, 8, 3)
    luma = cells.astype(np.float64) @ _LUMA64
    out = []
    for b in range(count):
        if not face[b]:
            out.append(Perception(face=False))
            continue
        (cx, cy) = int(centres[b, 0]), int(centres[b, 1])
        box = (cx - r._RX, cy - r._RY, cx + r._RX + 1, cy + r._RY + 1)
        bits = [int(v > r.EMBLEM_THRESHOLD) if abs(v - r.EMBLEM_THRESHOLD) > _LUMA_MARGIN
                else int(float(cells[b, k] @ r._LUMA) > r.EMBLEM_THRESHOLD) for k, v in enumerate(luma[b])]
        probs = {
            "gender": r._gender_probs(sides[b], hair[b], background[b]),
            "race": r._race_probs(colour[b]),
            "age": r._age_probs(hair[b]),
        }
        out.append(Perception(face=True, box=box, probs=probs,
                              concept_read=layout.format_code(int(clothing[b]), bits)))
    return out
