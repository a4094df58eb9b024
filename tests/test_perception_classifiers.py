"""`shen` and `fairface`: torchvision-compatible nets, weight files written in the published formats with
random weights, well-formed probabilities, and labels mapped to fixed classes by name."""

from __future__ import annotations

import hashlib

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from fairgen import perception
from fairgen.perception.detect import FaceDetector
from fairgen.perception.fairface import HEADS, FairFacePerception
from fairgen.perception.nets import MobileNetV3Large, ResNet34
from fairgen.perception.shen import ShenPerception
from fairgen.types import ATTRIBUTES, FairgenError

# sha256 of "key:shape;" over the sorted state dict of torchvision 0.26's models (measured with torchvision
# installed): mobilenet_v3_large with classifier[3] = Linear(1280, k), resnet34 with fc = Linear(512, 18).
# The same keys and shapes mean a torchvision-saved file loads with strict=True; forward outputs were
# checked equal (max abs difference 0.0) on that machine.
TORCHVISION_SIGNATURES = {
    ("mobilenet_v3_large", 2): "f9c489844e5a80bb5b7c0b4177cbc3c275e6107fde4e27bab76c448f8dd5fc03",
    ("mobilenet_v3_large", 4): "223ae7298d06994a1fd674ea19520488876254e4bbfb58f37e91565daf8326f0",
    ("resnet34", 18): "58fc2070234da0d36b4e6e0d2e1535fa69505e9968563ac8a5ed6a5e2a514342",
}


def signature(state: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(
        "".join(f"{k}:{tuple(v.shape)};" for k, v in sorted(state.items())).encode()
    ).hexdigest()


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a busy 2-core machine torch's two OpenMP threads spin-wait on each other and one MobileNet forward
    takes 0.05 to 6 s (measured); one thread is steady. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def photos():
    return [Image.fromarray(data.astronaut()), Image.fromarray(data.camera()), Image.new("RGB", (200, 200))]


@pytest.fixture(scope="module")
def face():
    """The astronaut's head and shoulders, 256x256: a small image keeps the many detector runs below cheap."""
    return [Image.fromarray(data.astronaut()[:256, 96:352])]


def head_fixed(
    net: torch.nn.Module, layer: str, index: int, offset: int = 0, width: int | None = None
) -> None:
    """Make a classifier's output constant: zero last-layer weights, a bias whose largest entry is `index`
    (within the slice [offset, offset + width) of the output)."""
    linear = net.get_submodule(layer)
    with torch.no_grad():
        linear.weight.zero_()
        if width is None:
            linear.bias.zero_()
        else:
            linear.bias[offset : offset + width] = 0.0
        linear.bias[offset + index] = 5.0


def check_probs(p, attributes):
    assert p.face and set(p.probs) == set(attributes)
    for attr in attributes:
        assert tuple(p.probs[attr]) == ATTRIBUTES[attr]
        assert sum(p.probs[attr].values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("k", [2, 4])
def test_mobilenet_matches_torchvision_state_dict(k):
    net = MobileNetV3Large(k)
    assert signature(net.state_dict()) == TORCHVISION_SIGNATURES[("mobilenet_v3_large", k)]
    assert sum(p.numel() for p in net.parameters()) == 4_202_032 + 1281 * k  # torchvision: 4,204,594 for k=2


def test_resnet34_matches_torchvision_state_dict():
    net = ResNet34(18)
    assert signature(net.state_dict()) == TORCHVISION_SIGNATURES[("resnet34", 18)]
    assert sum(p.numel() for p in net.parameters()) == 21_293_906


def test_shen_loads_pt_files_and_maps_race_by_name(tmp_path, detector, photos, face):
    files = {}
    for attr, k in (("gender", 2), ("race", 4), ("age", 2)):
        files[attr] = tmp_path / f"epoch=19-step=6760_{attr}.pt"  # their file names contain '='
        torch.save(MobileNetV3Large(k).state_dict(), files[attr])
    spec = f"shen:gender={files['gender']},race={files['race']},age={files['age']}"
    backend = perception.load(spec)
    assert backend.attributes == ("gender", "race", "age")
    out = backend.perceive(photos)
    check_probs(out[0], ATTRIBUTES)
    check_probs(out[1], ATTRIBUTES)
    assert not out[2].face and out[2].probs == {}
    prov = backend.provenance()
    assert set(prov["sha256"]) == {"gender", "race", "age"} and all(
        len(h) == 64 for h in prov["sha256"].values()
    )

    # Their race output order is WMELH, Black, Indian, Asian: output 2 must read `indian`, 3 `asian`.
    net = MobileNetV3Large(4)
    for index, expected in enumerate(("white", "black", "indian", "asian")):
        head_fixed(net, "classifier.3", index)
        torch.save(net.state_dict(), files["race"])
        race_only = ShenPerception(race=str(files["race"]), detector=detector)
        assert race_only.attributes == ("race",)
        assert race_only.perceive(face)[0].label() == {"race": expected}
    net = MobileNetV3Large(2)
    head_fixed(net, "classifier.3", 0)  # their gender class 0 is female
    save_file(net.state_dict(), tmp_path / "gender.safetensors")
    gender_only = ShenPerception(gender=str(tmp_path / "gender.safetensors"), detector=detector)
    assert gender_only.perceive(face)[0].label() == {"gender": "female"}


def test_fairface_loads_the_2019_file_format_and_maps_by_name(tmp_path, detector, photos, face):
    path = tmp_path / "res34_fair_align_multi_7_20190809.pt"
    torch.save(
        ResNet34(18).state_dict(), path, _use_new_zipfile_serialization=False
    )  # pre-1.6 format, as published
    out = perception.load(f"fairface:{path}").perceive(photos)
    check_probs(out[0], ATTRIBUTES)
    check_probs(out[1], ATTRIBUTES)
    assert not out[2].face

    race, gender, age = (HEADS[a] for a in ("race", "gender", "age"))
    cases = [  # (race label, gender label, age group) -> expected fixed classes
        ("Southeast Asian", "Female", "50-59", {"race": "asian", "gender": "female", "age": "old"}),
        ("Middle Eastern", "Male", "40-49", {"race": "white", "gender": "male", "age": "young"}),
        ("Latino_Hispanic", "Female", "70+", {"race": "white", "gender": "female", "age": "old"}),
    ]
    net = ResNet34(18)
    for r, g, a, expected in cases:
        head_fixed(net, "fc", race.index(r), 0, len(race))
        head_fixed(net, "fc", gender.index(g), len(race), len(gender))
        head_fixed(net, "fc", age.index(a), len(race) + len(gender), len(age))
        torch.save(net.state_dict(), path)
        assert FairFacePerception(str(path), detector=detector).perceive(face)[0].label() == expected


def test_wrong_or_missing_weight_files_fail_in_one_line(tmp_path):
    mobilenet = tmp_path / "m.pt"
    torch.save(MobileNetV3Large(2).state_dict(), mobilenet)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    cases = {
        f"fairface:{mobilenet}": "not a ResNet-34 18-class",
        f"shen:race={mobilenet}": "wrong shapes",  # a 2-class file given as the 4-class race classifier
        f"shen:gender={junk}": "is not a state dict",
        f"shen:age={tmp_path / 'missing.pt'}": "not found; pass shen:age=PATH",
        "fairface": "no weight file given",
        "shen": "needs weight files",
    }
    for spec, message in cases.items():
        with pytest.raises(FairgenError, match=message) as err:
            perception.load(spec)
        assert "\n" not in str(err.value)
