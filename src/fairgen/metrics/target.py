"""Target distributions and the distance of a model's class shares to them.

rd, KL and entropy measure skew against the uniform distribution. A target says what the shares
*should* be instead: uniform (the default, as in Liu et al. and Shen et al.), or per concept and attribute
from a YAML file, e.g. a labour-statistics table ("compared with the world") or Shen et al.'s 75/25 age
split. Distances to it, per prompt (P,) from counts (P, K):

- total variation, TV = ½ Σ_k |f_k − t_k|, in [0, 1];
- Jensen–Shannon divergence in bits, JS = ½ KL(f‖m) + ½ KL(t‖m) with m = (f + t)/2, in [0, 1].

File format (docs/metrics.md "Targets")::

    source: "where the numbers come from (table, year)"
    default:                 # every concept not listed below; attributes left out stay uniform
      age: {young: 0.75, old: 0.25}
    concepts:
      nurse:
        gender: {female: 0.87, male: 0.13}

Each distribution lists every class of its attribute (types.ATTRIBUTES) with a share ≥ 0; the shares must
sum to 1 within SUM_TOLERANCE and are then renormalised exactly. gender_x_race's target is the product of
the gender and race targets unless given explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import yaml
from numpy.typing import ArrayLike

from ..types import JOINT, METRIC_ATTRIBUTES, FairgenError, Prompt
from ..yamlfile import load_yaml
from .skew import frequencies

# How far a target's shares may sum from 1 (rounded published percentages sum to 0.999-1.001).
SUM_TOLERANCE = 0.005


@dataclass(frozen=True)
class Target:
    """Class shares a model should produce, per concept and attribute.

    name: "uniform" or the file it was read from. source: the file's citation, if any.
    default: attribute -> shares (K,) for concepts not listed; attributes absent there are uniform.
    concepts: concept -> attribute -> shares (K,).
    """

    name: str = "uniform"
    source: str | None = None
    default: Mapping[str, np.ndarray] = field(default_factory=dict)
    concepts: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)

    @property
    def is_uniform(self) -> bool:
        return not self.default and not self.concepts

    def shares(self, attribute: str, concept: str | None = None) -> np.ndarray:
        """Target shares (K,) of one attribute for one concept, in METRIC_ATTRIBUTES order."""
        for table in (self.concepts.get(concept or "", {}), self.default):
            if attribute in table:
                return table[attribute]
        if attribute == JOINT:  # independence of gender and race unless the joint is given
            g, r = self.shares("gender", concept), self.shares("race", concept)
            return np.outer(g, r).ravel()
        k = len(METRIC_ATTRIBUTES[attribute])
        return np.full(k, 1.0 / k)

    def matrix(self, attribute: str, prompts: Sequence[Prompt]) -> np.ndarray:
        """Target shares for each prompt's concept: (P, K)."""
        return np.stack([self.shares(attribute, p.concept) for p in prompts])

    def to_json(self) -> dict[str, Any]:
        """What results.json records of the target (its name, source and the distributions used)."""
        as_dict = lambda table: {  # noqa: E731
            a: dict(zip(METRIC_ATTRIBUTES[a], map(float, s))) for a, s in table.items()
        }
        return {
            "name": self.name,
            "source": self.source,
            "default": as_dict(self.default),
            "concepts": {c: as_dict(t) for c, t in self.concepts.items()},
        }


UNIFORM = Target()


