"""Perception backends behind one protocol (perception/base.py), addressed by name."""

from __future__ import annotations

from ..types import FairgenError
from .base import PerceptionBackend

BACKENDS: dict[str, str] = {
    "world": "exact reader of synthetic-world avatars: gender, race, age and the concept cue",
}


def default_for(model_spec: str) -> str:
    """Default backend for a model: `world` for world-trained models, `age-gender` for real ones."""
    family = model_spec.partition(":")[0].strip().lower()
    return "world" if family in ("world", "tiny") else "age-gender"


def load(name: str) -> PerceptionBackend:
    """Build a perception backend by name. Unknown names raise FairgenError."""
    if name == "world":
        from .world import WorldPerception

        return WorldPerception()
    raise FairgenError(f"unknown perception backend {name!r}; available: {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "PerceptionBackend", "default_for", "load"]
