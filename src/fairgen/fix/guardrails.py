"""The verdict of a fix: what it must not break, one line per guardrail (pass / fail / not measured).

    fidelity          concept fidelity on the test suite drops by at most 3 points
    explicit          every group's explicit adherence after the fix is >= 0.95, or at most 3 points below the
                      model's own value where that starts lower (validation.explicit_floor)
    generalisation    on every check suite (prompts the fix never saw) and fixed attribute, rd after the fix
                      is not above the upper end of the 95 % interval of rd before it
    face rate         the share of images with a face drops by at most 1 point, on the test and check suites

A guardrail that could not be measured (no fidelity metric, no explicit check, `--check-suites none`)
reads "not measured" and does not fail the verdict; `fairgen fix --strict` exits 1 when any guardrail
fails. The bias cut itself is the headline, not a guardrail.
"""

from __future__ import annotations

from typing import Any, Mapping

from .validation import MAX_FACE_RATE_DROP, MAX_FIDELITY_DROP_POINTS, explicit_floor


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
                 f"lowest {group} {shown} (floor {floor:.3f}: 0.95, or 3 points under its before value); "
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
            upper = (b.get("ci95") or [None, None])[1]
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


def verdict(report: Mapping[str, Any]) -> dict[str, Any]:
    """{"guardrails": [{"name", "passed" (True / False / None: not measured), "detail", "line"}], "passed":
    no guardrail failed} of a fix report (report.build_report's content)."""
    lines = [_fidelity(report), _explicit(report), _generalisation(report), _face_rate(report)]
    return {"guardrails": lines, "passed": all(g["passed"] is not False for g in lines)}


__all__ = ["verdict"]
