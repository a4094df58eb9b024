"""A simulation harness: a perception backend made wrong in a known way.

`NoisyPerception(base, confusion, miss_rates, seed)` wraps any backend and, image by image, (1) drops the face
with a probability that depends on the base's labels (group-dependent detection) and (2) re-labels the base's
argmax class through a known confusion matrix. Wrapped around the exact world reader, it is a classifier
whose errors are known exactly, so classifier-error correction (metrics/correction.py) can be tested
against the truth. The noise is a deterministic function of (seed, image pixels): the same image always gets
the same reading, so audits stay resumable and reproducible.

    --perception world-noisy:NOISE.yaml[,seed=S]     the world reader with the noise of a YAML file:

    confusion:            # attribute -> true class -> {read-as class: probability}; the rest stays correct
      gender: {female: {male: 0.15}, male: {female: 0.05}}
      race: {indian: {white: 0.10}}            # or gender_x_race: {female_black: {male_black: 0.2}, ...}
    miss:                 # attribute -> true class -> probability that no face is found
      gender: {female: 0.10, male: 0.02}       # several attributes combine: P(found) = product of (1 - miss)
    seed: 0               # optional; the seed= option overrides it
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml
from PIL import Image

from ..types import JOINT, METRIC_ATTRIBUTES, FairgenError, Perception
from ..yamlfile import load_yaml
from .base import PerceptionBackend

# Which uniform of an image's four drives what: 0 the miss, then one per confusion slot.
_SLOTS = {"gender": 1, JOINT: 1, "race": 2, "age": 3}


def _check_rows(where: str, attr: str, rows: Any, matrix: bool) -> dict[str, Any]:
    """A {class: ...} mapping over attr's classes, checked; FairgenError names `where`."""
    classes = METRIC_ATTRIBUTES[attr]
    if not isinstance(rows, Mapping):
        raise FairgenError(f"{where}.{attr}: expected a mapping of class -> {'row' if matrix else 'rate'}")
    for cls, value in rows.items():
        if cls not in classes:
            raise FairgenError(f"{where}.{attr}: unknown class {cls!r} "
                               f"(expected one of: {', '.join(classes)})")
        values = value.items() if matrix and isinstance(value, Mapping) else [(cls, value)]
        if matrix and not isinstance(value, Mapping):
            raise FairgenError(f"{where}.{attr}.{cls}: expected a mapping of read-as class -> probability")
        for to, p in values:
            if to not in classes:
                raise FairgenError(f"{where}.{attr}.{cls}: unknown class {to!r}")
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                raise FairgenError(f"{where}.{attr}.{cls}: probabilities must be numbers in [0, 1], "
                                   f"got {p!r}")
    return dict(rows)


def confusion_matrix(attr: str, rows: Mapping[str, Mapping[str, float]]) -> np.ndarray:
    """(K, K) row-stochastic matrix from {true: {read-as: p}}; a row's remainder stays on its true class."""
    classes = METRIC_ATTRIBUTES[attr]
    m = np.zeros((len(classes), len(classes)))
    for t, row in rows.items():
        for p, prob in row.items():
            if p != t:
                m[classes.index(t), classes.index(p)] = prob
    off = m.sum(axis=1)
    if (off > 1 + 1e-9).any():
        bad = classes[int(np.argmax(off))]
        raise FairgenError(f"noise confusion.{attr}.{bad}: read-as probabilities sum to {off.max():.6g} > 1")
    m[np.diag_indices_from(m)] = 1 - off
    return m


