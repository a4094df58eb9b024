"""`fairgen compare --rank-by METRIC[:ATTRIBUTE]`: which suite metric orders the table, and each run's value.

A metric is either per attribute (results.json's summary[attribute][metric]: the skew metrics, the distances
to the target, the population rd and, in calibrated audits, the corrected rd) or of the whole run (image
quality, fidelity, face rate). Lower is fairer for every per-attribute metric but entropy; higher is better
for entropy and the run-level ones. Runs are ranked by point estimate (competition ranking: equal values
share a rank, the next rank skips); a run whose value is null (no image with a face) comes last, unranked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ..metrics.skew import SKEW_METRICS
from ..metrics.target import TARGET_METRICS
from ..types import METRIC_ATTRIBUTES, FairgenError

Interval = tuple[float | None, float | None, float | None]  # (value, lo, hi)

# Per-attribute suite metrics: name -> the key of the point estimate in summary[attribute][name].
ATTRIBUTE_METRICS: dict[str, str] = {
    **{m: "mean" for m in SKEW_METRICS}, **{m: "mean" for m in TARGET_METRICS},
    "rd_population": "estimate", "rd_corrected": "mean", "rd_corrected_population": "estimate",
}
RUN_METRICS = ("clip_score", "clip_iqa", "fidelity", "face_rate")
HIGHER_IS_BETTER = frozenset({"entropy", *RUN_METRICS})
# Why a run may lack a metric, for the error line.
_WHY = {**{m: "audited before that metric was reported" for m in ATTRIBUTE_METRICS},
        "rd_corrected": "audited without --calibration", "rd_corrected_population": "audited without --calibration",
        "clip_score": "audited without --quality", "clip_iqa": "audited without --quality",
        "fidelity": "its perception reads no concept cue", "face_rate": "no readable image"}


@dataclass(frozen=True)
class Ranking:
    """metric: a key of ATTRIBUTE_METRICS or RUN_METRICS; attribute: a METRIC_ATTRIBUTES key, or None for a
    run-level metric."""

    metric: str
    attribute: str | None

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def name(self) -> str:
        """The table's column title, e.g. "tv gender"."""
        return self.metric if self.attribute is None else f"{self.metric} {self.attribute}"

    def value(self, results: Mapping[str, Any], label: str) -> Interval:
        """(value, lo, hi) of one run's results.json; FairgenError naming the run when it lacks the metric."""
        if self.attribute is None:
            return _run_value(results, self.metric, label)
        summary = results["summary"].get(self.attribute)
        if not summary:
            raise FairgenError(f"--rank-by {self.metric}:{self.attribute}: {label} did not measure "
                               f"{self.attribute} (its perception: {results.get('perception')})")
        entry = summary.get(self.metric)
        if not isinstance(entry, Mapping):
            why = (f"its calibration does not cover {self.attribute}"  # calibrated, but not this attribute
                   if self.metric in summary and "calibration" in results else _WHY[self.metric])
            raise FairgenError(f"--rank-by {self.metric}:{self.attribute}: {label} has no {self.metric} ({why})")
        lo, hi = entry.get("ci95") or (None, None)
        return entry.get(ATTRIBUTE_METRICS[self.metric]), lo, hi


def parse_rank_by(text: str, runs: Sequence[Mapping[str, Any]]) -> Ranking:
    """'tv:gender' / 'entropy' / 'clip_score' -> Ranking. A per-attribute metric without an attribute takes
    the first attribute (METRIC_ATTRIBUTES order) that every run measured."""
    metric, _, attribute = (s.strip() for s in text.strip().partition(":"))
    known = [*ATTRIBUTE_METRICS, *RUN_METRICS]
    if metric not in known:
        raise FairgenError(f"--rank-by: unknown metric {metric!r}; choose one of: {', '.join(known)}")
    if metric in RUN_METRICS:
        if attribute:
            raise FairgenError(f"--rank-by: {metric} is a metric of the whole run, not of an attribute "
                               f"(give --rank-by {metric})")
        return Ranking(metric, None)
    if attribute:
        if attribute not in METRIC_ATTRIBUTES:
            raise FairgenError(f"--rank-by: unknown attribute {attribute!r}; choose one of: "
                               f"{', '.join(METRIC_ATTRIBUTES)}")
        return Ranking(metric, attribute)
    common = [a for a in METRIC_ATTRIBUTES if all(r["summary"].get(a) for r in runs)]
    if not common:
        raise FairgenError(f"--rank-by {metric}: the runs measure no attribute in common")
    return Ranking(metric, common[0])


def ranks(values: Sequence[float | None], higher_is_better: bool) -> list[int | None]:
    """Competition ranks (1 = best; equal values share a rank, the next rank skips); None for a None value."""
    present = [v for v in values if v is not None]
    better = (lambda a, b: a > b) if higher_is_better else (lambda a, b: a < b)
    return [None if v is None else 1 + sum(better(w, v) for w in present) for v in values]


def ranking_notes(ranking: Ranking, runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes the ranking hard to read, one sentence each: distances to different targets."""
    if ranking.metric in TARGET_METRICS:
        targets = {str(r.get("target")) for r in runs}
        if len(targets) > 1:
            return [f"the runs measure {ranking.metric} to different targets: their values rank distances to "
                    "different goals"]
    return []


def _run_value(results: Mapping[str, Any], metric: str, label: str) -> Interval:
    summary = results["summary"]
    if metric in ("clip_score", "clip_iqa"):
        entry = ((results.get("quality") or {}).get("suite") or {}).get(metric)
        if entry:
            lo, hi = entry.get("ci95") or (None, None)
            return entry["mean"], lo, hi
    elif metric == "fidelity" and summary.get("fidelity"):
        return summary["fidelity"]["value"], None, None
    elif metric == "face_rate" and summary.get("face_rate") is not None:
        return summary["face_rate"], None, None
    raise FairgenError(f"--rank-by {metric}: {label} has no {metric} ({_WHY[metric]})")


__all__ = ["ATTRIBUTE_METRICS", "RUN_METRICS", "Ranking", "parse_rank_by", "ranking_notes", "ranks"]
