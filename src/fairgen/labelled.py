"""Labelled face sets for `fairgen calibrate --labelled SOURCE`: images with their true classes.

SOURCE is one of
- `world[:N]`: N avatars rendered by the synthetic world (default 2000), balanced over the 16 gender × race ×
  age classes, each labelled with the classes it was drawn with;
- a CSV file `file,gender,race,age` (file paths relative to the CSV), or a folder holding exactly one CSV.
  FairFace's label files work as they are: its 7 races map by name (White, Middle Eastern, Latino_Hispanic →
  white; East Asian, Southeast Asian → asian), its age groups by their lower bound (old = 50 and over). An
  empty cell or a missing column means "not labelled";
- a folder of class folders, `DIR/<gender>_<race>/…`, `DIR/<class>/…` (e.g. `female`, `old`,
  `female_white_old`).
"""

from __future__ import annotations

import csv
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image

from .store import derive_seed
from .types import ATTRIBUTES, FairgenError

DEFAULT_WORLD_IMAGES = 2000
WORLD_CONCEPT = "calibration"  # the concept cue of calibration renders: none of an audit's renders share it
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}
# Labels of other datasets, by name (lower case, '_' read as a space). FairFace's 7 races -> the 4-class set.
LABEL_NAMES: dict[str, dict[str, str]] = {
    "gender": {"female": "female", "male": "male", "woman": "female", "man": "male"},
    "race": {"white": "white", "black": "black", "asian": "asian", "indian": "indian",
             "middle eastern": "white", "latino hispanic": "white",
             "east asian": "asian", "southeast asian": "asian"},
    "age": {"young": "young", "old": "old"},
}
OLD_FROM = 50  # age cut shared by every backend: old = 50 and over


@dataclass
class LabelledSet:
    """Labelled images: truths[i] ({attribute: class}, possibly partial) and load(i) -> the image (may raise
    OSError / ValueError for an unreadable file)."""

    source: str
    truths: list[dict[str, str]]
    load: Callable[[int], Image.Image]


def labelled_set(source: str | Path, seed: int = 0) -> LabelledSet:
    """The labelled set a --labelled value names (module docstring)."""
    text = str(source)
    match = re.fullmatch(r"world(?::(\d+))?", text.strip())
    if match:
        return _world_set(int(match.group(1) or DEFAULT_WORLD_IMAGES), seed)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise FairgenError(f"labelled set {path}: expected a CSV file, a folder or world[:N]")
        return _csv_set(path)
    if not path.is_dir():
        raise FairgenError(f"labelled set {path} not found (expected a CSV file, a folder or world[:N])")
    tables = sorted(path.glob("*.csv"))
    if len(tables) > 1:
        raise FairgenError(f"labelled folder {path} holds several CSV files; pass the one to use")
    return _csv_set(tables[0]) if tables else _folder_set(path)


def _world_set(n: int, seed: int) -> LabelledSet:
    if n < 1:
        raise FairgenError("world:N needs N >= 1 labelled renders")
    from .world import render

    classes = list(itertools.product(*ATTRIBUTES.values()))  # 16 (gender, race, age), cycled for balance
    truths = [dict(zip(ATTRIBUTES, classes[i % len(classes)])) for i in range(n)]
    seeds = [derive_seed(seed, WORLD_CONCEPT, i) for i in range(n)]
    return LabelledSet(f"world:{n}", truths,
                       lambda i: render(**truths[i], concept=WORLD_CONCEPT, seed=seeds[i]))


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _csv_set(path: Path) -> LabelledSet:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise FairgenError(f"labelled CSV {path} cannot be read ({type(e).__name__})") from None
    header = {(k or "").strip().lower(): k for k in (rows[0].keys() if rows else [])}
    if "file" not in header or not set(ATTRIBUTES) & set(header):
        raise FairgenError(f"labelled CSV {path}: needs a 'file' column and one of gender, race, age")
    files, truths = [], []
    for line, row in enumerate(rows, start=2):
        name = (row.get(header["file"]) or "").strip()
        if not name:
            raise FairgenError(f"labelled CSV {path} line {line}: empty file name")
        truth = {}
        for attr in ATTRIBUTES:
            value = (row.get(header[attr]) or "").strip() if attr in header else ""
            if value:
                truth[attr] = label(attr, value, f"labelled CSV {path} line {line}")
        files.append(path.parent / name)
        truths.append(truth)
    return LabelledSet(str(path), truths, lambda i: _open(files[i]))


def _folder_set(root: Path) -> LabelledSet:
    files, truths = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        truth: dict[str, str] = {}
        for part in folder.name.lower().split("_"):
            attr = next((a for a, classes in ATTRIBUTES.items() if part in classes), None)
            if attr is None or attr in truth:
                raise FairgenError(f"labelled folder {folder}: name is not classes joined by '_' "
                                   "(e.g. female_white, male, old)")
            truth[attr] = part
        for f in sorted(folder.rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                files.append(f)
                truths.append(truth)
    if not files:
        raise FairgenError(f"labelled folder {root} holds no class folders with images (nor a CSV)")
    return LabelledSet(str(root), truths, lambda i: _open(files[i]))


def label(attr: str, value: str, where: str) -> str:
    """A dataset's label -> our class, by name; ages by number or FairFace's groups ("50-59", "more than 70").
    FairgenError naming `where` for a label that maps to no class."""
    v = " ".join(value.replace("_", " ").lower().split())
    if attr == "age" and v not in LABEL_NAMES["age"]:
        number = re.fullmatch(r"(?:more than |over )?(\d+)(?:\+|-\d+)?", v)
        if number:
            return "old" if int(number.group(1)) >= OLD_FROM else "young"
    if v not in LABEL_NAMES[attr]:
        raise FairgenError(f"{where}: unknown {attr} label {value!r}")
    return LABEL_NAMES[attr][v]
