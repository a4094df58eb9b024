"""What the photo backends share: loading user weight files, mapping labels to fixed classes by name, and
the detect -> crop -> classify loop every backend runs."""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ..types import ATTRIBUTES, FairgenError, Perception
from .detect import Face, FaceDetector

Probs = dict[str, dict[str, float]]
CHUNK = 32  # faces per classifier call


def spec_string(backend: str, options: Mapping[str, Any]) -> str:
    """The canonical `--perception` string of a backend and its options (sorted keys): the run's config
    records it, so a resumed run with other weights is refused."""
    given = ",".join(f"{k}={options[k]}" for k in sorted(options) if options[k] is not None)
    return f"{backend}:{given}" if given else backend


def require(module: str, install: str) -> Any:
    """Import a module, or raise FairgenError naming what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FairgenError(f"this perception backend needs the {module} package: {install}") from None


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of distributions, for provenance (absent ones are left out)."""
    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def weights_file(path: str | Path | None, what: str, how: str) -> Path:
    """A user-given weight file that must exist; `how` says how to pass it (for the error line)."""
    if not path:
        raise FairgenError(f"{what}: no weight file given; pass {how}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise FairgenError(f"{what}: weight file {p} not found; pass {how}")
    return p


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file or of a torch-saved state dict (read with weights_only=True, so no
    code in the file runs). A "module." prefix (nn.DataParallel) is removed."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch / safetensors raise many types for a corrupt or non-tensor file
        raise FairgenError(f"{path} is not a state dict of tensors ({type(e).__name__})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FairgenError(f"{path} is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def load_net(net: torch.nn.Module, path: Path, what: str) -> torch.nn.Module:
    """Load a weight file into `net` with strict key and shape checking; one-line FairgenError otherwise."""
    state = load_state_dict(path)
    expected = net.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or wrong:
        if missing:
            detail = f"missing {missing[0]!r}"
        elif extra:
            detail = f"unexpected {extra[0]!r}"
        else:
            k = wrong[0]
            detail = f"{k!r} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        raise FairgenError(
            f"{path} is not a {what} state dict ({detail}; {len(missing)} missing, "
            f"{len(extra)} unexpected, {len(wrong)} wrong shapes)"
        )
    net.load_state_dict(state, strict=True)
    return net.eval()


def fold(probs: Sequence[float], labels: Sequence[str], to: Mapping[str, str], attr: str) -> dict[str, float]:
    """A backend's probability vector over its own `labels` summed into the fixed classes of `attr`, BY NAME
    (`to` maps each label to a class; never by position). A class no label maps to gets 0."""
    if len(probs) != len(labels):
        raise ValueError(f"{len(probs)} probabilities for {len(labels)} {attr} labels")
    out = dict.fromkeys(ATTRIBUTES[attr], 0.0)
    for label, p in zip(labels, probs):
        out[to[label]] += float(p)
    return out


def age_cut(lower_bound: float) -> str:
    """The shared age convention: "old" is 50 and over, for every backend."""
    return "old" if lower_bound >= 50 else "young"


def as_rgb(image: Image.Image) -> np.ndarray:
    """RGB uint8 [H, W, 3] array of any PIL image (grey, palette and RGBA images are converted)."""
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


class PhotoBackend:
    """Detect the largest face, crop it, classify every crop of a batch at once.

    Subclasses set `name`, `attributes`, and implement `prepare(rgb, face) -> input` (one image's network
    input) and `classify(inputs) -> list[Probs]` (one dict per input, every class of each attribute).
    """

    name: str
    attributes: tuple[str, ...]

    def __init__(self, detector: FaceDetector | None = None, detect: bool = True) -> None:
        # Built at load, so a missing detector package fails before any work; `detect=False` for a backend
        # that overrides `locate` and never detects.
        self.detector = (detector or FaceDetector()) if detect else None

    def locate(self, rgb: np.ndarray) -> Face | None:
        """The face to classify: the largest detected one (Shen et al.'s rule), or None."""
        assert (
            self.detector is not None
        )  # only a backend built with detect=False has none, and it overrides this
        return self.detector.largest(rgb)

    def prepare(self, rgb: np.ndarray, face: Face) -> Any:
        raise NotImplementedError

    def classify(self, inputs: list[Any]) -> list[Probs]:
        raise NotImplementedError

    def perceive(self, images: Sequence[Image.Image]) -> list[Perception]:
        """One Perception per image, in order. No face -> face=False (kept); an image that cannot be
        decoded -> face=False with `error` set."""
        out: list[Perception] = []
        found: list[tuple[int, Any]] = []  # (index in out, network input)
        for image in images:
            try:
                rgb = as_rgb(image)
            except (OSError, ValueError) as e:  # what PIL raises when decoding a bad file lazily
                out.append(Perception(face=False, error=f"{type(e).__name__}: {e}"))
                continue
            face = self.locate(rgb)
            if face is None:
                out.append(Perception(face=False))
                continue
            out.append(Perception(face=True, box=face.pixel_box(rgb.shape[1], rgb.shape[0])))
            found.append((len(out) - 1, self.prepare(rgb, face)))
        # Chunks bound the classifiers' activation memory whatever the caller's batch size.
        for start in range(0, len(found), CHUNK):
            chunk = found[start : start + CHUNK]
            for (i, _), probs in zip(chunk, self.classify([x for _, x in chunk])):
                out[i].probs = probs
        return out
