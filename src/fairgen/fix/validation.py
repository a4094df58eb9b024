"""The validation split of `fairgen fix`, and the choice of the adapter it keeps (early stopping).

    split(prompts, n)        n concepts of the training suite held out (every prompt of them leaves the
                             balanced set); validation audits one prompt per held-out concept
    passes(record, first)    the guardrails on the validation split, against its step-0 measurement
    choose(records, keep)    the record whose adapter is kept, and why

Every `every` optimizer steps (and at step 0, before training, and at the last step) the adapter in
training is measured on the held-out prompts (train.py calls the pipeline's measurement): rd of each fixed
attribute (mean over the prompts), fidelity, face rate, and explicit adherence per group. A record is
{"step", "stage", "rd": {attr: mean}, "fidelity", "face_rate", "explicit": {attr: {group: share}}}, and
toward a target other than uniform also "tv": {attr: mean total variation to the target}, which then
replaces rd as the measure of what the fix is for. With a balance probe (`--probe-suite`: prompts the fix
never trains on, such as everyday_people) also "probe": {attr: {"mean", "ci95", "noise_floor"}}, their rd:
a step whose probe rd is above the upper end of step 0's 95 % interval fails (the rule the final verdict
applies to the check suites), so the run keeps an adapter that left prompts outside its training set no
more skewed than they were, which held-out training concepts cannot show. With keep="best" the kept
adapter is the one with the lowest rd (or tv; relative to step 0, averaged over the fixed attributes)
among those that pass every guardrail; training stops early after `patience` measurements in a row that
found no better one. With keep="last" (the paper) the last adapter is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..types import Prompt
from .data import spread

# The guardrails, shared by the validation split and the final verdict (guardrails.py).
MAX_FIDELITY_DROP_POINTS = 3.0
MIN_EXPLICIT = 0.95
EXPLICIT_SLACK = 0.03  # a group that starts below MIN_EXPLICIT may lose at most this much
MAX_FACE_RATE_DROP = 0.01


def split(prompts: Sequence[Prompt], n: int) -> tuple[list[Prompt], list[Prompt]]:
    """(training prompts, validation prompts): n concepts, evenly spread, held out with all their
    prompts; the validation prompts are the first prompt of each. Fewer than half the concepts are held
    out (n = 0, or a suite of fewer than 3 concepts: no validation, every prompt trains)."""
    concepts = list(dict.fromkeys(p.concept for p in prompts))
    n = min(n, (len(concepts) - 1) // 2)
    if n <= 0:
        return list(prompts), []
    held = set(spread(concepts, n))  # spread works on any sequence
    first: dict[str, Prompt] = {}
    for p in prompts:
        if p.concept in held:
            first.setdefault(p.concept, p)
    return [p for p in prompts if p.concept not in held], list(first.values())


def explicit_floor(before: float | None) -> float:
    """The least explicit adherence a group may show after the fix: MIN_EXPLICIT, or EXPLICIT_SLACK below
    the model's own value where that starts below MIN_EXPLICIT (so a group that starts at
    0.97 must stay at 0.95, not 0.94; the floor jumps at 0.95: 0.919 for 0.949, 0.95 for 0.95)."""
    if before is None or before >= MIN_EXPLICIT:
        return MIN_EXPLICIT
    return before - EXPLICIT_SLACK


def interval_end(rd: dict[str, Any] | None) -> float | None:
    """The upper end of an rd summary's 95 % interval ({"mean", "ci95", ...}; None when not measured): the
    bound a later rd may not pass, here for the balance probe and in guardrails.py for the check suites."""
    return ((rd or {}).get("ci95") or [None, None])[1]


def failures(record: dict[str, Any], first: dict[str, Any]) -> list[str]:
    """The validation guardrails `record` fails against `first` (step 0): fidelity drop, explicit
    adherence per group, face rate, balance probe. Empty: it passes."""
    out = []
    fb, fa = first.get("fidelity"), record.get("fidelity")
    if fb is not None and fa is not None and 100 * (fa - fb) < -MAX_FIDELITY_DROP_POINTS:
        out.append(f"fidelity {100 * (fa - fb):+.1f} points")
    for attr, shares in record.get("explicit", {}).items():
        for group, share in shares.items():
            floor = explicit_floor(first.get("explicit", {}).get(attr, {}).get(group))
            if share is None or share < floor:
                out.append(f"explicit {group} {share if share is None else round(share, 3)} < {floor:.3f}")
    rb, ra = first.get("face_rate"), record.get("face_rate")
    if rb is not None and ra is not None and ra < rb - MAX_FACE_RATE_DROP:
        out.append(f"face rate {ra:.3f} < {rb - MAX_FACE_RATE_DROP:.3f}")
    for attr, rd in (record.get("probe") or {}).items():
        upper = interval_end((first.get("probe") or {}).get(attr))
        if (rd or {}).get("mean") is not None and upper is not None and rd["mean"] > upper:
            out.append(f"probe {attr} rd {rd['mean']:.3f} > {upper:.3f}")
    return out


def skew_key(record: dict[str, Any]) -> str:
    """What a record's adapter is chosen by: "tv" (distance to the target) when measured, else "rd"."""
    return "tv" if record.get("tv") else "rd"


