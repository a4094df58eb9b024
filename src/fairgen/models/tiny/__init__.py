"""fairgen-tiny: a small but real unified multimodal LLM of the VILA-U / Janus family (docs/tiny.md).

load(dir | None, device="cpu") -> TinyModel     a checkpoint directory, or the packaged default (also the
                                                `tiny` family's constructor in the registry)
TinyModel                                       the model protocols (adapter.py)
train.train(spec, out, recipe, ...)             both training stages (`fairgen tiny train`)
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:  # imported on first use (PEP 562): the CLI's help does not load torch
    if name in ("TinyModel", "load"):
        from . import adapter

        return getattr(adapter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TinyModel", "load"]
