"""The `world` model: a generator that draws world avatars with the planted biases of a WorldSpec.

For each (prompt, seed) it picks the prompt's concept, draws the perceived attributes from the spec's
distribution for that concept (np.random.default_rng(seed); attributes independent), lets an explicit
group request override the draw, and renders the avatar (world.render; its nuisance comes from a stream of
the same seed that is independent of the attribute draw). An audit of this model therefore has a known
answer: the spec.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from ..types import ATTRIBUTES, FairgenError, Prompt, prompt_text
from ..world import WorldSpec, render
from ..world.render import check_class, check_seed
from .sampling import Sampling

# Words of a prompt's text that request a group, matched case-insensitively as whole words. A text that
# names two classes of one attribute ("a man and a woman") requests neither: that attribute is drawn.
# Matching is literal: "black" in "a black-and-white photo" counts as a request.
GROUP_WORDS: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {"female": ("female", "woman"), "male": ("male", "man")},
    "race": {"white": ("white",), "black": ("black",), "asian": ("asian",), "indian": ("indian",)},
    "age": {"young": ("young",), "old": ("old", "elderly")},
}


def _whole_words(words: Sequence[str], plural: bool = False) -> re.Pattern[str]:
    """A case-insensitive pattern matching any of `words` as a whole word (optionally plural -s/-es)."""
    suffix = "(?:e?s)?" if plural else ""
    alternatives = "|".join(re.escape(w) for w in words)
    return re.compile(rf"(?<!\w)(?:{alternatives}){suffix}(?!\w)", re.IGNORECASE)


_GROUP_PATTERNS = {attr: {cls: _whole_words(words) for cls, words in classes.items()}
                   for attr, classes in GROUP_WORDS.items()}


class WorldModel:
    """The synthetic ground-truth generator (the ImageGenerator protocol only).

    spec: the planted-bias WorldSpec (default: the packaged default_spec.yaml). source: where the spec
    came from (a path, or "default"), recorded in provenance().
    """

    spec = "world"

    def __init__(self, spec: WorldSpec | None = None, source: str = "default") -> None:
        self.world_spec = spec if spec is not None else WorldSpec.default()
        self.source = source
        # Longest names first, so "police officer" wins over a shorter name inside it.
        names = sorted(self.world_spec.concepts, key=lambda n: (-len(n), n))
        self._concept_patterns = [(name, _whole_words([name], plural=True)) for name in names]

    def provenance(self) -> dict[str, Any]:
        """What identifies this generator for the run manifest: the spec's content hash and its source."""
        return {"world_spec_sha256": self.world_spec.sha256(), "source": self.source}

    def concept_of(self, prompt: Prompt | str) -> str:
        """The concept a prompt is about: Prompt.concept; for a string, the longest spec concept name in
        the text (whole words, case-insensitive, plural -s/-es allowed), else the whole text."""
        if isinstance(prompt, Prompt):
            return prompt.concept
        text = str(prompt)
        for name, pattern in self._concept_patterns:
            if pattern.search(text):
                return name
        return text

    @staticmethod
    def requested_group(prompt: Prompt | str) -> dict[str, str]:
        """Explicitly requested classes: a Prompt's non-empty `group`, else group words in the text."""
        if isinstance(prompt, Prompt) and prompt.group:
            return _checked_group(prompt.group)
        text = prompt_text(prompt)
        out = {}
        for attr, patterns in _GROUP_PATTERNS.items():
            named = [cls for cls, pattern in patterns.items() if pattern.search(text)]
            if len(named) == 1:
                out[attr] = named[0]
        return out

    def attributes(self, prompt: Prompt | str, seed: int) -> dict[str, str]:
        """The perceived attributes generate() draws for (prompt, seed): the ground truth of its image."""
        drawn = self.world_spec.sample(self.concept_of(prompt), np.random.default_rng(check_seed(seed)))
        # Drawn first and then overridden, so a request for one attribute leaves the others' draws as they
        # would be without it.
        return {**drawn, **self.requested_group(prompt)}

    def generate(
        self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any
    ) -> list[Image.Image]:
        """One 64x64 avatar per (prompt, seed); the image depends only on the prompt, the seed and the spec.

        Token-sampling settings (cfg, temperature, top_p, top_k) are accepted, so one command can run every
        family of a comparison, and have no effect: the world has no sampler to tune. Other keys are errors.
        """
        Sampling().resolve(sampling, "world")
        if len(prompts) != len(seeds):
            raise FairgenError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        images = []
        for prompt, seed in zip(prompts, seeds):
            attrs = self.attributes(prompt, seed)
            images.append(render(attrs["gender"], attrs["race"], attrs["age"], self.concept_of(prompt), seed))
        return images


def build(arg: str = "", device: str | None = None, world_spec: str | None = None) -> WorldModel:
    """The `world` family's constructor (registry.py): the world of `world_spec` (a YAML file; None: the
    packaged default). It draws on the CPU; `device` is accepted like every family's and not used."""
    if world_spec is None:
        return WorldModel(WorldSpec.default(), source="default")
    return WorldModel(WorldSpec.load(world_spec), source=str(world_spec))


def _checked_group(group: Mapping[str, str]) -> dict[str, str]:
    """A Prompt.group with every attribute and class name checked against types.ATTRIBUTES."""
    for attr, cls in group.items():
        if attr not in ATTRIBUTES:
            raise FairgenError(f"prompt group: unknown attribute {attr!r} "
                               f"(expected one of: {', '.join(ATTRIBUTES)})")
        check_class(attr, cls)
    return dict(group)
