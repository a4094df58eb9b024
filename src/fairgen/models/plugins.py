"""Model families from outside fairgen: `plugin:<module>:<Class>` and the `fairgen.models` entry point group.

A package that wraps upstream code (VILA-U, Show-o, TokenFlow, ...) declares, in its pyproject.toml,

    [project.entry-points."fairgen.models"]
    vila-u = "fairgen_vila_u:VilaUModel"

and after `pip install` the spec `vila-u:<arg>` builds `VilaUModel(arg)` (`VilaUModel()` when the spec has
no argument). `plugin:<module>:<Class>` builds `Class()` from any importable module, no packaging needed.
Either way the object must implement models/base.py's protocol (spec, capabilities, provenance, generate).
Built-in family names win over an entry point of the same name.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..types import FairgenError
from .base import UnifiedModel

GROUP = "fairgen.models"


def installed() -> dict[str, EntryPoint]:
    """Entry points of the `fairgen.models` group found on sys.path, by lower-cased name."""
    return {ep.name.strip().lower(): ep for ep in entry_points(group=GROUP)}


def load_entry_point(ep: EntryPoint, arg: str, spec: str) -> UnifiedModel:
    """Build the model an entry point names: Class(arg), or Class() for an empty argument."""
    try:
        cls = ep.load()
    except (ImportError, AttributeError) as e:
        raise FairgenError(f"cannot load plugin {ep.name!r} ({ep.value}): {e}") from None
    return checked(cls(arg) if arg else cls(), spec)


def load_class(ref: str, spec: str) -> UnifiedModel:
    """Build `Class()` for `plugin:<module>:<Class>`."""
    module, _, name = ref.rpartition(":")
    if not module or not name:
        raise FairgenError(f"model spec {spec!r}: expected plugin:<module>:<Class>")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise FairgenError(f"cannot load plugin {ref!r}: {e}") from None
    return checked(cls(), spec)


def checked(model: Any, spec: str) -> UnifiedModel:
    """The model, when it implements the protocol; else FairgenError."""
    if not isinstance(model, UnifiedModel):
        raise FairgenError(f"plugin {spec!r} does not implement the model protocol (spec, capabilities, "
                           "provenance, generate)")
    return model
