"""Reports of audit runs: report.html for one run, comparison tables across runs (DESIGN.md "Run directory")."""

from .compare import compare_runs
from .html import render_report

__all__ = ["compare_runs", "render_report"]
