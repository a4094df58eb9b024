"""Model families behind one protocol (models/base.py), addressed by a spec string.

  world                      the synthetic world: samples the planted spec and renders (exact ground truth)
  tiny | tiny:<dir>          fairgen-tiny, a small real unified model (packaged checkpoint, or a directory)
  folder:<dir>               images already on disk (fairgen's layout or Shen et al.'s)
  plugin:<module>:<Class>    any class implementing the protocol, built with no arguments
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..types import FairgenError
from .base import OTHER, UnifiedModel

FAMILIES: dict[str, str] = {
    "world": "synthetic ground-truth world; plants the --world-spec distribution (no weights)",
    "tiny": "fairgen-tiny unified model: `tiny` (packaged checkpoint) or `tiny:<dir>`",
    "folder": "images already on disk: `folder:<dir>` (fairgen layout or <dir>/prompt_<i>/img_<j>.png)",
    "plugin": "your own class: `plugin:<module>:<Class>` implementing models/base.py's protocol",
}


def split_spec(spec: str) -> tuple[str, str]:
    """'janus:deepseek-ai/Janus-Pro-1B' -> ('janus', 'deepseek-ai/Janus-Pro-1B'); 'world' -> ('world', '')."""
    family, _, arg = spec.partition(":")
    return family.strip().lower(), arg.strip()


def load(spec: str, *, world_spec: str | Path | None = None, device: str | None = None, **kwargs: Any) -> UnifiedModel:
    """Build the model a spec string names. Unknown or malformed specs raise FairgenError."""
    family, arg = split_spec(spec)
    if family == "world":
        from ..world import WorldSpec
        from .world import WorldModel

        if arg:
            raise FairgenError(f"model spec 'world' takes no argument (got {spec!r}); give --world-spec instead")
        ws = WorldSpec.load(world_spec) if world_spec else WorldSpec.default()
        return WorldModel(ws, source=str(world_spec) if world_spec else "default")
    if world_spec is not None:
        raise FairgenError("--world-spec applies only to --model world")
    if family == "tiny":
        from . import tiny

        return tiny.load(arg or None, device=device or "cpu")
    if family == "folder":
        from .folder import FolderModel

        if not arg:
            raise FairgenError("model spec folder:<dir> needs a directory")
        return FolderModel(Path(arg))
    if family == "plugin":
        module, _, name = arg.rpartition(":")
        if not module or not name:
            raise FairgenError(f"model spec {spec!r}: expected plugin:<module>:<Class>")
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise FairgenError(f"cannot load plugin {arg!r}: {e}") from None
        model = cls()
        if not isinstance(model, UnifiedModel):
            raise FairgenError(f"plugin {arg!r} does not implement the model protocol (spec, capabilities, generate)")
        return model
    known = ", ".join(FAMILIES)
    raise FairgenError(f"unknown model spec {spec!r}; known families: {known}")


__all__ = ["FAMILIES", "OTHER", "UnifiedModel", "load", "split_spec"]
