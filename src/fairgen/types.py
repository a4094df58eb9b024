"""Shared types: the few small objects every stage passes to the next.

Kept in one module so no stage has to import another stage's internals (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

# Attribute class sets: fixed names, used everywhere (docs/architecture.md, "Protocols"). Order is the canonical order of
# count vectors and probability vectors. "old" means perceived age 50 and over, for every backend.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male"),
    "race": ("white", "black", "asian", "indian"),
    "age": ("young", "old"),
}
# The joint gender x race attribute: 8 classes named "<gender>_<race>", gender-major order.
JOINT = "gender_x_race"
JOINT_CLASSES: tuple[str, ...] = tuple(f"{g}_{r}" for g in ATTRIBUTES["gender"] for r in ATTRIBUTES["race"])
# Every attribute a metric is reported for, with its classes.
METRIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "gender": ATTRIBUTES["gender"],
    "race": ATTRIBUTES["race"],
    JOINT: JOINT_CLASSES,
    "age": ATTRIBUTES["age"],
}


class FairgenError(Exception):
    """A problem with the user's input or environment. The CLI prints its message as one line, exit 2."""


@dataclass(frozen=True)
class Prompt:
    """One prompt of a suite.

    id: stable identifier, unique within the suite, safe as a directory name.
    text: what the model is asked to draw.
    concept: what the prompt is about ("nurse"); matches world spec concept names.
    group: explicit demographic request, e.g. {"gender": "female"}; empty for neutral prompts.
    """

    id: str
    text: str
    concept: str
    group: Mapping[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.text


def prompt_text(prompt: "Prompt | str") -> str:
    """The text of a prompt given either as a Prompt or as a plain string."""
    return prompt.text if isinstance(prompt, Prompt) else str(prompt)


@dataclass
class Perception:
    """What a perception backend saw in one image.

    face: whether a face was detected. Images without a face are kept and counted, never dropped.
    box: face box (x0, y0, x1, y1) in pixels of the image as given, or None.
    probs: per attribute, a probability for every class of ATTRIBUTES[attr]; an attribute the backend
        does not measure is absent (never zero). Empty when face is False.
    concept_read: a concept cue read back from the image (world backend), or None.
    error: set when the image could not be read at all (unreadable / truncated file).
    """

    face: bool
    box: tuple[int, int, int, int] | None = None
    probs: dict[str, dict[str, float]] = field(default_factory=dict)
    concept_read: str | None = None
    error: str | None = None

    def label(self) -> dict[str, str]:
        """Argmax class per measured attribute (ties go to the first class in canonical order)."""
        out = {}
        for attr, p in self.probs.items():
            classes = ATTRIBUTES[attr]
            out[attr] = max(classes, key=lambda c: (p.get(c, 0.0), -classes.index(c)))
        return out