def load_target(spec: str | Path | None) -> Target:
    """`uniform` (or None) -> the uniform target; otherwise a YAML file as in the module docstring.

    Raises FairgenError naming the first problem: unreadable file, unknown attribute or class, a class
    left out, a negative share, shares not summing to 1 within SUM_TOLERANCE.
    """
    if spec is None or str(spec) == "uniform":
        return UNIFORM
    path = Path(spec)
    if not path.is_file():
        raise FairgenError(f"--target {spec}: no such file (give 'uniform' or a YAML file)")
    try:
        raw = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise FairgenError(f"--target {spec}: not readable YAML ({type(e).__name__})") from None
    if not isinstance(raw, dict) or not set(raw) <= {"source", "default", "concepts"}:
        raise FairgenError(f"--target {spec}: expected a mapping with keys source, default, concepts")
    concepts = raw.get("concepts") or {}
    if not isinstance(concepts, dict):
        raise FairgenError(f"--target {spec}: 'concepts' must map concept names to distributions")
    return Target(
        name=str(path),
        source=None if raw.get("source") is None else str(raw["source"]),
        default=_table(raw.get("default") or {}, f"--target {spec}: default"),
        concepts={str(c): _table(t or {}, f"--target {spec}: concept {c!r}") for c, t in concepts.items()},
    )


def _table(raw: Any, where: str) -> dict[str, np.ndarray]:
    if not isinstance(raw, dict):
        raise FairgenError(f"{where}: expected attribute: {{class: share}}")
    out = {}
    for attr, dist in raw.items():
        if attr not in METRIC_ATTRIBUTES:
            raise FairgenError(f"{where}: unknown attribute {attr!r} (known: {', '.join(METRIC_ATTRIBUTES)})")
        out[attr] = _shares(dist, METRIC_ATTRIBUTES[attr], f"{where}, {attr}")
    return out


def _shares(dist: Any, classes: Sequence[str], where: str) -> np.ndarray:
    if not isinstance(dist, dict):
        raise FairgenError(f"{where}: expected {{class: share}} for classes {', '.join(classes)}")
    unknown = sorted(set(map(str, dist)) - set(classes))
    if unknown:
        raise FairgenError(f"{where}: unknown class {unknown[0]!r} (classes: {', '.join(classes)})")
    missing = [c for c in classes if c not in dist]
    if missing:
        raise FairgenError(f"{where}: class {missing[0]!r} is missing (list every class, 0 allowed)")
    try:
        s = np.array([float(dist[c]) for c in classes])
    except (TypeError, ValueError):
        raise FairgenError(f"{where}: shares must be numbers") from None
    if not np.isfinite(s).all() or (s < 0).any():
        raise FairgenError(f"{where}: shares must be finite and ≥ 0")
    if abs(s.sum() - 1.0) > SUM_TOLERANCE:
        raise FairgenError(f"{where}: shares sum to {s.sum():.4f}, not 1 (tolerance {SUM_TOLERANCE})")
    return s / s.sum()


def total_variation(counts: ArrayLike, target: ArrayLike) -> np.ndarray | float:
    """½ Σ_k |f_k − t_k| of the shares of `counts` (..., K) against `target` (K,) or (..., K); NaN without counts."""
    f = frequencies(counts)
    out = 0.5 * np.abs(f - np.asarray(target, dtype=float)).sum(axis=-1)
    return float(out) if np.ndim(out) == 0 else out


def jensen_shannon(counts: ArrayLike, target: ArrayLike) -> np.ndarray | float:
    """Jensen–Shannon divergence in bits between the shares of `counts` (..., K) and `target`: in [0, 1]."""
    f = frequencies(counts)
    t = np.broadcast_to(np.asarray(target, dtype=float), f.shape)
    m = (f + t) / 2

    def kl_to_m(p: np.ndarray) -> np.ndarray:
        ratio = np.divide(p, m, out=np.ones_like(p), where=p > 0)
        return (p * np.log2(ratio)).sum(axis=-1)

    out = 0.5 * kl_to_m(f) + 0.5 * kl_to_m(t)
    out = np.where(np.isnan(f).any(axis=-1), np.nan, np.maximum(out, 0.0))
    return float(out) if np.ndim(out) == 0 else out


TARGET_METRICS = {"tv": total_variation, "js": jensen_shannon}
"""Distances to a target: name -> fn(counts (..., K), target (..., K)) -> (...)."""
