"""Reports of audit runs: report.html for one run (docs/architecture.md, "Run directory"), tables comparing runs."""

from .compare import compare_runs
from .html import render_report

__all__ = ["compare_runs", "render_report"]
