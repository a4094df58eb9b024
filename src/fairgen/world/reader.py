"""The exact reader of world avatars: face, gender, race, age and the concept cue.

It inverts render.py. The face is found as a blob of one skin tone and located by fitting the face ellipse
of the rendered size to it; every other region is read at a fixed offset from the face centre, since the
layout is rigid up to translation. Every reading compares colours sampled from the same image (hair vs
background, face vs the four skin tones, ...), so global colour shifts, blur, JPEG and per-pixel noise of
the size a small VQ tokenizer's reconstructions show do not change the argmax. Probabilities are smooth
functions of those colour distances, so a degraded image gives a less confident vector than a clean one.
Anything that is not an avatar (photos, noise, blank images) fails one of the checks in _find_face.

All colours are RGB in 0..255; all offsets are pixels relative to the face centre, x right, y down.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from ..types import ATTRIBUTES, Perception
from . import render as layout

READER_VERSION = "world-reader/1"

# Face finding. Skin tones are >= 91 apart and hair, background and clothing colours are >= 63 from every
# tone, so the largest blob of pixels within SEED_TOLERANCE of one tone is the face. Its median colour
# (which follows a global colour shift) defines the skin mask (REGROW_TOLERANCE), and the face ellipse of
# the rendered size is fitted to that mask (_fit_face). Fitting a template, rather than measuring the
# blob's outline, keeps the reading stable when blur detaches a few pixels (beside the eyes) or attaches a
# few (a blended hair/background edge that happens to be skin-coloured).
SEED_TOLERANCE = 48.0
REGROW_TOLERANCE = 40.0
CENTRE_SLACK = layout.JITTER + 3  # how far (px) the face centre may sit from layout.CENTRE, each axis
WINDOW_MARGIN = 3  # px around the face ellipse in which skin outside the ellipse counts against the fit
MIN_FACE_FIT = 0.7  # clean renders fit at 1.0, a blank skin-coloured image at ~0.4
MAX_TONE_DISTANCE = 60.0  # face colour to its nearest skin tone
MIN_EYE_CONTRAST = 25.0  # eye mean colour to face colour
MIN_REGION_CONTRAST = 30.0  # face vs hair vs background, pairwise
UNIFORM_TOLERANCE = 40.0  # a pixel belongs to a flat region if this close to the region's median
MIN_UNIFORM_SHARE = 0.7  # of background-edge pixels and of hair pixels

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
HAIR_SAMPLE = _block(-4, 4, -17, -14)  # hair above the face (cap top at dy -19 there, face top at -10)
SIDE_SAMPLE = np.concatenate([_block(11, 14, 1, 9), _block(-14, -11, 1, 9)])  # long hair or background
CLOTH_SAMPLE = np.concatenate([_block(-16, 16, 16, 17), _block(14, 18, 20, 30), _block(-18, -14, 20, 30)])
_EX, _EY = layout.EYE_HALF
EYE_SAMPLES = [_block(ex - _EX, ex + _EX, ey - _EY, ey + _EY) for ex, ey in layout.EYE_OFFSETS]
# The central 2x2 pixels of each emblem cell, in row-major cell order (the order of the code's bits).
_CELL_X = [layout.EMBLEM_ORIGIN[0] + c * layout.EMBLEM_CELL + layout.EMBLEM_CELL // 2 - 1
           for c in range(layout.EMBLEM_SHAPE[1])]
_CELL_Y = [layout.EMBLEM_ORIGIN[1] + r * layout.EMBLEM_CELL + layout.EMBLEM_CELL // 2 - 1
           for r in range(layout.EMBLEM_SHAPE[0])]
EMBLEM_SAMPLES = [_block(x, x + 1, y, y + 1) for y in _CELL_Y for x in _CELL_X]
_RX, _RY = int(layout.FACE_RADII[0]), int(layout.FACE_RADII[1])  # face half extents, px (9, 11)
# (dy, dx) offsets of the fit window (29 x 25 px) around a face centre.
_WY, _WX = _RY + WINDOW_MARGIN, _RX + WINDOW_MARGIN
_WINDOW = np.mgrid[-_WY : _WY + 1, -_WX : _WX + 1]


def _face_ellipse(grow: float) -> np.ndarray:
    """The face ellipse with both radii grown by `grow` px, as a bool mask over the fit window (29, 25)."""
    return layout.ellipse(_WINDOW[1], _WINDOW[0], layout.FACE_RADII[0] + grow, layout.FACE_RADII[1] + grow)


def _eye_zone(grow: int) -> np.ndarray:
    """The eye rectangles grown by `grow` px, as a bool mask over the fit window."""
    zone = np.zeros(_WINDOW.shape[1:], dtype=bool)
    for ex, ey in layout.EYE_OFFSETS:
        zone |= (np.abs(_WINDOW[1] - ex) <= _EX + grow) & (np.abs(_WINDOW[0] - ey) <= _EY + grow)
    return zone


# The fit scores skin inside the face (eyes and their blur left out) against skin outside it (1 px beyond
# the outline); pixels on the outline, which blur and JPEG make either colour, count for neither. The
# placement uses the core 1 px in from the outline, which pins the centre to the pixel; acceptance uses
# the core 2 px in, which heavy blur (shrinking a face that contrasts with all around it) leaves intact.
_PLACE_CORE = _face_ellipse(-1) & ~_eye_zone(1)
_ACCEPT_CORE = _face_ellipse(-2) & ~_eye_zone(1)
_OUTSIDE = ~_face_ellipse(+1)
# The three masks as columns of one matrix (29 * 25, 3), so one product scores every placement.
_FIT_MASKS = np.stack([_PLACE_CORE, _ACCEPT_CORE, _OUTSIDE], axis=-1).reshape(-1, 3).astype(np.float32)
# Face pixels for the face colour: the acceptance core.
FACE_INTERIOR = np.stack([_WINDOW[1][_ACCEPT_CORE], _WINDOW[0][_ACCEPT_CORE]], axis=1)
# Only face centres within CENTRE_SLACK of layout.CENTRE are tried, so every sample region stays inside the
# image; the face is looked for in the region such faces can cover.
_FIT_REGION = (slice(layout.CENTRE[1] - CENTRE_SLACK - _WY, layout.CENTRE[1] + CENTRE_SLACK + _WY + 1),
               slice(layout.CENTRE[0] - CENTRE_SLACK - _WX, layout.CENTRE[0] + CENTRE_SLACK + _WX + 1))
# Background: the left and right edge strips, which no part of the avatar reaches at any jitter.
_EDGE = np.zeros((layout.SIZE, layout.SIZE), dtype=bool)
_EDGE[1:-1, 1:6] = _EDGE[1:-1, -6:-1] = True

_TONES = np.array([layout.SKIN[r] for r in ATTRIBUTES["race"]], dtype=np.float32)  # (4, 3)
_CLOTHING = np.array(layout.CLOTHING, dtype=np.float32)  # (8, 3)
_SQUARE = np.ones((3, 3), dtype=bool)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-x)))


def _distance(colours: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Euclidean RGB distance between colours (..., 3) and reference (3,) or (K, 3) -> (...) or (..., K)."""
    diff = colours - reference if reference.ndim == 1 else colours[..., None, :] - reference
    return np.sqrt(np.sum(diff * diff, axis=-1))


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


