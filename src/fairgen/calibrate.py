"""calibrate: measure a perception backend's mistakes on labelled faces, for corrected audits.

    fairgen calibrate --perception P --labelled SOURCE --out CAL.json
    fairgen audit ... --perception P --calibration CAL.json

SOURCE (labelled.py): `world[:N]` balanced world renders, a CSV `file,gender,race,age` (FairFace's own
label files work as they are), or a folder of class folders.

The calibration holds, per block of attributes measured together (gender × race jointly as one 8 × 8
confusion, or gender / race alone when only one is measured or labelled; age 2 × 2), counts of labelled images
and of faces found per true class and the true × predicted confusion counts, with detection rate and accuracy
per class for reading; docs/calibration.md describes the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from . import perception as perception_registry
from .config import AuditConfig
from .labelled import labelled_set
from .metrics.correction import BLOCK_TARGETS, CalibrationBlock, corrected_results
from .perception.base import PerceptionBackend
from .store import atomic_write_json, file_sha256, now, versions
from .types import JOINT, METRIC_ATTRIBUTES, FairgenError, Perception

FORMAT, VERSION = "fairgen-calibration", 1
# Provenance keys that say where files lie, not what they are: ignored when matching a calibration to a
# backend.
_LOCATION_KEYS = {"weights", "dir", "versions"}


@dataclass(frozen=True)
class Calibration:
    """A backend's measured errors: blocks by attribute (metrics.correction.CalibrationBlock).

    backend / provenance: the calibrated backend's name and provenance. source: the labelled set.
    n_images: labelled images given; n_unreadable: those that could not be decoded (left out of the counts).
    path / sha256: the file it was loaded from, when loaded.
    """

    backend: str
    provenance: dict[str, Any]
    source: str
    n_images: int
    n_unreadable: int
    blocks: dict[str, CalibrationBlock]
    path: str | None = field(default=None, compare=False)
    sha256: str | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The CAL.json content: counts, plus detection rate, accuracy and condition number for reading."""
        blocks = {}
        for attr, b in self.blocks.items():
            def named(values: Any, cast: Callable[[Any], Any], classes: Sequence[str] = b.classes) -> dict:
                return {c: cast(v) for c, v in zip(classes, values)}

            blocks[attr] = {
                "classes": list(b.classes),
                "n_labelled": named(b.n_labelled, int),
                "n_detected": named(b.n_detected, int),
                "detection_rate": named(b.detection_rate, float),
                "accuracy": named(b.accuracy, float),
                "condition_number": b.condition_number,
                "confusion": {t: named(row, int) for t, row in zip(b.classes, b.confusion)},
            }
        labelled = {"source": self.source, "n_images": self.n_images, "n_unreadable": self.n_unreadable}
        return {"format": FORMAT, "version": VERSION, "created": now(),
                "fairgen_version": versions().get("fairgen"), "backend": self.backend,
                "provenance": self.provenance, "labelled": labelled, "blocks": blocks}

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Calibration":
        """Validate a CAL.json object; anything malformed is a one-line FairgenError naming `where`."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise FairgenError(f"{where} is not a fairgen calibration file (no \"format\": \"{FORMAT}\")")
        if data.get("version") != VERSION:
            raise FairgenError(f"{where}: calibration version {data.get('version')!r} is not supported "
                               f"({VERSION})")
        backend, provenance, labelled, blocks = (data.get(k) for k in
                                                 ("backend", "provenance", "labelled", "blocks"))
        if not isinstance(backend, str) or not backend or not isinstance(provenance, dict):
            raise FairgenError(f"{where}: 'backend' must be a name and 'provenance' an object")
        counts = ("n_images", "n_unreadable")
        if not isinstance(labelled, dict) or not all(_count(labelled.get(k)) for k in counts):
            raise FairgenError(f"{where}: 'labelled' must give n_images and n_unreadable as counts")
        if not isinstance(blocks, dict) or not blocks:
            raise FairgenError(f"{where}: 'blocks' must be a non-empty object")
        if JOINT in blocks and {"gender", "race"} & set(blocks):
            raise FairgenError(f"{where}: a gender_x_race block already covers gender and race; found both")
        parsed = {}
        for attr, block in blocks.items():
            if attr not in BLOCK_TARGETS:
                raise FairgenError(f"{where}: unknown block {attr!r} "
                                   f"(expected one of: {', '.join(BLOCK_TARGETS)})")
            parsed[attr] = _block_from_json(attr, block, f"{where} block {attr}")
        return cls(backend, provenance, str(labelled.get("source", "")), labelled["n_images"],
                   labelled["n_unreadable"], parsed)

    def check_for(self, backend: PerceptionBackend, where: str) -> None:
        """FairgenError unless this calibration describes `backend` and every block can correct: same
        backend family and same provenance (weights' sha256, settings; not where the files lie), blocks over
        attributes the backend measures, invertible confusion."""
        family = backend.name.partition(":")[0]
        current = json.loads(json.dumps(backend.provenance()))  # as stored: tuples become lists
        if self.backend.partition(":")[0] != family or _identity(self.provenance) != _identity(current):
            raise FairgenError(f"{where} was made with perception {self.backend}, not {backend.name} "
                               "(or with other weights or settings); calibrate this backend")
        for attr, block in self.blocks.items():
            missing = [a for a in attr.split("_x_") if a not in backend.attributes]
            if missing:
                raise FairgenError(f"{where}: block {attr} needs {missing[0]}, "
                                   f"which {backend.name} does not measure")
            block.check(f"{where}")


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _block_from_json(attr: str, block: Any, where: str) -> CalibrationBlock:
    classes = METRIC_ATTRIBUTES[attr]
    if not isinstance(block, dict):
        raise FairgenError(f"{where}: expected an object")
    if block.get("classes") != list(classes):
        raise FairgenError(f"{where}: classes {block.get('classes')!r} do not match {attr}'s "
                           f"({', '.join(classes)})")

    def vector(value: Any, what: str) -> list[int]:
        if not isinstance(value, dict) or set(value) != set(classes) or not all(map(_count, value.values())):
            raise FairgenError(f"{where}: {what} must give a count (integer >= 0) for each of "
                               f"{', '.join(classes)}")
        return [value[c] for c in classes]

    n = vector(block.get("n_labelled"), "n_labelled")
    rows = block.get("confusion")
    if not isinstance(rows, dict) or set(rows) != set(classes):
        raise FairgenError(f"{where}: confusion must have one row per true class ({', '.join(classes)})")
    confusion = np.array([vector(rows[c], f"confusion row {c}") for c in classes], dtype=np.int64)
    over = confusion.sum(axis=1) > np.array(n)
    if over.any():
        raise FairgenError(f"{where}: confusion row {classes[int(np.argmax(over))]} counts more faces than "
                           "labelled images")
    return CalibrationBlock(attr, np.array(n, dtype=np.int64), confusion)


def _identity(provenance: Any) -> Any:
    """Provenance without the keys that only say where files lie or which package versions ran."""
    if isinstance(provenance, dict):
        return {k: _identity(v) for k, v in provenance.items() if k not in _LOCATION_KEYS}
    return provenance


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate CAL.json; FairgenError for a missing, unreadable or malformed file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FairgenError(f"calibration file {p} not found (make one with fairgen calibrate)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FairgenError(f"calibration file {p} cannot be read as JSON ({type(e).__name__})") from None
    cal = Calibration.from_json(data, f"calibration {p}")
    return replace(cal, path=str(p), sha256=file_sha256(p))


# --- calibration --------------------------------------------------------------------------------------


def block_attributes(measured: Sequence[str], truths: Sequence[Mapping[str, str]]) -> list[str]:
    """The blocks a backend measuring `measured` can be calibrated for on these labels: gender × race jointly
    when both are measured and some image has both labels, else gender and race alone; age alone."""
    labelled = {a for t in truths for a in t}
    blocks = []
    if {"gender", "race"} <= set(measured) and any("gender" in t and "race" in t for t in truths):
        blocks.append(JOINT)
    else:
        blocks += [a for a in ("gender", "race") if a in measured and a in labelled]
    if "age" in measured and "age" in labelled:
        blocks.append("age")
    if not blocks:
        raise FairgenError("the labelled set labels none of the attributes the backend measures "
                           f"({', '.join(measured)})")
    return blocks


def _class(labels: Mapping[str, str], attr: str) -> str | None:
    """labels' class of a block attribute (gender_x_race -> "<gender>_<race>"), None when not all there."""
    parts = attr.split("_x_")
    return "_".join(labels[a] for a in parts) if all(a in labels for a in parts) else None


def calibration_from(backend: PerceptionBackend, source: str, truths: Sequence[Mapping[str, str]],
                     seen: Sequence[Perception | None]) -> Calibration:
    """Count a backend's readings `seen` (None: unreadable image) of labelled images with `truths`."""
    blocks = {}
    for attr in block_attributes(backend.attributes, truths):
        index = {c: k for k, c in enumerate(METRIC_ATTRIBUTES[attr])}
        k = len(index)
        n, confusion = np.zeros(k, dtype=np.int64), np.zeros((k, k), dtype=np.int64)
        for truth, s in zip(truths, seen):
            t = _class(truth, attr)
            if t is None or s is None:
                continue
            n[index[t]] += 1
            p = _class(s.label(), attr) if s.face else None
            if p is not None:
                confusion[index[t], index[p]] += 1
        missing = [c for c, m in zip(index, n) if m == 0]
        if missing:
            raise FairgenError(f"the labelled set has no readable image of true class {missing[0]}, "
                               f"needed for the {attr} confusion matrix")
        block = CalibrationBlock(attr, n, confusion)
        block.check(f"calibration of {backend.name}")
        blocks[attr] = block
    unreadable = sum(s is None for s in seen)
    return Calibration(backend.name, backend.provenance(), source, len(truths), unreadable, blocks)


def calibrate(
    perception: str | PerceptionBackend,
    labelled: str | Path,
    out: str | Path | None = None,
    batch_size: int = AuditConfig.batch_size,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Run a backend over a labelled set and count its mistakes; writes CAL.json to `out` when given.

    perception: backend spec or backend. labelled: world[:N], a CSV, or a folder (fairgen.labelled).
    seed: the world renders' seeds (world[:N] only). progress: called as progress(done, total).
    """
    if batch_size < 1:
        raise FairgenError(f"batch size must be positive (got {batch_size})")
    if out is not None and Path(out).is_dir():
        raise FairgenError(f"--out {out} is a directory; give a file name such as CAL.json")
    backend = perception_registry.load(perception) if isinstance(perception, str) else perception
    data = labelled_set(labelled, seed)
    block_attributes(backend.attributes, data.truths)  # refuse a useless label set before any work
    seen: list[Perception | None] = []
    total = len(data.truths)
    for start in range(0, total, batch_size):
        images: list[Image.Image | None] = []
        for i in range(start, min(start + batch_size, total)):
            try:
                images.append(data.load(i))
            except (OSError, ValueError):  # missing or undecodable file: counted as unreadable
                images.append(None)
        read = iter(backend.perceive([im for im in images if im is not None]))
        seen += [next(read) if im is not None else None for im in images]
        if progress:
            progress(len(seen), total)
    cal = calibration_from(backend, data.source, data.truths, seen)
    if out is not None:
        atomic_write_json(Path(out), cal.to_json())
    return cal


def add_corrected(results: dict[str, Any], counts: Mapping[str, np.ndarray], calibration: Calibration,
                  replicates: int, seed: int) -> None:
    """Add corrected estimates to a results.json dict in place (additive: no raw value changes).

    results["calibration"]: which file and backend. summary[attr]: "rd_corrected" {"mean", "ci95"} and
    "shares_corrected" {class: {"mean", "ci95"}} (None for a measured attribute no block covers).
    summary["detection_rate_gap"]: {block: {"rates", "gap", "p_value"}}. prompts[i]["corrected"]: {attr:
    {"shares", "shares_ci95", "rd", "rd_ci95"} or None}. counts: MetricFrame.counts.
    """
    summary, prompts, gaps = corrected_results(dict(counts), calibration.blocks, replicates, seed)
    results["calibration"] = {"file": calibration.path, "sha256": calibration.sha256,
                              "backend": calibration.backend, "source": calibration.source,
                              "n_images": calibration.n_images, "blocks": sorted(calibration.blocks)}
    for attr in METRIC_ATTRIBUTES:
        entry = results["summary"].get(attr)
        if entry is not None:
            entry.update(summary.get(attr) or {"rd_corrected": None, "rd_corrected_population": None,
                                                 "shares_corrected": None})
    results["summary"]["detection_rate_gap"] = gaps
    for row, extra in zip(results["prompts"], prompts):
        row["corrected"] = {attr: extra.get(attr) for attr in METRIC_ATTRIBUTES}
