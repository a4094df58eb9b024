"""The avatar renderer of the synthetic ground-truth world.

A 64x64 RGB avatar shows its perceived attributes by plain visual codes, so that an exact reader
(reader.py) can recover them and an audit of a generator trained on these images has ground truth:

- gender: hair length. Female: long hair falling beside the face down to the shoulders. Male: a short
  cap only, so the sides of the lower face show background.
- race: one of four skin tones (SKIN), pairwise >= 90 RGB units apart.
- age: grey or silver hair for "old"; black, brown, blonde or auburn hair for "young".
- concept (what the prompt is about): 11 bits from a hash of the normalised concept name, shown as the
  clothing colour (3 bits, one of 8 saturated colours) and a 2x4 emblem of 6x6 px black/white cells on
  the chest (8 bits).

Nuisance, drawn from the seed alone: position jitter (+-3 px in x and y), background colour (cool saturated
colours, +-15 per channel) and the hair colour within its class (+-8 per channel). The nuisance draws do
not depend on the attributes, so two renders with the same seed and concept that differ in one attribute
differ only in that attribute's cue (counterfactual pairs).

The layout constants below are shared with the reader; all offsets are in pixels relative to the avatar
centre (CENTRE plus jitter), x to the right, y down.
"""

from __future__ import annotations

import functools
import hashlib
from numbers import Integral

import numpy as np
from PIL import Image

from ..types import ATTRIBUTES, FairgenError

SIZE = 64  # image side, pixels
CENTRE = (32, 26)  # un-jittered avatar centre (x, y): the centre of the face ellipse
JITTER = 3  # maximum position jitter, pixels, each axis

# Colour palettes, RGB 0..255. The colours were chosen so that every pair a reader has to tell apart
# stays >= ~55 RGB units apart after the worst-case nuisance jitter (hair vs skin >= 63, background vs
# skin >= 87, background vs hair >= 55, skin tones >= 91, clothing colours >= 99).
SKIN: dict[str, tuple[int, int, int]] = {
    "white": (250, 222, 205),
    "black": (110, 70, 50),
    "asian": (238, 195, 112),
    "indian": (185, 125, 85),
}
YOUNG_HAIR: dict[str, tuple[int, int, int]] = {
    "black": (25, 22, 28),
    "brown": (50, 28, 15),
    "blonde": (235, 200, 30),
    "auburn": (190, 60, 20),
}
OLD_HAIR: dict[str, tuple[int, int, int]] = {
    "grey": (145, 148, 158),
    "silver": (182, 186, 200),
}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (40, 90, 200),  # blue
    (20, 140, 150),  # teal
    (40, 150, 90),  # green
    (100, 70, 190),  # violet
    (70, 160, 225),  # sky
    (40, 50, 140),  # navy
)
# Clothing colours, indexed by the concept code's 3 colour bits.
CLOTHING: tuple[tuple[int, int, int], ...] = (
    (220, 30, 30),  # red
    (250, 140, 0),  # orange
    (240, 230, 40),  # yellow
    (30, 170, 50),  # green
    (0, 200, 210),  # cyan
    (30, 70, 230),  # blue
    (130, 40, 190),  # purple
    (230, 40, 170),  # magenta
)
EYE = (20, 16, 24)
EMBLEM_ON = (255, 255, 255)  # bit 1
EMBLEM_OFF = (0, 0, 0)  # bit 0
BACKGROUND_JITTER = 15  # +- per channel
HAIR_JITTER = 8  # +- per channel

