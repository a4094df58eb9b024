"""Bias metrics (docs/architecture.md, "results.json"): skew per prompt and suite, with intervals."""

from .intervals import (
    bootstrap_metrics,
    expected_rd,
    noise_floor,
    percentile_interval,
    rd_sampling_range,
)
from .skew import SKEW_METRICS, frequencies, kl_uniform, normalized_entropy, rd
from .table import MetricFrame, results_frame, summarize

__all__ = [
    "MetricFrame",
    "SKEW_METRICS",
    "bootstrap_metrics",
    "expected_rd",
    "frequencies",
    "kl_uniform",
    "noise_floor",
    "normalized_entropy",
    "percentile_interval",
    "rd",
    "rd_sampling_range",
    "results_frame",
    "summarize",
]
