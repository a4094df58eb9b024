"""Model families behind capability protocols (protocols.py), addressed by a spec string `<family>[:<arg>]`
and built through one registry (registry.py; built-in entries in families.py, plugins through the
`fairgen.models` entry point group). `fairgen models` lists them.

`load(spec, device=..., adapter=DIR, **options)` builds a model and applies a LoRA adapter trained by
`fairgen fix` (adapters.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..types import FairgenError
from .protocols import OTHER, Model
from .registry import Family, describe, family, perception_default, split_spec, world_images

# Kept for code written against the single protocol of earlier releases.
UnifiedModel = Model


def parse_options(pairs: list[str]) -> dict[str, int | float | str]:
    """--model-option values: ['image_area=65536', 'device_map=auto'] -> {'image_area': 65536,
    'device_map': 'auto'} (numbers parsed; each family converts its options to their types)."""
    out: dict[str, int | float | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FairgenError(f"--model-option expects KEY=VALUE (got {pair!r})")
        for kind in (int, float):
            try:
                out[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def load(spec: str, *, device: str | None = None, adapter: str | Path | None = None,
         world_spec: str | Path | None = None, **options: Any) -> Model:
    """Build the model a spec string names (registry.Family.build), with a LoRA adapter applied when
    `adapter` is a directory. device: where it runs (None: the family's default). options: the family's
    (`fairgen models` lists them); world_spec is the world family's option of that name. Unknown or
    malformed specs and options a family does not take raise FairgenError."""
    name, arg = split_spec(spec)
    if world_spec is not None:
        if name != "world":
            raise FairgenError("--world-spec applies only to --model world")
        options["world_spec"] = str(world_spec)
    model = family(spec).build(arg, device, **options)
    if adapter is not None:
        from .adapters import apply_adapter

        model = apply_adapter(model, adapter)
    return model


__all__ = ["OTHER", "Family", "Model", "UnifiedModel", "describe", "family", "load", "parse_options",
           "perception_default", "split_spec", "world_images"]
