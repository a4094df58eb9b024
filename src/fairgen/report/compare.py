"""`fairgen compare`: a Table-1-style table of several runs, and the paired difference of two.

Rows are runs; columns are the suite-mean rd per attribute with its ci95, the face rate and the fidelity.
For exactly two runs over the same prompts a last row gives run 2 − run 1 per attribute with a bootstrap
ci95: each run's images are resampled within each prompt (independently per run, the same prompts), and
the interval is taken over the differences of the two suite means.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..metrics import bootstrap_metrics, percentile_interval, rd
from ..metrics.intervals import nanmean_rows
from ..types import METRIC_ATTRIBUTES, FairgenError
from .html import ATTRIBUTE_NAMES, read_run

FORMATS = ("md", "csv", "latex")
REPLICATES = 1000
SEED = 0

Interval = tuple[float, float | None, float | None]  # (value, lo, hi); lo/hi None when there is no interval


@dataclass
class Row:
    """One line of the table. rd: attribute -> interval, or None when the attribute was not measured."""

    label: str
    rd: dict[str, Interval | None]
    face_rate: float | None = None
    fidelity: float | None = None
    fidelity_metric: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # run dir, model, suite, n: the csv's extra columns
    difference: bool = False  # the paired-difference row (set off by a rule in LaTeX)


def compare_runs(run_dirs: Sequence[str | Path], fmt: str = "md") -> str:
    """The comparison table of finished runs as Markdown (`md`), CSV (`csv`) or a LaTeX tabular (`latex`).

    Rows are labelled "model (suite)", or by directory name when two runs would share a label. With exactly
    two runs over the same prompt ids, a last row holds the paired difference (run 2 − run 1) of the
    suite-mean rd with a bootstrap ci95 (REPLICATES replicates, fixed SEED).
    """
    if fmt not in FORMATS:
        raise FairgenError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not run_dirs:
        raise FairgenError("compare needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    runs = [read_run(d)[0] for d in dirs]
    labels = _labels(dirs, runs)
    rows = [_row(label, d, r) for label, d, r in zip(labels, dirs, runs)]
    if len(runs) == 2 and _prompt_ids(runs[0]) == _prompt_ids(runs[1]):
        diff = paired_difference(runs[0], runs[1])
        label = f"difference: {labels[1]} − {labels[0]}"
        rows.append(Row(label, diff, info={"n_prompts": len(runs[0]["prompts"])}, difference=True))
    return {"md": _markdown, "csv": _csv, "latex": _latex}[fmt](rows)


def paired_difference(
    first: Mapping[str, Any], second: Mapping[str, Any], replicates: int = REPLICATES, seed: int = SEED
) -> dict[str, Interval | None]:
    """Suite-mean rd of `second` minus that of `first`, per attribute, with a bootstrap ci95.

    Both are results.json dicts over the same prompt ids. Replicates resample each run's per-prompt counts
    multinomially and independently; prompts are matched by id. None where either run lacks the attribute.
    The interval assumes independent runs: two `world` runs with the same --seed share their random draws
    (common random numbers), which this interval does not model.
    """
    order = _prompt_ids(first)
    out: dict[str, Interval | None] = {}
    for j, (attr, classes) in enumerate(METRIC_ATTRIBUTES.items()):
        if not first["summary"].get(attr) or not second["summary"].get(attr):
            out[attr] = None
            continue
        counts = [_counts(run, attr, classes, order) for run in (first, second)]
        # One seed per (attribute, run): the two runs' resamples are independent draws.
        means = [
            bootstrap_metrics(c, {"rd": rd}, replicates, seed=seed + 2 * j + k)["rd"][1]
            for k, c in enumerate(counts)
        ]
        point = float(nanmean_rows(rd(counts[1])) - nanmean_rows(rd(counts[0])))
        lo, hi = percentile_interval(means[1] - means[0])
        out[attr] = (point, _finite(lo), _finite(hi))
    return out


def _counts(run: Mapping[str, Any], attr: str, classes: Sequence[str], order: Sequence[str]) -> np.ndarray:
    """(P, K) counts of one attribute, prompts in `order`."""
    counts = {str(p["id"]): (p.get("counts") or {}).get(attr) or {} for p in run["prompts"]}
    return np.array([[int(counts[i].get(c, 0)) for c in classes] for i in order])


def _prompt_ids(results: Mapping[str, Any]) -> list[str]:
    return sorted(str(p["id"]) for p in results["prompts"])


def _labels(dirs: Sequence[Path], runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """"model (suite)" per run; directory names if any two collide, the paths as given if those do too."""
    for candidates in (
        [f"{r.get('model', '?')} ({r.get('suite', '?')})" for r in runs],
        [d.resolve().name or str(d) for d in dirs],
    ):
        if len(set(candidates)) == len(candidates):
            return candidates
    return [str(d) for d in dirs]


def _row(label: str, run_dir: Path, results: Mapping[str, Any]) -> Row:
    summary = results["summary"]
    rds: dict[str, Interval | None] = {}
    for attr in METRIC_ATTRIBUTES:
        m = summary.get(attr)
        if not m:
            rds[attr] = None  # not measured
            continue
        lo, hi = m["rd"].get("ci95") or (None, None)
        rds[attr] = (m["rd"]["mean"], lo, hi)
    fidelity = summary.get("fidelity") or {}
    info = {
        "run_dir": str(run_dir), "model": results.get("model"), "suite": results.get("suite"),
        "images_per_prompt": results.get("images_per_prompt"), "n_prompts": len(results["prompts"]),
    }
    return Row(label, rds, summary.get("face_rate"), fidelity.get("value"), fidelity.get("metric"), info)


def _finite(x: Any) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else float(x)


# --- formatting ------------------------------------------------------------------------------------------
def _num(x: float | None, digits: int = 2) -> str:
    """Table-1 style: two decimals; a true minus sign; "–" for no value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    s = f"{x:.{digits}f}"
    if float(s) == 0:
        s = s.lstrip("-")  # never "−0.00"
    return s.replace("-", "−")


