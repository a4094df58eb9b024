"""`fairgen compare`: a Table-1-style table of several runs, and the paired difference of two.

Rows are runs; columns are the suite-mean rd per attribute with its ci95, the face rate and the fidelity;
below the table, each run's noise floors (the rd a perfectly balanced model would show at its face counts).
For exactly two runs over the same prompts a last row gives run 2 − run 1 per attribute with a bootstrap
ci95. Runs made with the same seed share every image's seed (common random numbers): their images are paired
by (prompt, sample) and resampled together, so a run compared with itself differs by exactly 0 [0, 0].
Runs with other seeds are resampled independently within each prompt. `compare_warnings` names what makes
two runs hard to compare (other prompts, other images per prompt, other perception). With `rank_by`
(ranking.py) the runs are ordered best first by any suite metric, with a rank column.
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
from ..metrics.table import holding
from ..types import METRIC_ATTRIBUTES, FairgenError
from . import FORMATS
from .html import ATTRIBUTE_NAMES, read_records, read_run
from .ranking import Ranking, parse_rank_by, ranking_notes, ranks

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
    rank: int | None = None  # with --rank-by: 1 = best; None unranked (no value) or the difference row
    ranked: Interval | None = None  # with --rank-by: the run's value of the ranking metric


def compare_runs(run_dirs: Sequence[str | Path], fmt: str = "md", rank_by: str | None = None) -> str:
    """The comparison table of finished runs as Markdown (`md`), CSV (`csv`) or a LaTeX tabular (`latex`).

    Rows are labelled "model (suite)", or by directory name when two runs would share a label. With exactly
    two runs over the same prompt ids, a last row holds the paired difference (run 2 − run 1, in the order
    given) of the suite-mean rd with a bootstrap ci95 (REPLICATES replicates, fixed SEED). rank_by:
    "METRIC[:ATTRIBUTE]" (ranking.py) orders the runs best first and adds a rank column; FairgenError for
    an unknown metric or attribute, or a run that lacks the metric.
    """
    if fmt not in FORMATS:
        raise FairgenError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if not run_dirs:
        raise FairgenError("compare needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    runs = [read_run(d)[0] for d in dirs]
    labels = _labels(dirs, runs)
    rows = [_row(label, d, r) for label, d, r in zip(labels, dirs, runs)]
    notes = compare_warnings(runs)
    ranking = parse_rank_by(rank_by, runs) if rank_by is not None else None
    if ranking is not None:
        for row, results in zip(rows, runs):
            row.ranked = ranking.value(results, f"run {row.label} ({row.info['run_dir']})")
        for row, rank in zip(rows, ranks([r.ranked[0] for r in rows], ranking.higher_is_better)):
            row.rank = rank
        rows.sort(key=lambda r: (r.rank is None, r.rank or 0))  # stable: equal ranks keep the order given
        notes += ranking_notes(ranking, runs)
    if len(runs) == 2 and _prompt_ids(runs[0]) == _prompt_ids(runs[1]):
        paired = _same_images(runs)
        diff = paired_difference(runs[0], runs[1], records=[read_records(d) for d in dirs] if paired else None)
        label = f"difference: {labels[1]} − {labels[0]}"
        rows.append(Row(label, diff, info={"n_prompts": len(runs[0]["prompts"]), "paired": paired},
                        difference=True))
    return {"md": _markdown, "csv": _csv, "latex": _latex}[fmt](rows, notes, ranking)


def compare_warnings(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    """What makes the runs hard to compare, one sentence each: other prompts, other images per prompt
    (other noise floors), other perception backends."""
    out = []
    ids = [_prompt_ids(r) for r in runs]
    if any(i != ids[0] for i in ids):
        out.append("the runs audit different prompts (" + " vs ".join(str(len(i)) for i in ids)
                   + " prompts): their suite means are not comparable and no paired difference is given")
    sizes = [r.get("images_per_prompt") for r in runs]
    if len(set(map(str, sizes))) > 1:
        out.append("the runs have different images per prompt (" + " vs ".join(map(str, sizes))
                   + "): their rd noise floors differ, so compare each rd with its own floor")
    backends = [r.get("perception") for r in runs]
    if len(set(map(str, backends))) > 1:
        out.append("the runs use different perception backends (" + " vs ".join(map(str, backends)) + ")")
    return out


def _same_images(runs: Sequence[Mapping[str, Any]]) -> bool:
    """Whether two runs' images were drawn with the same seeds (same run seed and prompts): then image k of a
    prompt is the same draw in both, and the difference is paired image by image."""
    a, b = runs
    return a.get("seed") is not None and a.get("seed") == b.get("seed") and _prompt_ids(a) == _prompt_ids(b)


def paired_difference(
    first: Mapping[str, Any], second: Mapping[str, Any], replicates: int = REPLICATES, seed: int = SEED,
    records: Sequence[Mapping[str, list[dict[str, Any]]]] | None = None,
) -> dict[str, Interval | None]:
    """Suite-mean rd of `second` minus that of `first`, per attribute, with a bootstrap ci95.

    Both are results.json dicts over the same prompt ids. records: both runs' perception records by prompt
    (html.read_records) when their images share seeds; then each replicate resamples the sample indices of a
    prompt once for both runs (common random numbers). Without them, each run's per-prompt counts are
    resampled multinomially and independently. None where either run lacks the attribute.
    """
    order = _prompt_ids(first)
    out: dict[str, Interval | None] = {}
    for j, (attr, classes) in enumerate(METRIC_ATTRIBUTES.items()):
        if not first["summary"].get(attr) or not second["summary"].get(attr):
            out[attr] = None
            continue
        counts = [_counts(run, attr, classes, order) for run in (first, second)]
        point = float(nanmean_rows(rd(counts[1])) - nanmean_rows(rd(counts[0])))
        if records is not None:
            means = _paired_means(records, attr, classes, order, replicates, seed + j)
        else:  # one seed per (attribute, run): the two runs' resamples are independent draws
            means = [bootstrap_metrics(c, {"rd": rd}, replicates, seed=seed + 2 * j + k)["rd"][1]
                     for k, c in enumerate(counts)]
        lo, hi = holding(percentile_interval(means[1] - means[0]), point)
        out[attr] = (point, _finite(lo), _finite(hi))
    return out


def _paired_means(records: Sequence[Mapping[str, list[dict[str, Any]]]], attr: str, classes: Sequence[str],
                  order: Sequence[str], replicates: int, seed: int) -> list[np.ndarray]:
    """Bootstrap suite-mean rd (B,) of both runs, resampling each prompt's sample indices jointly."""
    rng = np.random.default_rng(seed)
    index = {c: k for k, c in enumerate(classes)}
    per_run = [np.full((replicates, len(order)), np.nan) for _ in records]
    for i, pid in enumerate(order):
        labels = [{int(r["sample"]): _class_of(r, attr, index) for r in run.get(pid, [])} for run in records]
        samples = sorted(set(labels[0]) & set(labels[1]))
        if not samples:
            continue
        draw = rng.integers(0, len(samples), size=(replicates, len(samples)))
        for run, lab in enumerate(labels):
            codes = np.array([lab[k] for k in samples])[draw]  # (B, n): class index, -1 without a label
            counts = np.stack([(codes == k).sum(axis=1) for k in range(len(classes))], axis=1)
            per_run[run][:, i] = rd(counts)
    return [nanmean_rows(m) for m in per_run]


