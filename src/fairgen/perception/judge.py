"""The `judge` backend: a unified model labels images itself, through `answer_distribution`.

    --perception judge:<model spec>            e.g. judge:tiny, judge:janus:deepseek-ai/Janus-Pro-1B
    --perception judge:model=<spec>,face=whole|detect

For every image and attribute the model is asked QUESTIONS[attr] about the face crop and its exact answer
distribution over the class names is renormalised over those names (mass outside them is dropped).
`face=detect` crops the largest MTCNN face (square, Shen et al.'s x0.5 margin; no face -> face=False);
`face=whole` shows the whole image and counts it as a face. The default is `whole` for models that draw
the synthetic world (`world`, `tiny`: their avatars are what they were trained on, and a photo face
detector does not see them) and `detect` for every other model.
What "old" means is the judge's own reading of "young / old" (for fairgen-tiny: the world's grey hair).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ..types import ATTRIBUTES, FairgenError
from .common import PhotoBackend, Probs, spec_string
from .detect import Face, crop_padded, square_box

# The question per attribute; {options} is ANSWERS[attr], comma-separated. The wording follows the
# understanding probe (questions.py), asked about the pictured person.
QUESTIONS: dict[str, str] = {
    attr: f"What is the {attr} of the person in the image? "
    "Possible answers: {options}. Answer with a single word."
    for attr in ("gender", "race", "age")
}
# Offered in the probe's order (male first), not the canonical order.
ANSWERS: dict[str, tuple[str, ...]] = {
    "gender": ("male", "female"),
    "race": ATTRIBUTES["race"],
    "age": ATTRIBUTES["age"],
}


class JudgePerception(PhotoBackend):
    """PerceptionBackend: any model with the "understand" capability answers gender / race / age."""

    OPTIONS = ("model", "face")
    attributes = ("gender", "race", "age")

    def __init__(self, model: str | None = None, face: str | None = None) -> None:
        from .. import models
        from ..models.protocols import Understander
        from . import default_for

        if not model:
            raise FairgenError(
                "perception 'judge' needs a model: --perception judge:<model spec>, e.g. judge:tiny"
            )
        face = face or ("whole" if default_for(model) == "world" else "detect")
        if face not in ("whole", "detect"):
            raise FairgenError(f"judge: face={face!r}; use face=whole or face=detect")
        self.model = models.load(model)
        if not isinstance(self.model, Understander):
            raise FairgenError(
                f"judge: model {model!r} cannot answer questions about images (no 'understand' capability)"
            )
        self.spec, self.face = model, face
        self.name = spec_string("judge", {"model": model, "face": face})
        super().__init__(detect=face == "detect")

    def provenance(self) -> dict[str, Any]:
        out = {
            "backend": "judge",
            "model": self.spec,
            "face": self.face,
            "questions": QUESTIONS,
            "model_provenance": self.model.provenance(),
        }
        if self.detector is not None:
            out["detector"] = self.detector.provenance()
        return out

    def locate(self, rgb: np.ndarray) -> Face | None:
        if self.face == "whole":
            height, width = rgb.shape[:2]
            return Face((0.0, 0.0, float(width), float(height)), 1.0)
        return super().locate(rgb)

    def prepare(self, rgb: np.ndarray, face: Face) -> Image.Image:
        if self.face == "whole":
            return Image.fromarray(rgb)
        return Image.fromarray(crop_padded(rgb, square_box(face.box)))

    def classify(self, inputs: list[Image.Image]) -> list[Probs]:
        out = []
        for image in inputs:
            probs: Probs = {}
            for attr, options in ANSWERS.items():
                question = QUESTIONS[attr].format(options=", ".join(options))
                answer = self.model.answer_distribution(image, question, list(options))
                total = sum(answer[o] for o in options)
                # A model that puts no mass on any option has no opinion: uniform, not a division by zero.
                probs[attr] = {
                    o: answer[o] / total if total > 0 else 1 / len(options) for o in ATTRIBUTES[attr]
                }
            out.append(probs)
        return out
