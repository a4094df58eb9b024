"""The `shen` backend: Shen et al. (ICLR 2024)'s three test classifiers, run as their evaluation runs them.

Weights: the user's state-dict files (torchvision MobileNetV3-Large with the last layer replaced), e.g.
    CelebA-MobileNetLarge-Gender-09191318/epoch=19-step=25320_MobileNetLarge.pt   2 classes
    fairface-MobileNetLarge-Race4-09191318/epoch=19-step=6760_MobileNetLarge.pt    4 classes
    fairface-MobileNetLarge-Age2-09191319/epoch=19-step=6760_MobileNetLarge.pt     2 classes
    --perception shen:gender=PATH,race=PATH,age=PATH     (any subset; missing attributes are not measured)

Pipeline (their eval-generated-images.py): the largest detected face; its box grown to a square with a
x0.5 margin (`expand_bbox(expand_coef=0.5, target_ratio=1)`); the crop, padded with black where it leaves the
image, resized to 224x224 by bilinear interpolation without antialiasing (torchvision's tensor `Resize` of
their time); pixels scaled to [-1, 1] with no ImageNet normalisation; softmax; argmax downstream.
Their detector was insightface's RetinaFace (buffalo_l) with face_recognition as fallback; fairgen uses
MTCNN (detect.py), so boxes differ slightly.

Output orders, from their README, mapped to fixed classes BY NAME:
    gender  0 female, 1 male
    race    0 WMELH (White, Middle Eastern, Latino Hispanic) -> white, 1 Black, 2 Indian, 3 Asian
    age     0 young, 1 old. The cut is the one their classifier was trained with (FairFace age groups);
            fairgen cannot move it, so for this backend "old" means what that file learned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..store import file_sha256
from ..types import FairgenError
from .common import PhotoBackend, Probs, fold, load_net, package_versions, spec_string, weights_file
from .detect import Face, FaceDetector, crop_padded, square_box
from .nets import MobileNetV3Large

SIZE = 224  # classifier input side, pixels
MARGIN = 0.5  # expand_coef of their expand_bbox
# Each classifier's output labels in output order, and the fixed class each label means.
LABELS: dict[str, tuple[str, ...]] = {
    "gender": ("female", "male"),
    "race": ("WMELH", "Black", "Indian", "Asian"),
    "age": ("young", "old"),
}
TO_CLASS: dict[str, dict[str, str]] = {
    "gender": {"female": "female", "male": "male"},
    "race": {"WMELH": "white", "Black": "black", "Indian": "indian", "Asian": "asian"},
    "age": {"young": "young", "old": "old"},
}


def shen_input(rgb: np.ndarray, face: Face) -> torch.Tensor:
    """The classifier input for one face: float [3, 224, 224] in [-1, 1]."""
    # Padding is black: -1 after scaling, their fill value.
    crop = crop_padded(rgb, square_box(face.box, MARGIN), fill=0)
    x = torch.from_numpy(crop).permute(2, 0, 1).float().div(127.5).sub(1.0)
    return F.interpolate(x[None], size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=False)[0]


class ShenPerception(PhotoBackend):
    """PerceptionBackend: MTCNN face + Shen et al.'s MobileNetV3-Large gender / race4 / age2 classifiers."""

    OPTIONS = ("gender", "race", "age")

    def __init__(
        self,
        gender: str | None = None,
        race: str | None = None,
        age: str | None = None,
        detector: FaceDetector | None = None,
    ) -> None:
        given = {"gender": gender, "race": race, "age": age}
        if not any(given.values()):
            raise FairgenError(
                "perception 'shen' needs weight files: --perception shen:gender=PATH,race=PATH,age=PATH"
            )
        self.paths = {
            a: weights_file(p, f"shen {a} classifier", f"shen:{a}=PATH") for a, p in given.items() if p
        }
        self.nets = {
            a: load_net(MobileNetV3Large(len(LABELS[a])), p, f"MobileNetV3-Large {len(LABELS[a])}-class")
            for a, p in self.paths.items()
        }
        self.attributes = tuple(self.paths)
        self.name = spec_string("shen", {a: str(p) for a, p in self.paths.items()})
        super().__init__(detector)

    def provenance(self) -> dict[str, Any]:
        return {
            "backend": "shen",
            "weights": {a: str(p) for a, p in self.paths.items()},
            "sha256": {a: file_sha256(p) for a, p in self.paths.items()},
            "versions": package_versions("torch"),
            "detector": self.detector.provenance(),
        }

    def prepare(self, rgb: np.ndarray, face: Face) -> torch.Tensor:
        return shen_input(rgb, face)

    @torch.inference_mode()
    def classify(self, inputs: list[torch.Tensor]) -> list[Probs]:
        x = torch.stack(inputs)
        probs = {a: net(x).softmax(-1).tolist() for a, net in self.nets.items()}
        return [
            {a: fold(probs[a][i], LABELS[a], TO_CLASS[a], a) for a in self.nets} for i in range(len(inputs))
        ]
