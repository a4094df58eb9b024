"""The `clip` backend: zero-shot gender / race / age from a local CLIP checkpoint (transformers).

    --perception clip:DIR          (or clip:dir=DIR) a directory saved by `save_pretrained`: config.json,
                                   model.safetensors, tokenizer and image-processor files. Never downloads.

The face (largest MTCNN face, square crop with Shen et al.'s x0.5 margin) is scored against every prompt
of PROMPTS with CLIP's scaled cosine similarity. Each class owns several prompts, chosen by name ("a photo
of a middle eastern person" belongs to `white`, as in Shen et al.'s 4-class race set; the decades from
fifty up belong to `old`); a class's score is the mean of its prompts' likelihoods (logsumexp - log n), and
a softmax over an attribute's classes gives its probabilities. Classes with more prompts get no head start.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..store import file_sha256
from ..types import FairgenError
from .common import PhotoBackend, Probs, package_versions, require, spec_string
from .detect import Face, FaceDetector, crop_padded, square_box

INSTALL = "pip install 'transformers>=5'"
PROMPTS: dict[str, dict[str, tuple[str, ...]]] = {
    "gender": {
        "female": ("a photo of a woman", "a photo of a girl"),
        "male": ("a photo of a man", "a photo of a boy"),
    },
    "race": {
        "white": (
            "a photo of a white person",
            "a photo of a middle eastern person",
            "a photo of a latino hispanic person",
        ),
        "black": ("a photo of a black person",),
        "asian": ("a photo of an east asian person", "a photo of a southeast asian person"),
        "indian": ("a photo of an indian person",),
    },
    "age": {
        "young": (
            "a photo of a child",
            "a photo of a teenager",
            "a photo of a person in their twenties",
            "a photo of a person in their thirties",
            "a photo of a person in their forties",
        ),
        "old": (
            "a photo of a person in their fifties",
            "a photo of a person in their sixties",
            "a photo of a person in their seventies",
            "a photo of a person in their eighties",
        ),
    },
}


class ClipPerception(PhotoBackend):
    """PerceptionBackend: MTCNN face + zero-shot CLIP over PROMPTS."""

    OPTIONS = ("dir",)
    attributes = ("gender", "race", "age")

    def __init__(self, dir: str | None = None, detector: FaceDetector | None = None) -> None:  # noqa: A002
        if not dir:
            raise FairgenError("perception 'clip' needs a local checkpoint: --perception clip:DIR")
        self.dir = Path(dir).expanduser()
        if not (self.dir / "config.json").is_file():
            raise FairgenError(
                f"clip: {self.dir} is not a saved CLIP checkpoint (no config.json); pass clip:DIR"
            )
        transformers = require("transformers", INSTALL)
        try:
            self.model = transformers.CLIPModel.from_pretrained(self.dir, local_files_only=True).eval()
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(self.dir, local_files_only=True)
            # The PIL image processor: transformers' default one would need torchvision.
            self.processor = transformers.CLIPImageProcessorPil.from_pretrained(
                self.dir, local_files_only=True
            )
        except Exception as e:  # transformers raises many types for a broken or foreign checkpoint
            raise FairgenError(
                f"clip: cannot load a CLIP model from {self.dir}: {str(e).splitlines()[0]}"
            ) from None
        self.name = spec_string("clip", {"dir": str(self.dir)})
        # Per attribute, each class and the span of its prompts in the prompt list.
        self._spans: dict[str, list[tuple[str, slice]]] = {}
        texts: list[str] = []
        for attr, classes in PROMPTS.items():
            self._spans[attr] = []
            for cls, prompts in classes.items():
                self._spans[attr].append((cls, slice(len(texts), len(texts) + len(prompts))))
                texts += prompts
        # The prompt embeddings depend only on the model: computed once, unit-normalised [n_prompts, D].
        with torch.inference_mode():
            tokens = self.tokenizer(texts, padding=True, return_tensors="pt")
            text = self.model.get_text_features(**tokens).pooler_output
        self._text = text / text.norm(dim=-1, keepdim=True)
        super().__init__(detector)

    def provenance(self) -> dict[str, Any]:
        files = sorted(p for p in self.dir.iterdir() if p.is_file())
        return {
            "backend": "clip",
            "dir": str(self.dir),
            "sha256": {p.name: file_sha256(p) for p in files},
            "prompts": PROMPTS,
            "versions": package_versions("torch", "transformers"),
            "detector": self.detector.provenance(),
        }

    def prepare(self, rgb: np.ndarray, face: Face) -> Image.Image:
        return Image.fromarray(crop_padded(rgb, square_box(face.box)))

    @torch.inference_mode()
    def classify(self, inputs: list[Image.Image]) -> list[Probs]:
        pixels = self.processor(images=inputs, return_tensors="pt")["pixel_values"]
        image = self.model.get_image_features(pixel_values=pixels).pooler_output
        image = image / image.norm(dim=-1, keepdim=True)
        logits = self.model.logit_scale.exp() * image @ self._text.T  # [N, n_prompts], CLIP's own scale
        out: list[Probs] = [{} for _ in inputs]
        for attr, spans in self._spans.items():
            # A class is the equal mixture of its prompts (mean likelihood: logsumexp - log n), so a class
            # with more prompts gets no prior advantage; an uninformative image reads uniform.
            scores = torch.stack(
                [logits[:, s].logsumexp(-1) - math.log(s.stop - s.start) for _, s in spans], -1
            )
            p = scores.softmax(-1)
            for i in range(len(inputs)):
                out[i][attr] = {cls: float(p[i, k]) for k, (cls, _) in enumerate(spans)}
        return out