# Geometry (pixels, relative to the avatar centre). Ellipse radii are half-integers so that the set of
# pixel centres inside is symmetric: the face covers dx in [-9, 9] and dy in [-11, 11].
FACE_RADII = (9.5, 11.5)  # (x, y)
EYE_OFFSETS = ((-4, -2), (4, -2))  # centres of the two eyes
EYE_HALF = (1, 2)  # (x, y) half extents: 3 px wide, 5 px tall
CAP_CENTRE_DY = -4
CAP_RADII = (12.5, 16.5)
CAP_MAX_DY = -3  # a male cap ends at the temples, so the sides of the lower face show background
LONG_HAIR_HALF_WIDTH = 15
LONG_HAIR_DY = (-4, 16)  # inclusive: from the temples down to the shoulders
TORSO_TOP_DY = 14
TORSO_HALF_WIDTH = 20
TORSO_CORNER_RADIUS = 6
EMBLEM_ORIGIN = (-12, 19)  # top-left cell corner (dx, dy)
EMBLEM_CELL = 6
EMBLEM_SHAPE = (2, 4)  # rows, columns

COLOUR_BITS = 3
EMBLEM_BITS = EMBLEM_SHAPE[0] * EMBLEM_SHAPE[1]
# Independent random stream for nuisance, so a caller may also use default_rng(seed) for other draws.
_NUISANCE_STREAM = 0x5EED_A7A7

_GRID_Y, _GRID_X = np.mgrid[0:SIZE, 0:SIZE]


def normalise_concept(concept: str) -> str:
    """Lower-case, stripped concept name (the form concept codes and world specs use)."""
    name = str(concept).strip().lower()
    if not name:
        raise FairgenError("concept name is empty")
    return name


def concept_bits(concept: str) -> tuple[int, tuple[int, ...]]:
    """(clothing colour index 0..7, 8 emblem bits in row-major cell order) of a concept name."""
    digest = hashlib.sha256(normalise_concept(concept).encode("utf-8")).digest()
    value = int.from_bytes(digest[:2], "big")  # 16 bits, of which the top 11 are used
    colour = value >> (16 - COLOUR_BITS)
    emblem = (value >> (16 - COLOUR_BITS - EMBLEM_BITS)) & ((1 << EMBLEM_BITS) - 1)
    bits = tuple((emblem >> (EMBLEM_BITS - 1 - i)) & 1 for i in range(EMBLEM_BITS))
    return colour, bits


def format_code(colour: int, bits: tuple[int, ...] | list[int]) -> str:
    """The string form of a concept cue, e.g. "3-10110010"."""
    return f"{colour}-" + "".join(str(int(b)) for b in bits)


def concept_code(concept: str) -> str:
    """The concept cue a render of `concept` shows, as the reader reads it back, e.g. "3-10110010"."""
    return format_code(*concept_bits(concept))


def check_class(attribute: str, value: str) -> str:
    """`value` if it is a class of `attribute` (types.ATTRIBUTES), else FairgenError."""
    classes = ATTRIBUTES[attribute]
    if value not in classes:
        raise FairgenError(f"unknown {attribute} {value!r} (expected one of: {', '.join(classes)})")
    return value


def check_seed(seed: int) -> int:
    """`seed` as an int if it is a non-negative integer (what numpy seeding accepts), else FairgenError."""
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise FairgenError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def ellipse(dx: np.ndarray, dy: np.ndarray, rx: float, ry: float) -> np.ndarray:
    """Pixels whose centres lie inside the axis-aligned ellipse of radii (rx, ry) about the origin."""
    return (dx / rx) ** 2 + (dy / ry) ** 2 <= 1.0