def score(record: dict[str, Any], first: dict[str, Any]) -> float:
    """rd (or tv) relative to step 0, averaged over the fixed attributes (lower is better; 1.0 at step 0)."""
    key = skew_key(first)
    ratios = [record[key][a] / first[key][a] for a in record[key]
              if record[key][a] is not None and first[key].get(a)]
    return sum(ratios) / len(ratios) if ratios else float("inf")


def choose(records: Sequence[dict[str, Any]], keep: str) -> tuple[dict[str, Any], str]:
    """(the record whose adapter is kept, why). records[0] is step 0 (no training), records[1:] trained
    steps in order. keep="last": the last. keep="best": the lowest score among trained steps that pass
    every guardrail; when none passes, the one with the fewest failures (then the lowest score)."""
    first, trained = records[0], list(records[1:])
    if not trained:
        raise ValueError("no trained step was measured")
    if keep == "last":
        last = trained[-1]
        return last, f"step {last['step']}: the last step (keep last, as the paper)"
    ranked = sorted(trained, key=lambda r: (len(failures(r, first)), score(r, first), r["step"]))
    best = ranked[0]
    failed = failures(best, first)
    key = skew_key(first)
    rd = ", ".join(f"{a} {key} {first[key][a]:.3f} → {best[key][a]:.3f}" for a in best[key]
                   if best[key][a] is not None and first[key].get(a) is not None)
    if failed:
        return best, (f"step {best['step']}: no measured step passed the validation guardrails; this one "
                      f"fails the fewest ({'; '.join(failed)}); {rd}")
    return best, f"step {best['step']}: the lowest validation {key} among steps that pass every guardrail ({rd})"


@dataclass
class Validation:
    """What train.py needs to validate: measure(step, stage) -> record (the pipeline audits the model as
    it is, adapter in training included), every K steps, stop after `patience` measurements without a
    better adapter (0: never stop early), keep "best" or "last"."""

    measure: Callable[[int, str], dict[str, Any]]
    every: int
    patience: int = 3
    keep: str = "best"

    def stale(self, records: Sequence[dict[str, Any]]) -> bool:
        """True when the last `patience` trained measurements found no adapter better than the one before
        them (keep best only)."""
        if self.keep != "best" or self.patience <= 0 or len(records) < self.patience + 2:
            return False
        best_before = choose(records[:-self.patience], "best")[0]
        return choose(records, "best")[0]["step"] == best_before["step"]


__all__ = ["MAX_FACE_RATE_DROP", "MAX_FIDELITY_DROP_POINTS", "MIN_EXPLICIT", "Validation", "choose",
           "explicit_floor", "failures", "interval_end", "score", "split"]
