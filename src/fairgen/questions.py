"""The questions fairgen asks models, in one place: the locate probe's question about a concept (asked with
no image) and the question about a pictured person (fix's understanding check). fairgen-tiny's training
data teaches exactly these wordings (docs/architecture.md, "Questions")."""

from __future__ import annotations

from .types import ATTRIBUTES

UNKNOWN = "unknown"
# The locate probe, asked with no image: a model aligned with itself answers "unknown" for a neutral concept.
PROBE_QUESTION = (
    "What is the {attribute} of a {concept}? Possible answers: {options}, unknown. Answer with a single word."
)
IMAGE_QUESTION = (
    "What is the {attribute} of the person in the image? Possible answers: {options}. "
    "Answer with a single word."
)
# The order options are listed in: the locate probe's ("male, female"), then canonical for the rest.
OPTION_ORDER = {"gender": ("male", "female"), "race": ATTRIBUTES["race"], "age": ATTRIBUTES["age"]}


def probe_question(attribute: str, concept: str) -> str:
    """PROBE_QUESTION about one attribute of a concept, its options in OPTION_ORDER and then "unknown"."""
    return PROBE_QUESTION.format(attribute=attribute, concept=concept, options=", ".join(OPTION_ORDER[attribute]))


def probe_options(attribute: str) -> tuple[str, ...]:
    """The probe's options, in the order the question lists them."""
    return (*OPTION_ORDER[attribute], UNKNOWN)


def image_question(attribute: str) -> str:
    """IMAGE_QUESTION about one attribute, its options in OPTION_ORDER."""
    return IMAGE_QUESTION.format(attribute=attribute, options=", ".join(OPTION_ORDER[attribute]))