def _class_of(rec: Mapping[str, Any], attr: str, index: Mapping[str, int]) -> int:
    """A record's class index for an attribute (gender_x_race joined), -1 without a face or that label."""
    if not rec.get("face"):
        return -1
    label = rec.get("label") or {}
    value = "_".join(label.get(a, "") for a in attr.split("_x_")) if "_x_" in attr else label.get(attr)
    return index.get(value, -1)


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
    floors: dict[str, float | None] = {}
    for attr in METRIC_ATTRIBUTES:
        m = summary.get(attr)
        if not m:
            rds[attr] = None  # not measured
            continue
        lo, hi = m["rd"].get("ci95") or (None, None)
        rds[attr] = (m["rd"]["mean"], lo, hi)
        floors[attr] = m["rd"].get("noise_floor")
    fidelity = summary.get("fidelity") or {}
    info = {
        "run_dir": str(run_dir), "model": results.get("model"), "suite": results.get("suite"),
        "images_per_prompt": results.get("images_per_prompt"), "n_prompts": len(results["prompts"]),
        **{f"rd_{a}_noise_floor": f for a, f in floors.items()},
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


def _header(rows: Sequence[Row], ranking: Ranking | None = None) -> list[str]:
    metrics = {r.fidelity_metric for r in rows if r.fidelity is not None}
    fidelity = f"fidelity ({metrics.pop()})" if len(metrics) == 1 else "fidelity"
    head = ["run"] + [f"rd {ATTRIBUTE_NAMES[a]}" for a in METRIC_ATTRIBUTES] + ["face rate", fidelity]
    if ranking is None:
        return head
    extra = [_ranked_title(ranking)] if _own_column(ranking) else []
    return ["rank", head[0], *extra, *head[1:]]


def _cells(row: Row, rows: Sequence[Row], ranking: Ranking | None = None) -> list[str]:
    rds = [_interval(row.rd[a]) for a in METRIC_ATTRIBUTES]
    cells = [row.label, *rds, _num(row.face_rate), _fidelity(row, rows)]
    if ranking is None:
        return cells
    rank = "" if row.difference else ("–" if row.rank is None else str(row.rank))
    extra = [("" if row.difference else _interval(row.ranked))] if _own_column(ranking) else []
    return [rank, cells[0], *extra, *cells[1:]]


def _own_column(ranking: Ranking) -> bool:
    """Whether the ranking metric needs a column of its own (rd, face rate and fidelity have theirs)."""
    return ranking.metric not in ("rd", "face_rate", "fidelity")


def _ranked_title(ranking: Ranking) -> str:
    return ranking.metric if ranking.attribute is None else f"{ranking.metric} {ATTRIBUTE_NAMES[ranking.attribute]}"


def _ranking_note(ranking: Ranking) -> str:
    way = "higher" if ranking.higher_is_better else "lower"
    fair = "better" if ranking.attribute is None else "fairer"
    return (f"ranked by {_ranked_title(ranking)} ({way} is {fair}), by point estimate; equal values share a rank; "
            "where intervals overlap, these data do not settle the order.")


def _floors(row: Row) -> str:
    """"gender 0.06, race 0.05, ..." from a run row's noise floors."""
    return ", ".join(f"{ATTRIBUTE_NAMES[a]} {_num(row.info.get(f'rd_{a}_noise_floor'))}" for a in METRIC_ATTRIBUTES
                     if row.info.get(f"rd_{a}_noise_floor") is not None) or "–"


def _markdown(rows: Sequence[Row], notes: Sequence[str] = (), ranking: Ranking | None = None) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = _header(rows, ranking)
    label = header.index("run")
    out = [line(header), "|" + "|".join(["---:"] * label + [":---"] + ["---:"] * (len(header) - 1 - label)) + "|"]
    out += [line(_cells(r, rows, ranking)) for r in rows]
    out += ["", "rd: mean over prompts [bootstrap ci95, images resampled within each prompt]; 0 = balanced."]
    out += [_ranking_note(ranking)] if ranking is not None else []
    out += ["noise floor (the rd of a perfectly balanced model at the run's face counts): "
            f"{r.label}: {_floors(r)}." for r in rows if not r.difference]
    if rows[-1].difference:
        out.append("difference: paired image by image (same seed: common random numbers)."
                   if rows[-1].info.get("paired") else
                   "difference: paired over the same prompts, the runs resampled independently (other seeds).")
    out += [f"warning: {n}." for n in notes]
    return "\n".join(out) + "\n"


def _csv(rows: Sequence[Row], notes: Sequence[str] = (), ranking: Ranking | None = None) -> str:
    """Machine-readable: numbers in their own columns (value, lo, hi), empty where not measured. With a
    ranking: first a rank column, and the ranking metric's value, lo, hi (e.g. tv_gender, tv_gender_lo)."""
    key = None if ranking is None else "_".join(filter(None, (ranking.metric, ranking.attribute)))
    columns = ([] if ranking is None else ["rank"]) + ["run", "run_dir", "model", "suite", "images_per_prompt",
                                                       "n_prompts"]
    columns += [] if key is None else [key, f"{key}_lo", f"{key}_hi"]
    for a in METRIC_ATTRIBUTES:
        columns += [f"rd_{a}", f"rd_{a}_lo", f"rd_{a}_hi", f"rd_{a}_noise_floor"]
    columns += ["face_rate", "fidelity", "fidelity_metric", "paired"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        record: dict[str, Any] = {"run": r.label, **r.info}
        if key is not None:
            cell = r.ranked or (None, None, None)
            record.update({"rank": r.rank, key: cell[0], f"{key}_lo": cell[1], f"{key}_hi": cell[2]})
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


def _latex(rows: Sequence[Row], notes: Sequence[str] = (), ranking: Ranking | None = None) -> str:
    """A booktabs tabular (needs \\usepackage{booktabs}); the difference row sits below a rule."""
    header = _header(rows, ranking)
    label = header.index("run")
    align = "r" * label + "l" + "r" * (len(header) - 1 - label)
    lines = [r"\begin{tabular}{" + align + "}", r"\toprule"]
    lines.append(" & ".join(latex_escape(h) for h in header) + r" \\")
    lines.append(r"\midrule")
    for r in rows:
        if r.difference:
            lines.append(r"\midrule")
        lines.append(" & ".join(latex_escape(c) for c in _cells(r, rows, ranking)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
