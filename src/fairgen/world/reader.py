"""The exact reader of world avatars: face, gender, race, age and the concept cue.

It inverts render.py. The face is the largest connected blob of one skin tone; every other region is read
at a fixed offset from the face centre, since the layout is rigid up to translation. Every reading
compares colours sampled from the same image (hair vs background, face vs the four skin tones, ...), so
global colour shifts, blur, JPEG and per-pixel noise of the size a small VQ tokenizer's reconstructions
show do not change the argmax. Probabilities are smooth functions of those colour distances, so a degraded
image gives a less confident vector than a clean one.

All colours are RGB in 0..255; all offsets are pixels relative to the face centre, x right, y down.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..types import ATTRIBUTES, Perception
from . import render as layout

READER_VERSION = "world-reader/1"

# Face finding. Skin tones are >= 91 apart and every other colour is >= 63 from every tone, so a pixel
# within SEED_TOLERANCE of a tone is skin; the blob is then regrown around its own median colour (which
# follows a global colour shift) with REGROW_TOLERANCE.
SEED_TOLERANCE = 48.0
REGROW_TOLERANCE = 40.0
AREA_RANGE = (0.7 * layout.FACE_AREA, 1.35 * layout.FACE_AREA)
WIDTH_RANGE = (16, 22)  # rendered face: 19 px wide
HEIGHT_RANGE = (20, 26)  # rendered face: 23 px high
FILL_RANGE = (0.68, 0.90)  # area / bbox area; an ellipse fills pi/4 = 0.785
CENTRE_SLACK = layout.JITTER + 3  # how far (px) the face centre may sit from layout.CENTRE
MAX_FACE_STD = 20.0  # mean per-channel std inside the face (colour noise sigma 8 gives ~8)
MAX_TONE_DISTANCE = 60.0  # face colour to its nearest skin tone
MIN_EYE_CONTRAST = 30.0  # eye mean colour to face colour
MIN_REGION_CONTRAST = 30.0  # face vs hair vs background, pairwise
UNIFORM_TOLERANCE = 40.0  # a pixel belongs to a flat region if this close to the region's median
MIN_UNIFORM_SHARE = 0.8  # of background-edge pixels and of hair pixels

# Softness of the probabilities (RGB distance units, or shares).
RACE_TEMPERATURE = 10.0  # softmax over -distance / T
GENDER_PIXEL_SCALE = 8.0  # per-pixel vote sigmoid((d_background - d_hair) / scale)
GENDER_SLOPE = 20.0  # P(female) = sigmoid(slope * (hair share - 0.5))
OLD_MAX_CHROMA = 70.0  # grey/silver hair chroma <= 34, young hair chroma >= 154 or value <= 58
OLD_MIN_VALUE = 100.0  # grey/silver hair value >= 142 (max channel), black/brown <= 58
AGE_SCALE = 8.0
EMBLEM_THRESHOLD = 127.5  # luminance between the black and the white cell


def _block(x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
    """Offsets (dx, dy) of the inclusive rectangle [x0, x1] x [y0, y1], shape (N, 2)."""
    dy, dx = np.mgrid[y0 : y1 + 1, x0 : x1 + 1]
    return np.stack([dx.ravel(), dy.ravel()], axis=1)


# Sample regions, chosen with >= 1 px margin inside the region they read so that +-1 px localisation
# error and blur do not mix in a neighbour.
HAIR_SAMPLE = _block(-5, 5, -16, -13)  # hair above the face (cap top at dy -17 there, face top at -10)
SIDE_SAMPLE = np.concatenate([_block(11, 14, 1, 9), _block(-14, -11, 1, 9)])  # long hair or background
CLOTH_SAMPLE = np.concatenate([_block(-16, 16, 16, 17), _block(14, 18, 20, 30), _block(-18, -14, 20, 30)])
EYE_SAMPLES = [_block(ex - layout.EYE_HALF, ex + layout.EYE_HALF, ey - layout.EYE_HALF, ey + layout.EYE_HALF)
               for ex, ey in layout.EYE_OFFSETS]
# The central 2x2 pixels of each emblem cell, in row-major cell order (the order of the code's bits).
_CELL_X = [layout.EMBLEM_ORIGIN[0] + c * layout.EMBLEM_CELL + layout.EMBLEM_CELL // 2 - 1
           for c in range(layout.EMBLEM_SHAPE[1])]
_CELL_Y = [layout.EMBLEM_ORIGIN[1] + r * layout.EMBLEM_CELL + layout.EMBLEM_CELL // 2 - 1
           for r in range(layout.EMBLEM_SHAPE[0])]
EMBLEM_SAMPLES = [_block(x, x + 1, y, y + 1) for y in _CELL_Y for x in _CELL_X]
# Background: the left and right edge strips, which no part of the avatar reaches at any jitter.
_EDGE = np.zeros((layout.SIZE, layout.SIZE), dtype=bool)
_EDGE[1:-1, 1:6] = _EDGE[1:-1, -6:-1] = True

_TONES = np.array([layout.SKIN[r] for r in ATTRIBUTES["race"]], dtype=np.float32)  # (4, 3)
_CLOTHING = np.array(layout.CLOTHING, dtype=np.float32)  # (8, 3)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _distance(colours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance between colours (..., 3) and reference (3,) or (K, 3) -> (...) or (..., K)."""
    if reference.ndim == 1:
        return np.linalg.norm(colours - reference, axis=-1)
    return np.linalg.norm(colours[..., None, :] - reference, axis=-1)