# Compare-exchange network whose 5th output (index 4) is the median of 9 values (N. Devillard, "Fast median
# search", after Paeth): 19 vectorised min/max pairs, data-independent and much faster than sorting.
_MEDIAN9_NETWORK = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8),
                    (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def _median3x3(arr: np.ndarray) -> np.ndarray:
    """Per-channel 3x3 median of an (..., H, W, 3) image or stack of images (edges replicated), same shape."""
    height, width = arr.shape[-3:-1]
    padded = np.pad(arr, [(0, 0)] * (arr.ndim - 3) + [(1, 1), (1, 1), (0, 0)], mode="edge")
    # The nine neighbours as shifts of the flat padded array (contiguous, so min/max run vectorised):
    # position p of the result is the median of the 3x3 window whose top-left padded pixel is at p, that
    # is of the pixel at p in the unpadded image; positions past a row's end are garbage, cut off below.
    flat, row = padded.reshape(-1), padded.shape[-2] * 3
    span = flat.size - 2 * row - 6
    v = [flat[dy * row + dx * 3 : dy * row + dx * 3 + span] for dy in range(3) for dx in range(3)]
    for i, j in _MEDIAN9_NETWORK:
        v[i], v[j] = np.minimum(v[i], v[j]), np.maximum(v[i], v[j])
    out = np.empty_like(flat)
    out[:span] = v[4]
    return out.reshape(padded.shape)[..., :height, :width, :]


def _skin_seed(smooth: np.ndarray) -> np.ndarray | None:
    """The largest 4-connected blob of pixels nearest to one skin tone and within SEED_TOLERANCE of it.

    Blobs are per tone because the blurred edge between a light face and dark hair passes through the
    darker tones: pooled, that ring would join the face and drag its colour. Each tone's mask is eroded by
    1 px first, so such rings (2 px wide, but long under heavy blur) cannot outweigh the face. None if no
    pixel is skin.
    """
    distance = _distance(smooth, _TONES)  # (64, 64, 4)
    nearest = np.where(distance.min(axis=-1) < SEED_TOLERANCE, distance.argmin(axis=-1), -1)
    best: np.ndarray | None = None
    for tone in np.unique(nearest[nearest >= 0]):
        labels, n = ndimage.label(ndimage.binary_erosion(nearest == tone, structure=_SQUARE))
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if best is None or sizes.max() > best.sum():
            best = labels == 1 + int(np.argmax(sizes))
    return best


def _sample(arr: np.ndarray, centre: tuple[int, int], offsets: np.ndarray) -> np.ndarray:
    """Pixels (N, 3) at centre + offsets; every centre the reader accepts keeps them inside the image."""
    return arr[centre[1] + offsets[:, 1], centre[0] + offsets[:, 0]]


def _fit_face(skin: np.ndarray) -> tuple[tuple[int, int], float]:
    """(centre (x, y) in the image, score) of the face placement that best matches a skin mask (of
    _FIT_REGION, shape (39, 37)).

    score = skin pixels in the acceptance core / (core size + skin pixels outside the face), in [0, 1]: 1
    for a face alone, lower when face pixels are missing or skin spills beyond the face.
    """
    # Every placement's window at once, one row per candidate centre: (13 * 13, 29 * 25).
    windows = np.lib.stride_tricks.sliding_window_view(skin.astype(np.float32), _OUTSIDE.shape)
    counts = windows.reshape(-1, _OUTSIDE.size) @ _FIT_MASKS  # (169, 3): place hits, accept hits, spill
    place, accept = counts[:, :2].T / (_FIT_MASKS[:, :2].sum(axis=0)[:, None] + counts[:, 2])
    best = int(np.argmax(place))
    row, col = divmod(best, windows.shape[1])
    centre = (layout.CENTRE[0] - CENTRE_SLACK + col, layout.CENTRE[1] - CENTRE_SLACK + row)
    return centre, float(accept[best])


def _find_face(arr: np.ndarray) -> tuple[tuple[int, int], np.ndarray] | None:
    """(face centre (x, y), face colour (3,)) if the image shows an avatar's face, else None."""
    # A 3x3 median removes per-pixel noise before pixels are classified, keeping edges sharp.
    smooth = _median3x3(arr)
    seed = _skin_seed(smooth[_FIT_REGION])
    if seed is None:
        return None
    seed_colour = np.median(arr[_FIT_REGION][seed], axis=0)
    centre, fit = _fit_face(_distance(smooth[_FIT_REGION], seed_colour) < REGROW_TOLERANCE)
    if fit < MIN_FACE_FIT:
        return None
    colour = np.median(_sample(arr, centre, FACE_INTERIOR), axis=0)
    if _distance(_TONES, colour).min() > MAX_TONE_DISTANCE:
        return None
    # The rest of an avatar: dark eyes in the face, flat hair above it, flat background at the edges.
    eyes = [_sample(arr, centre, offsets).mean(axis=0) for offsets in EYE_SAMPLES]
    if min(float(_distance(eye, colour)) for eye in eyes) < MIN_EYE_CONTRAST:
        return None
    background, background_share = _uniform_share(smooth[_EDGE])
    hair, hair_share = _uniform_share(_sample(smooth, centre, HAIR_SAMPLE))
    if min(background_share, hair_share) < MIN_UNIFORM_SHARE:
        return None
    pairs = [(colour, hair), (colour, background), (hair, background)]
    if min(float(np.linalg.norm(a - b)) for a, b in pairs) < MIN_REGION_CONTRAST:
        return None
    return centre, colour


def _race_probs(colour: np.ndarray) -> dict[str, float]:
    logits = -_distance(colour, _TONES) / RACE_TEMPERATURE
    p = np.exp(logits - logits.max())
    p /= p.sum()
    return dict(zip(ATTRIBUTES["race"], map(float, p)))


def _gender_probs(sides: np.ndarray, hair: np.ndarray, background: np.ndarray) -> dict[str, float]:
    # Soft vote of each pixel beside the lower face: hair-coloured (long hair) or background-coloured.
    margin = _distance(sides, background) - _distance(sides, hair)  # > 0: closer to the hair colour
    votes = 1.0 / (1.0 + np.exp(-margin / GENDER_PIXEL_SCALE))
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
    if found is None:
        return Perception(face=False)
    centre, colour = found
    hair = np.median(_sample(arr, centre, HAIR_SAMPLE), axis=0)
    background = np.median(arr[_EDGE], axis=0)
    sx, sy = image.size[0] / layout.SIZE, image.size[1] / layout.SIZE
    x0, y0, x1, y1 = centre[0] - _RX, centre[1] - _RY, centre[0] + _RX + 1, centre[1] + _RY + 1
    box = (int(x0 * sx), int(y0 * sy), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
    probs = {
        "gender": _gender_probs(_sample(arr, centre, SIDE_SAMPLE), hair, background),
        "race": _race_probs(colour),
        "age": _age_probs(hair),
    }
    return Perception(face=True, box=box, probs=probs, concept_read=_concept(arr, centre))


def concept_matches(code_or_perception: str | Perception | None, concept: str) -> bool:
    """Whether a concept cue read back (a code string or a Perception's concept_read) is `concept`'s cue.

    A Perception without a face (concept_read None) never matches. Distinct concepts share a cue with
    probability 1/2048 (11 bits), so a match is strong but not absolute evidence.
    """
    code = code_or_perception
    if isinstance(code, Perception):
        code = code.concept_read
    return code is not None and code == layout.concept_code(concept)
