"""Reports of audit runs: report.html for one run (docs/architecture.md, "Run directory"), tables comparing runs."""

from __future__ import annotations

import importlib
from typing import Any

FORMATS = ("md", "csv", "latex")  # `fairgen compare --format`
# Imported on first use (PEP 562), so that `fairgen --help` does not load matplotlib and scipy.
_LAZY = {"compare_runs": ".compare", "render_report": ".html"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMATS", "compare_runs", "render_report"]