class NoisyPerception:
    """PerceptionBackend wrapping `base`: misses faces and misreads classes with known probabilities.

    confusion: {attribute: {true class: {read-as class: p}}} over gender, race, age or gender_x_race (the
        joint matrix replaces separate gender and race ones). Labels are the base's argmax classes.
    miss_rates: {attribute: {true class: p}}: probability that the face is not found (face=False, nothing
        read); rates of several attributes combine as independent misses.
    seed: with the image's pixels, determines every draw.
    A misread class takes the base's probability of the true class and vice versa, so the new argmax is the
    misread class and the base's confidence is kept.
    """

    def __init__(
        self,
        base: PerceptionBackend,
        confusion: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
        miss_rates: Mapping[str, Mapping[str, float]] | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        confusion, miss_rates = dict(confusion or {}), dict(miss_rates or {})
        measured = set(base.attributes) | ({JOINT} if {"gender", "race"} <= set(base.attributes) else set())
        for where, given in (("confusion", confusion), ("miss", miss_rates)):
            for attr in given:
                if attr not in measured:
                    raise FairgenError(f"noise {where}: attribute {attr!r} is not measured by {base.name} "
                                       f"(it measures: {', '.join(sorted(measured))})")
        if JOINT in confusion and ({"gender", "race"} & set(confusion)):
            raise FairgenError("noise confusion: give gender_x_race or gender/race, not both")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise FairgenError(f"noise seed must be a non-negative integer, got {seed!r}")
        self.base = base
        self.attributes = tuple(base.attributes)
        self.reads_concept = getattr(base, "reads_concept", False)  # the concept cue passes through untouched
        self.process_safe = getattr(base, "process_safe", False)  # the noise is a function of (seed, pixels)
        self.name = name or f"noisy({base.name})"
        self.seed = seed
        self.confusion = {a: confusion_matrix(a, _check_rows("noise confusion", a, r, True))
                          for a, r in confusion.items()}
        self.miss = {}
        for a, rows in miss_rates.items():
            rates = _check_rows("noise miss", a, rows, False)
            self.miss[a] = np.array([float(rates.get(c, 0.0)) for c in METRIC_ATTRIBUTES[a]])
        self._cumulative = {a: np.cumsum(m, axis=1) for a, m in self.confusion.items()}
        self._key = seed.to_bytes(8, "little")

    def provenance(self) -> dict[str, Any]:
        """The base's provenance plus the exact noise (matrices and miss rates) and the seed."""
        return {
            "base": self.base.provenance(),
            "confusion": {a: m.round(12).tolist() for a, m in self.confusion.items()},
            "miss": {a: m.tolist() for a, m in self.miss.items()},
            "seed": self.seed,
        }

    def perceive(self, images: Sequence[Image.Image]) -> list[Perception]:
        """One Perception per image, in order: the base's reading, corrupted by this wrapper's noise."""
        return [self.corrupt(p, image_key(im)) for p, im in zip(self.base.perceive(images), images)]

    def uniforms(self, key: bytes) -> np.ndarray:
        """Four uniforms in [0, 1) from (seed, key): a keyed hash, each key with its own independent draws."""
        digest = hashlib.blake2b(key, digest_size=32, key=self._key).digest()
        return (np.frombuffer(digest, dtype="<u8") >> np.uint64(11)) / 2.0**53  # 53 bits: exactly < 1

    def corrupt(self, seen: Perception, key: bytes) -> Perception:
        """The noisy reading of an image whose base reading is `seen`; `key` identifies it (image_key)."""
        if not seen.face:
            return seen
        labels = seen.label()
        if "gender" in labels and "race" in labels:
            labels[JOINT] = f"{labels['gender']}_{labels['race']}"
        u = self.uniforms(key)
        found = np.prod([1 - rates[METRIC_ATTRIBUTES[a].index(labels[a])] for a, rates in self.miss.items()])
        if u[0] >= found:
            return Perception(face=False)
        read = dict(labels)
        for attr, cumulative in self._cumulative.items():
            classes = METRIC_ATTRIBUTES[attr]
            row = cumulative[classes.index(labels[attr])]
            pick = int(np.searchsorted(row, u[_SLOTS[attr]], side="right"))
            read[attr] = classes[min(pick, len(classes) - 1)]  # min: a row summing to 1 - 1e-16
        if JOINT in self.confusion:
            read["gender"], read["race"] = read[JOINT].split("_")
        probs = {a: _swap(p, labels[a], read[a]) for a, p in seen.probs.items()}
        return Perception(face=True, box=seen.box, probs=probs, concept_read=seen.concept_read,
                          error=seen.error)


def _swap(probs: Mapping[str, float], true: str, read: str) -> dict[str, float]:
    """probs with the values of classes `true` and `read` exchanged."""
    out = dict(probs)
    out[true], out[read] = probs[read], probs[true]
    return out


def image_key(image: Image.Image) -> bytes:
    """What identifies an image for the noise: its size and RGB pixels (a PNG round trip keeps it)."""
    rgb = image.convert("RGB")
    return f"{rgb.size[0]}x{rgb.size[1]}:".encode() + rgb.tobytes()


class WorldNoisyPerception(NoisyPerception):
    """The `world-noisy` backend: the exact world reader with the noise of a YAML file (module docstring)."""

    OPTIONS = ("spec", "seed")

    def __init__(self, spec: str | None = None, seed: str | None = None) -> None:
        from .world import WorldPerception

        if not spec:
            raise FairgenError("perception world-noisy needs a noise file: world-noisy:NOISE.yaml")
        path = Path(spec).expanduser().resolve()
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FairgenError(f"perception world-noisy: noise file {path} not found") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise FairgenError(f"perception world-noisy: cannot read {path} ({type(e).__name__})") from None
        data = {} if data is None else data
        if not isinstance(data, dict) or set(data) - {"confusion", "miss", "seed"}:
            raise FairgenError(f"noise file {path}: expected a mapping with keys confusion, miss, seed")
        for key in ("confusion", "miss"):
            if not isinstance(data.get(key) or {}, dict):
                raise FairgenError(f"noise file {path}: {key} must be a mapping of attribute -> classes")
        try:
            chosen = int(seed) if seed is not None else data.get("seed", 0)
        except ValueError:
            raise FairgenError(f"perception world-noisy: seed must be an integer, got {seed!r}") from None
        name = f"world-noisy:spec={path}" + (f",seed={chosen}" if seed is not None else "")
        super().__init__(WorldPerception(), data.get("confusion"), data.get("miss"), chosen, name)
        self.noise_sha256 = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def provenance(self) -> dict[str, Any]:
        return {**super().provenance(), "noise_sha256": self.noise_sha256}


__all__ = ["NoisyPerception", "WorldNoisyPerception", "confusion_matrix", "image_key"]
