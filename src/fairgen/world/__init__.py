"""The synthetic ground-truth world: avatar renderer, planted-bias spec and exact reader.

A generator whose images are world avatars can be audited against the truth: the spec says which
demographic distribution each concept was drawn from, and the reader recovers every image's attributes
and concept cue exactly (docs/architecture.md, "The synthetic world").

    render(gender, race, age, concept, seed) -> PIL.Image   a 64x64 avatar
    read(image) -> Perception                               face, box, probs, concept_read
    read_batch(images) -> list[Perception]                  read of each image, over stacks at once
    concept_code(concept) -> str                            the cue a concept's renders show, "3-10110010"
    concept_matches(code_or_perception, concept) -> bool
    WorldSpec                                               load / default / from_dict, distribution, sample
"""

from .batch import read_batch
from .reader import READER_VERSION, concept_matches, read
from .render import concept_code, render
from .spec import WorldSpec

__all__ = ["READER_VERSION", "WorldSpec", "concept_code", "concept_matches", "read", "read_batch", "render"]
