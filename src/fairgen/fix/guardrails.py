"""The verdict of a fix: what it must not break, one line per guardrail (pass / fail / not measured).

    fidelity          concept fidelity on the test suite drops by at most 3 points
    explicit          every group's explicit adherence after the fix is >= 0.95, or at most 3 points below the
                      model's own value where that starts below 0.95 (validation.explicit_floor)
    generalisation    on every check suite (prompts the fix never saw) and fixed attribute, rd after the fix
                      is not above the upper end of the 95 % interval of rd before it
    face rate         the share of images with a face drops by at most 1 point, on the test and check suites
    image quality     on the test suite, neither CLIP score nor CLIP-IQA drops by more than the larger of the
                      before value's own noise (mean − lower end of its 95 % interval) and a floor of 1 % of
                      the metric's range (1 CLIP-score point, 0.01 CLIP-IQA); docs/fix.md says why

A guardrail that could not be measured (no fidelity metric, no explicit check, `--check-suites none`, no
`--quality`)
reads "not measured" and does not fail the verdict; `fairgen fix --strict` exits 1 when any guardrail
fails. The bias cut itself is the headline, not a guardrail.
"""

from __future__ import annotations

from typing import Any, Mapping

from ..metrics.quality import QUALITY_METRICS
from .validation import MAX_FACE_RATE_DROP, MAX_FIDELITY_DROP_POINTS, explicit_floor, interval_end

# The least drop of each quality metric that may fail the verdict, whatever the intervals: 1 % of its range.
QUALITY_DROP_FLOOR = {"clip_score": 1.0, "clip_iqa": 0.01}


def _line(name: str, passed: bool | None, detail: str) -> dict[str, Any]:
    word = {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[passed]
    return {"name": name, "passed": passed, "detail": detail, "line": f"{word} {name}: {detail}"}


def _fidelity(report: Mapping[str, Any]) -> dict[str, Any]:
    points = report.get("fidelity_change_points")
    if points is None:
        return _line("fidelity", None, "no fidelity metric in both audits")
    return _line("fidelity", points >= -MAX_FIDELITY_DROP_POINTS,
                 f"{points:+.1f} points (a drop of at most {MAX_FIDELITY_DROP_POINTS:g} allowed)")


def _explicit(report: Mapping[str, Any]) -> dict[str, Any]:
    by_group = report.get("explicit_adherence_by_group") or {}
    after, before = by_group.get("after") or {}, by_group.get("before") or {}
    if not after:
        return _line("explicit adherence", None, "no explicit check (--explicit-concepts 0)")
    worst, cells = None, []
    for attr, shares in after.items():
        for group, share in shares.items():
            floor = explicit_floor(before.get(attr, {}).get(group))
            margin = -1.0 if share is None else share - floor
            cells.append(f"{group} {'–' if share is None else f'{share:.3f}'}")
            if worst is None or margin < worst[0]:
                worst = (margin, group, share, floor)
    margin, group, share, floor = worst
    shown = "–" if share is None else f"{share:.3f}"
    return _line("explicit adherence", margin >= 0,
                 f"lowest {group} {shown} (floor {floor:.3f}: 0.95, or 3 points under a before value below 0.95); "
                 + ", ".join(cells))


def _generalisation(report: Mapping[str, Any]) -> dict[str, Any]:
    suites = (report.get("checks") or {}).get("suites") or {}
    attributes = report["config"]["attributes"]
    if not suites:
        return _line("generalisation", None, "no check suites (--check-suites none)")
    worse, cells = [], []
    for name, pair in suites.items():
        for attr in attributes:
            b, a = pair["before"]["rd"].get(attr), pair["after"]["rd"].get(attr)
            if not (b and a) or b["mean"] is None or a["mean"] is None:
                continue
            upper = interval_end(b)
            upper = b["mean"] if upper is None else upper
            cells.append(f"{name} {attr} {b['mean']:.3f} → {a['mean']:.3f}")
            if a["mean"] > upper:
                worse.append(f"{name} {attr} {a['mean']:.3f} > {upper:.3f}")
    if not cells:
        return _line("generalisation", None, "the check suites measured no fixed attribute")
    detail = ("rd after above the before interval: " + "; ".join(worse)) if worse else (
        "rd after within or below the before interval on every check suite: " + ", ".join(cells))
    return _line("generalisation", not worse, detail)


def _face_rate(report: Mapping[str, Any]) -> dict[str, Any]:
    pairs = {"test": (report["before"], report["after"])}
    pairs.update({name: (p["before"], p["after"]) for name, p in ((report.get("checks") or {}).get("suites") or {}).items()})
    drops = {name: (b["face_rate"], a["face_rate"]) for name, (b, a) in pairs.items()
             if b.get("face_rate") is not None and a.get("face_rate") is not None}
    if not drops:
        return _line("face rate", None, "no face rate measured")
    name, (b, a) = min(drops.items(), key=lambda kv: kv[1][1] - kv[1][0])
    return _line("face rate", a >= b - MAX_FACE_RATE_DROP,
                 f"largest drop on {name}: {b:.3f} → {a:.3f} (at most {100 * MAX_FACE_RATE_DROP:g} point allowed)")


def quality_allowance(metric: str, before: Mapping[str, Any]) -> float:
    """How far a quality metric's suite mean may drop: the larger of the before audit's own noise (mean −
    the lower end of its 95 % interval) and QUALITY_DROP_FLOOR."""
    lo = (before.get("ci95") or [None, None])[0]
    noise = before["mean"] - lo if lo is not None else 0.0
    return max(noise, QUALITY_DROP_FLOOR[metric])


def _quality(report: Mapping[str, Any]) -> dict[str, Any]:
    b, a = report["before"].get("quality"), report["after"].get("quality")
    if not (b and a):
        return _line("image quality", None, "no quality model (--quality)")
    cells, worse = [], []
    for m in QUALITY_METRICS:
        if not (b.get(m) and a.get(m)):
            continue
        allowed = quality_allowance(m, b[m])
        drop = b[m]["mean"] - a[m]["mean"]
        cells.append(f"{m} {b[m]['mean']:.3f} → {a[m]['mean']:.3f} (a drop of at most {allowed:.3f} allowed)")
        if drop > allowed:
            worse.append(m)
    if not cells:
        return _line("image quality", None, "no image was scored")
    return _line("image quality", not worse, ("dropped too far: " + ", ".join(worse) + "; " if worse else "")
                 + "; ".join(cells))


def verdict(report: Mapping[str, Any]) -> dict[str, Any]:
    """{"guardrails": [{"name", "passed" (True / False / None: not measured), "detail", "line"}], "passed":
    no guardrail failed} of a fix report (report.build_report's content)."""
    lines = [_fidelity(report), _explicit(report), _generalisation(report), _face_rate(report), _quality(report)]
    return {"guardrails": lines, "passed": all(g["passed"] is not False for g in lines)}


__all__ = ["QUALITY_DROP_FLOOR", "quality_allowance", "verdict"]