def _interval(cell: Interval | None) -> str:
    if cell is None:
        return "not measured"
    value, lo, hi = cell
    return _num(value) if lo is None else f"{_num(value)} [{_num(lo)}, {_num(hi)}]"


def _fidelity(row: Row, rows: Sequence[Row]) -> str:
    """Fidelity value, naming its metric only when the runs do not all use the same one."""
    if row.fidelity is None:
        return "–"
    metrics = {r.fidelity_metric for r in rows if r.fidelity is not None}
    return _num(row.fidelity) + (f" ({row.fidelity_metric})" if len(metrics) > 1 else "")


def _header(rows: Sequence[Row]) -> list[str]:
    metrics = {r.fidelity_metric for r in rows if r.fidelity is not None}
    fidelity = f"fidelity ({metrics.pop()})" if len(metrics) == 1 else "fidelity"
    return ["run"] + [f"rd {ATTRIBUTE_NAMES[a]}" for a in METRIC_ATTRIBUTES] + ["face rate", fidelity]


def _cells(row: Row, rows: Sequence[Row]) -> list[str]:
    rds = [_interval(row.rd[a]) for a in METRIC_ATTRIBUTES]
    return [row.label, *rds, _num(row.face_rate), _fidelity(row, rows)]


def _markdown(rows: Sequence[Row]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = _header(rows)
    out = [line(header), "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += [line(_cells(r, rows)) for r in rows]
    out += ["", "rd: mean over prompts [bootstrap ci95, images resampled within each prompt]; 0 = balanced."]
    if rows[-1].difference:
        out.append("difference: paired over the same prompts, the runs resampled independently.")
    return "\n".join(out) + "\n"


def _csv(rows: Sequence[Row]) -> str:
    """Machine-readable: numbers in their own columns (value, lo, hi), empty where not measured."""
    columns = ["run", "run_dir", "model", "suite", "images_per_prompt", "n_prompts"]
    for a in METRIC_ATTRIBUTES:
        columns += [f"rd_{a}", f"rd_{a}_lo", f"rd_{a}_hi"]
    columns += ["face_rate", "fidelity", "fidelity_metric"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        record: dict[str, Any] = {"run": r.label, **r.info}
        for a in METRIC_ATTRIBUTES:
            cell = r.rd[a] or (None, None, None)
            record.update({f"rd_{a}": cell[0], f"rd_{a}_lo": cell[1], f"rd_{a}_hi": cell[2]})
        record.update(face_rate=r.face_rate, fidelity=r.fidelity, fidelity_metric=r.fidelity_metric)
        writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    return buf.getvalue()


# LaTeX's special characters, and the few non-ASCII ones the table itself uses (pdflatex-safe forms).
_LATEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    "−": "$-$", "–": "--", "×": r"$\times$",
}
_LATEX_RE = re.compile("|".join(re.escape(k) for k in _LATEX))


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX tabular cell (one pass, so inserted braces are never escaped again)."""
    out = _LATEX_RE.sub(lambda m: _LATEX[m.group()], str(text))
    # A cell starting with "[" right after "\\" would be read as \\'s optional argument.
    return "{}" + out if out.startswith("[") else out


def _latex(rows: Sequence[Row]) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); the difference row sits below a rule."""
    header = _header(rows)
    lines = [r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    for r in rows:
        if r.difference:
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(c) for c in _cells(r, rows)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