def _torso(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """The torso: a rectangle from TORSO_TOP_DY to the bottom edge, top corners rounded."""
    box = (dy >= TORSO_TOP_DY) & (np.abs(dx) <= TORSO_HALF_WIDTH)
    # Distance into a top corner, measured from the corner circle's centre.
    corner_x = np.abs(dx) - (TORSO_HALF_WIDTH - TORSO_CORNER_RADIUS)
    corner_y = (TORSO_TOP_DY + TORSO_CORNER_RADIUS) - dy
    in_corner = (corner_x > 0) & (corner_y > 0)
    outside_round = corner_x**2 + corner_y**2 > TORSO_CORNER_RADIUS**2
    return box & ~(in_corner & outside_round)


def _emblem(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask of emblem pixels, each pixel's cell index in the code's bit order, 0 outside), both SIZE x SIZE."""
    col = np.floor_divide(dx - EMBLEM_ORIGIN[0], EMBLEM_CELL)
    row = np.floor_divide(dy - EMBLEM_ORIGIN[1], EMBLEM_CELL)
    rows, cols = EMBLEM_SHAPE
    inside = (col >= 0) & (col < cols) & (row >= 0) & (row < rows)
    return inside, np.where(inside, row * cols + col, 0)


def render(gender: str, race: str, age: str, concept: str, seed: int) -> Image.Image:
    """Draw one 64x64 RGB avatar with the given perceived attributes and concept cue.

    gender, race, age: classes of types.ATTRIBUTES. concept: any non-empty name (normalised: lower-case,
    stripped). seed: non-negative int; it alone drives the nuisance (position, background, hair shade).
    The same arguments always give the identical image.
    """
    check_class("gender", gender)
    check_class("race", race)
    check_class("age", age)
    colour_index, bits = concept_bits(concept)
    rng = np.random.default_rng([_NUISANCE_STREAM, check_seed(seed)])

    # Fixed draw order and count, whatever the attributes (see the module docstring).
    jx, jy = rng.integers(-JITTER, JITTER + 1, size=2)
    background_pick = int(rng.integers(len(BACKGROUNDS)))
    background_shift = rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1, 3)
    background = np.add(BACKGROUNDS[background_pick], background_shift)
    hair_pick = int(rng.integers(len(YOUNG_HAIR)))
    hair_shift = rng.integers(-HAIR_JITTER, HAIR_JITTER + 1, 3)
    palette = YOUNG_HAIR if age == "young" else OLD_HAIR
    hair = np.add(list(palette.values())[hair_pick % len(palette)], hair_shift)

    layers = _layers(int(jx), int(jy))

    # Painter's order: later layers cover earlier ones. Pixels are addressed by flat index (a few hundred
    # per layer): faster than a boolean mask over all 4 096.
    img = np.empty((SIZE, SIZE, 3), dtype=np.uint8)
    flat = img.reshape(-1, 3)
    img[:] = np.clip(background, 0, 255)
    flat[layers["long_hair" if gender == "female" else "short_hair"]] = np.clip(hair, 0, 255)
    flat[layers["torso"]] = CLOTHING[colour_index]
    flat[layers["face"]] = SKIN[race]
    flat[layers["eyes"]] = EYE
    flat[layers["emblem"]] = EMBLEM_OFF
    flat[layers["emblem"][np.asarray(bits, dtype=bool)[layers["cell"]]]] = EMBLEM_ON
    return Image.fromarray(img)


@functools.lru_cache(maxsize=None)
def _layers(jx: int, jy: int) -> dict[str, np.ndarray]:
    """The avatar's regions at position jitter (jx, jy), as read-only flat pixel indices (row-major), and
    "cell": the emblem cell of each emblem pixel. They depend on the jitter alone: the 49 layouts are
    drawn once."""
    dx = _GRID_X - (CENTRE[0] + jx)
    dy = _GRID_Y - (CENTRE[1] + jy)
    cap = ellipse(dx, dy - CAP_CENTRE_DY, *CAP_RADII)
    long_hair = (np.abs(dx) <= LONG_HAIR_HALF_WIDTH) & (dy >= LONG_HAIR_DY[0]) & (dy <= LONG_HAIR_DY[1])
    eyes = np.zeros((SIZE, SIZE), dtype=bool)
    for ex, ey in EYE_OFFSETS:
        eyes |= (np.abs(dx - ex) <= EYE_HALF[0]) & (np.abs(dy - ey) <= EYE_HALF[1])
    emblem, cell = _emblem(dx, dy)
    masks = {"long_hair": cap | long_hair, "short_hair": cap & (dy <= CAP_MAX_DY), "torso": _torso(dx, dy),
             "face": ellipse(dx, dy, *FACE_RADII), "eyes": eyes, "emblem": emblem}
    out = {name: np.flatnonzero(mask) for name, mask in masks.items()}
    out["cell"] = cell[emblem]
    for index in out.values():
        index.flags.writeable = False
    return out