def _as_array(image: Image.Image) -> np.ndarray:
    """The image as float32 (64, 64, 3) RGB; other sizes are resized to 64x64 first."""
    image = image.convert("RGB")
    if image.size != (layout.SIZE, layout.SIZE):
        image = image.resize((layout.SIZE, layout.SIZE), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)


def _uniform_share(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """(median colour, share of pixels within UNIFORM_TOLERANCE of it) of pixels (N, 3)."""
    median = np.median(pixels, axis=0)
    return median, float(np.mean(_distance(pixels, median) < UNIFORM_TOLERANCE))


def _largest_blob(mask: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected component of a bool mask, or None if the mask is empty."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def _find_face(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(filled face mask (64, 64), face colour (3,)) of the skin blob, or None when there is none."""
    # A 3x3 median removes per-pixel noise before pixels are classified, keeping edges sharp.
    smooth = ndimage.median_filter(arr, size=(3, 3, 1))
    seed = _largest_blob(_distance(smooth, _TONES).min(axis=-1) < SEED_TOLERANCE)
    if seed is None:
        return None
    colour = np.median(arr[seed], axis=0)
    labels, _ = ndimage.label(_distance(smooth, colour) < REGROW_TOLERANCE)
    overlap = np.bincount(labels[seed], minlength=labels.max() + 1)
    overlap[0] = 0
    if overlap.max() == 0:
        return None
    face = ndimage.binary_fill_holes(labels == int(np.argmax(overlap)))
    return face, np.median(arr[face], axis=0)


def _sample(arr: np.ndarray, centre: tuple[int, int], offsets: np.ndarray) -> np.ndarray:
    """Pixels (N, 3) at centre + offsets; the caller has checked they lie inside the image."""
    return arr[centre[1] + offsets[:, 1], centre[0] + offsets[:, 0]]


def _is_avatar_face(arr: np.ndarray, face: np.ndarray, colour: np.ndarray) -> tuple[int, int] | None:
    """The face centre (x, y) if the blob and its surroundings look like an avatar's, else None."""
    area = int(face.sum())
    if not AREA_RANGE[0] <= area <= AREA_RANGE[1]:
        return None
    ys, xs = np.nonzero(face)
    width, height = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    if not (WIDTH_RANGE[0] <= width <= WIDTH_RANGE[1] and HEIGHT_RANGE[0] <= height <= HEIGHT_RANGE[1]):
        return None
    if not FILL_RANGE[0] <= area / (width * height) <= FILL_RANGE[1]:
        return None
    centre = (int(round(xs.mean())), int(round(ys.mean())))
    if max(abs(centre[0] - layout.CENTRE[0]), abs(centre[1] - layout.CENTRE[1])) > CENTRE_SLACK:
        return None
    if _distance(_TONES, colour).min() > MAX_TONE_DISTANCE:
        return None
    # Flat skin: the interior (2 px in from the edge) without the eyes.
    interior = ndimage.binary_erosion(face, iterations=2)
    eyes = [_sample(arr, centre, offsets) for offsets in EYE_SAMPLES]
    for offsets in EYE_SAMPLES:
        interior[centre[1] + offsets[:, 1], centre[0] + offsets[:, 0]] = False
    if not interior.any() or arr[interior].std(axis=0).mean() > MAX_FACE_STD:
        return None
    if min(float(_distance(eye.mean(axis=0), colour)) for eye in eyes) < MIN_EYE_CONTRAST:
        return None
    background, background_share = _uniform_share(arr[_EDGE])
    hair, hair_share = _uniform_share(_sample(arr, centre, HAIR_SAMPLE))
    if min(background_share, hair_share) < MIN_UNIFORM_SHARE:
        return None
    pairs = [(colour, hair), (colour, background), (hair, background)]
    if min(float(np.linalg.norm(a - b)) for a, b in pairs) < MIN_REGION_CONTRAST:
        return None
    return centre


def _race_probs(colour: np.ndarray) -> dict[str, float]:
    logits = -_distance(colour, _TONES) / RACE_TEMPERATURE
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return dict(zip(ATTRIBUTES["race"], map(float, p)))


def _gender_probs(sides: np.ndarray, hair: np.ndarray, background: np.ndarray) -> dict[str, float]:
    # Soft vote of each pixel beside the lower face: hair-coloured (long hair) or background-coloured.
    votes = 1.0 / (1.0 + np.exp(-(_distance(sides, background) - _distance(sides, hair)) / GENDER_PIXEL_SCALE))
    female = _sigmoid(GENDER_SLOPE * (float(votes.mean()) - 0.5))
    return {"female": female, "male": 1.0 - female}


def _age_probs(hair: np.ndarray) -> dict[str, float]:
    # Grey/silver hair is unsaturated and light; black/brown is dark; blonde/auburn is strongly coloured.
    chroma, value = float(hair.max() - hair.min()), float(hair.max())
    old = _sigmoid((OLD_MAX_CHROMA - chroma) / AGE_SCALE) * _sigmoid((value - OLD_MIN_VALUE) / AGE_SCALE)
    return {"young": 1.0 - old, "old": old}


def _concept(arr: np.ndarray, centre: tuple[int, int]) -> str:
    cloth = np.median(_sample(arr, centre, CLOTH_SAMPLE), axis=0)
    colour = int(np.argmin(_distance(cloth, _CLOTHING)))
    luma = [float(_sample(arr, centre, cell).mean(axis=0) @ _LUMA) for cell in EMBLEM_SAMPLES]
    return layout.format_code(colour, [int(v > EMBLEM_THRESHOLD) for v in luma])


def read(image: Image.Image) -> Perception:
    """Read one image: face, box, probabilities for gender/race/age and the concept cue.

    Images of any size are resized to 64x64 first; the box (x0, y0, x1, y1), x1/y1 exclusive, is in
    pixels of the image as given. Images that are not avatars give Perception(face=False).
    """
    arr = _as_array(image)
    found = _find_face(arr)
    centre = _is_avatar_face(arr, *found) if found is not None else None
    if centre is None:
        return Perception(face=False)
    face, colour = found
    hair = np.median(_sample(arr, centre, HAIR_SAMPLE), axis=0)
    background = np.median(arr[_EDGE], axis=0)
    ys, xs = np.nonzero(face)
    sx, sy = image.size[0] / layout.SIZE, image.size[1] / layout.SIZE
    box = (int(xs.min() * sx), int(ys.min() * sy),
           int(np.ceil((xs.max() + 1) * sx)), int(np.ceil((ys.max() + 1) * sy)))
    probs = {
        "gender": _gender_probs(_sample(arr, centre, SIDE_SAMPLE), hair, background),
        "race": _race_probs(colour),
        "age": _age_probs(hair),
    }
    return Perception(face=True, box=box, probs=probs, concept_read=_concept(arr, centre))
