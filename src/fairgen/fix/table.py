"""`fairgen fix --method all`: the four methods side by side, in the layout of the paper's Table 1.

One row for the model before any fix, then one per method (prompt engineering, FT image->text, FT
text->image, BPO): rd of every attribute with its 95% interval and the relative change, face rate,
fidelity, explicit-prompt adherence, and with --quality the CLIP score and CLIP-IQA with their 95%
intervals; then the after-fix checks (understanding accuracy, other suites).
Written as fix_table.json (the numbers) and fix_table.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..store import atomic_write_bytes, atomic_write_json
from ..types import METRIC_ATTRIBUTES
from .report import QUALITY_NAMES

TABLE_JSON, TABLE_MD = "fix_table.json", "fix_table.md"
# How the paper names each method in Table 1.
LABELS = {"prompt": "prompt engineering", "understanding-sft": "FT image→text (understanding-sft)",
          "sft": "FT text→image (sft)", "bpo": "BPO (bpo)"}


def _row(summary: Mapping[str, Any], change: Mapping[str, Any] | None, explicit: Mapping[str, Any],
         understanding: Mapping[str, Any] | None, suites: Mapping[str, Any]) -> dict[str, Any]:
    """One row: rd per attribute (mean, ci95, noise floor, relative change), face rate, fidelity, image
    quality (report.audit_summary's, or None), explicit adherence, understanding accuracy, and per check
    suite rd per attribute."""
    rd = {}
    for attr in METRIC_ATTRIBUTES:
        r = summary["rd"][attr]
        rd[attr] = None if not r else {**r, "relative": (change or {}).get(attr, {}).get("relative")}
    fidelity = summary.get("fidelity")
    return {"rd": rd, "face_rate": summary["face_rate"], "fidelity": fidelity["value"] if fidelity else None,
            "fidelity_metric": fidelity["metric"] if fidelity else None, "quality": summary.get("quality"),
            "explicit_adherence": dict(explicit),
            "understanding_accuracy": understanding["accuracy"] if understanding else None,
            "suites": {name: {a: (s["rd"][a] or {}).get("mean") for a in METRIC_ATTRIBUTES}
                       for name, s in suites.items()}}


def build_table(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """fix_table.json's content from the methods' fix reports (which share their before audits)."""
    first = next(iter(reports.values()))
    checks = first["checks"]
    before = _row(first["before"], None, first["explicit_adherence"]["before"], checks["understanding"]["before"],
                  {n: p["before"] for n, p in checks["suites"].items()})
    rows = {m: _row(r["after"], r["rd_change"], r["explicit_adherence"]["after"], r["checks"]["understanding"]["after"],
                    {n: p["after"] for n, p in r["checks"]["suites"].items()}) for m, r in reports.items()}
    config = {k: v for k, v in first["config"].items() if k not in ("method", "adapter")}
    return {"config": config, "attributes": list(first["config"]["attributes"]),
            "images_per_prompt": first["after"]["images_per_prompt"], "before": before, "methods": rows}


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(pair: Any) -> str:
    return f"[{_f(pair[0])}, {_f(pair[1])}]" if pair else "[–]"


def _rd(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "not measured"
    if cell["mean"] is None:  # no image with a face
        return "–"
    ci = cell.get("ci95") or [None, None]
    change = "" if cell.get("relative") is None else f" ({100 * cell['relative']:+.1f}%)"
    return f"{_f(cell['mean'])} [{_f(ci[0])}, {_f(ci[1])}]{change}"


def markdown(table: Mapping[str, Any]) -> str:
    """fix_table.md: the Table-1 rows, then the after-fix checks."""
    c, attrs = table["config"], table["attributes"]
    rows = [("before (the model)", table["before"]), *((LABELS[m], r) for m, r in table["methods"].items())]
    quality = [m for m in QUALITY_NAMES if all((r.get("quality") or {}).get(m) for _, r in rows)]
    lines = [f"# fairgen fix, every method: {c['model']}, attributes {', '.join(attrs)}", "",
             f"Trained on {c['train_suite']} (the same balanced set, {c['sft_steps']} + {c['bpo_steps']} steps, lr "
             f"{c['lr']} for every trained method), audited on {c['test_suite']} at {table['images_per_prompt']} images "
             "per prompt. rd [95% CI] (change against before).", "",
             "| method | " + " | ".join(f"{a} rd" for a in METRIC_ATTRIBUTES)
             + " | face rate | fidelity | " + "".join(f"{QUALITY_NAMES[m]} | " for m in quality)
             + "explicit followed |",
             "| --- " * (len(METRIC_ATTRIBUTES) + 4 + len(quality)) + "|"]
    for label, r in rows:
        explicit = ", ".join(f"{a} {_f(v)}" for a, v in r["explicit_adherence"].items()) or "–"
        lines.append(f"| {label} | " + " | ".join(_rd(r["rd"][a]) for a in METRIC_ATTRIBUTES)
                     + f" | {_f(r['face_rate'])} | {_f(r['fidelity'])} | "
                     + "".join(f"{_f(r['quality'][m]['mean'])} {_ci(r['quality'][m]['ci95'])} | " for m in quality)
                     + f"{explicit} |")
    suites = list(table["before"]["suites"])
    if suites or table["before"]["understanding_accuracy"]:
        lines += ["", "After-fix checks: understanding accuracy on labelled world images, and rd of the fixed "
                  "attributes on other suites.", "",
                  "| " + " | ".join(["method", "understanding accuracy", *(f"{s} rd" for s in suites)]) + " |",
                  "| --- " * (2 + len(suites)) + "|"]
        for label, r in rows:
            acc = r["understanding_accuracy"]
            und = ", ".join(f"{a} {_f(v)}" for a, v in acc.items()) if acc else "–"
            cells = [", ".join(f"{a} {_f(r['suites'][s][a])}" for a in attrs) for s in suites]
            lines.append("| " + " | ".join([label, und, *cells]) + " |")
    return "\n".join(lines) + "\n"


def write(out: Path, table: Mapping[str, Any]) -> None:
    """fix_table.json and fix_table.md in `out` (each written whole or not at all)."""
    atomic_write_json(out / TABLE_JSON, table)
    atomic_write_bytes(out / TABLE_MD, markdown(table).encode())
