"""The planted-bias world spec: per concept, the distribution each perceived attribute is drawn from.

YAML form (docs/architecture.md, "The synthetic world"):

    default: {gender: {female: 0.5, male: 0.5}, race: {...}, age: {...}}   # all three attributes
    concepts:
      nurse: {gender: {female: 0.9, male: 0.1}}                            # partial: rest from default

Concept names are matched case-insensitively (lower-cased, stripped). A class left out of a distribution
has probability 0; the given probabilities must be finite, non-negative and sum to 1 (within 1e-6).
Attributes are independent within a concept.
"""

from __future__ import annotations

import hashlib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..types import ATTRIBUTES, FairgenError
from ..yamlfile import load_yaml
from .render import normalise_concept

SUM_TOLERANCE = 1e-6

Distribution = dict[str, float]  # class -> probability
ConceptDistributions = dict[str, Distribution]  # attribute -> distribution (some attributes only)


def _check_distribution(where: str, attribute: str, dist: Mapping[str, float]) -> None:
    """FairgenError naming `where` and the attribute if `dist` is not a distribution over its classes."""
    if attribute not in ATTRIBUTES:
        raise FairgenError(f"world spec {where}: unknown attribute {attribute!r} (expected one of: "
                           f"{', '.join(ATTRIBUTES)})")
    classes = ATTRIBUTES[attribute]
    for cls, p in dist.items():
        if cls not in classes:
            raise FairgenError(f"world spec {where}.{attribute}: unknown class {cls!r} (expected one of: "
                               f"{', '.join(classes)})")
        if not math.isfinite(p) or p < 0:
            raise FairgenError(f"world spec {where}.{attribute}.{cls}: probability must be finite and >= 0, "
                               f"got {p}")
    total = sum(dist.values())
    if abs(total - 1.0) > SUM_TOLERANCE:
        raise FairgenError(f"world spec {where}.{attribute}: probabilities sum to {total:.6g}, not 1")


class WorldSpec(BaseModel):
    """Per-concept attribute distributions. Build with load(), default(), from_dict() or the constructor."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    # Named "default" in YAML; the attribute is `defaults` because WorldSpec.default() is the packaged spec.
    defaults: dict[str, Distribution] = Field(alias="default")
    concepts: dict[str, ConceptDistributions] = Field(default_factory=dict)

    @field_validator("concepts", mode="before")
    @classmethod
    def _empty_concepts(cls, concepts: Any) -> Any:
        return {} if concepts is None else concepts  # "concepts:" with nothing under it

    @field_validator("concepts", mode="after")
    @classmethod
    def _normalise_names(cls, concepts: dict[str, ConceptDistributions]) -> dict[str, ConceptDistributions]:
        out: dict[str, ConceptDistributions] = {}
        for name, dists in concepts.items():
            key = name.strip().lower()
            if not key:
                raise FairgenError("world spec: a concept name is empty")
            if key in out:
                raise FairgenError(f"world spec: concept {key!r} is given twice (names are case-insensitive)")
            out[key] = dists
        return out

    @model_validator(mode="after")
    def _check(self) -> "WorldSpec":
        missing = [a for a in ATTRIBUTES if a not in self.defaults]
        if missing:
            raise FairgenError(f"world spec default: missing attribute(s) {', '.join(missing)} "
                               f"(default must give all of: {', '.join(ATTRIBUTES)})")
        for attribute, dist in self.defaults.items():
            _check_distribution("default", attribute, dist)
        for name, dists in self.concepts.items():
            for attribute, dist in dists.items():
                _check_distribution(f"concepts.{name}", attribute, dist)
        return self

    @classmethod
    def from_dict(cls, data: Any) -> "WorldSpec":
        """Validate a parsed spec (e.g. from YAML); any problem is a one-line FairgenError."""
        if not isinstance(data, Mapping):
            raise FairgenError("world spec: expected a mapping with 'default' and 'concepts', "
                               f"got {type(data).__name__}")
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(part) for part in err["loc"]) or "top level"
            raise FairgenError(f"world spec {where}: {err['msg']}") from None

    @classmethod
    def load(cls, path: str | Path) -> "WorldSpec":
        """Read and validate a spec YAML file."""
        path = Path(path)
        if not path.is_file():
            raise FairgenError(f"world spec not found: {path}")
        try:
            data = load_yaml(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise FairgenError(f"world spec {path}: malformed YAML: {' '.join(str(e).split())}") from None
        except UnicodeDecodeError as e:
            raise FairgenError(f"world spec {path}: not UTF-8 text ({e.reason})") from None
        try:
            return cls.from_dict(data)
        except FairgenError as e:  # name the file: "world spec spec.yaml: concepts.nurse.gender: ..."
            raise FairgenError(str(e).replace("world spec", f"world spec {path}:", 1).replace(":: ", ": ")) from None

    @classmethod
    def default(cls) -> "WorldSpec":
        """The packaged default_spec.yaml (50 occupations with skews of the size real models show)."""
        text = resources.files("fairgen.world").joinpath("default_spec.yaml").read_text(encoding="utf-8")
        return cls.from_dict(load_yaml(text))

    def distribution(self, concept: str) -> dict[str, dict[str, float]]:
        """Per attribute, the probability of every class (canonical order) for a concept.

        Concept names match case-insensitively; an unknown concept gets the default distributions.
        """
        own = self.concepts.get(normalise_concept(concept), {})
        return {a: {c: float((own[a] if a in own else self.defaults[a]).get(c, 0.0)) for c in classes}
                for a, classes in ATTRIBUTES.items()}

    def sample(self, concept: str, rng: np.random.Generator) -> dict[str, str]:
        """One class per attribute, drawn independently; exactly one rng.random() per attribute, in
        ATTRIBUTES order, so a seeded generator gives reproducible draws."""
        out = {}
        for attribute, dist in self.distribution(concept).items():
            cumulative = np.cumsum(list(dist.values()))
            u = rng.random() * cumulative[-1]  # the sum is 1 within tolerance; scaling absorbs the rest
            out[attribute] = list(dist)[int(np.searchsorted(cumulative, u, side="right"))]
        return out

    def canonical(self) -> dict[str, Any]:
        """The spec with every distribution spelt out over all classes and concepts sorted by name."""
        def spelt_out(attribute: str, dist: Distribution) -> dict[str, float]:
            return {c: float(dist.get(c, 0.0)) for c in ATTRIBUTES[attribute]}

        return {
            "default": {a: spelt_out(a, self.defaults[a]) for a in ATTRIBUTES},
            "concepts": {name: {a: spelt_out(a, d) for a, d in sorted(dists.items())}
                         for name, dists in sorted(self.concepts.items())},
        }

    def sha256(self) -> str:
        """Hex SHA-256 of the canonical content: equal for specs that differ only in key order, concept-name
        case or left-out zero classes (for run provenance)."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
