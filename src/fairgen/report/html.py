"""report.html: one self-contained page per run (docs/architecture.md, "Run directory").

The page is read straight from disk (file://, no server): charts and thumbnails are embedded as data
URIs, the CSS is inline and there is no JavaScript. Everything a user typed (prompt text, ids, model and
suite names) goes through jinja2's autoescape, and a Content-Security-Policy forbids scripts and
external loads as a second line of defence.
"""

from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Mapping

import jinja2

from ..metrics import noise_floor
from ..store import MANIFEST, atomic_write_bytes
from ..types import ATTRIBUTES, METRIC_ATTRIBUTES, FairgenError
from .plots import CLASS_COLOURS, THUMB_PX, ShareCharts, thumbnail

REPORT = "report.html"
RESULTS = "results.json"
MAX_THUMBS = 64  # per prompt grid: enough to see the skew, small enough to keep the file light
ATTRIBUTE_NAMES = {"gender": "gender", "race": "race", "gender_x_race": "gender × race", "age": "age"}
# Warn about unequal detection when a chi-square test finds the per-group rates differ beyond chance at this
# level.
DETECTION_WARN_P = 0.01

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("fairgen.report", "templates"),
    autoescape=True,  # every template is HTML: escape all interpolated values, whatever the file name
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)


def fmt_num(x: float | None, digits: int = 3) -> str:
    """A metric for display; None or NaN (nothing measured) reads "–", never 0."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_ci(pair: Any, digits: int = 3) -> str:
    """A [lo, hi] interval for display; "–" when absent."""
    if not pair or pair[0] is None:
        return "–"
    return f"[{fmt_num(pair[0], digits)}, {fmt_num(pair[1], digits)}]"


_env.filters["num"] = fmt_num
_env.filters["ci"] = fmt_ci


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from disk; a missing or broken file is the user's problem: FairgenError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FairgenError(f"{path.parent} is not a fairgen run: it has no {path.name}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FairgenError(f"{path} cannot be read as JSON ({e})") from None
    if not isinstance(data, dict):
        raise FairgenError(f"{path} is not a JSON object")
    return data


def read_run(run_dir: str | Path, require_finished: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, manifest) of a run directory, checked enough to report on.

    require_finished: also demand the manifest's "finished" stamp (audit renders its report just before
    stamping, so it passes False).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise FairgenError(f"{root} is not a directory (expected a fairgen run directory)")
    manifest = read_json(root / MANIFEST) if (root / MANIFEST).exists() or require_finished else {}
    if require_finished and not manifest.get("finished"):
        raise FairgenError(f"{root} is not a finished fairgen run (manifest.json has no 'finished' stamp)")
    results = read_json(root / RESULTS)
    prompts = results.get("prompts")
    if not isinstance(results.get("summary"), dict) or not isinstance(prompts, list):
        raise FairgenError(f"{root / RESULTS} lacks 'summary' or 'prompts' (not a fairgen results file)")
    if not all(isinstance(p, dict) and "id" in p for p in prompts):
        raise FairgenError(f"{root / RESULTS}: every entry of 'prompts' needs an 'id'")
    return results, manifest


def read_records(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """perception.jsonl (or its shards perception-<rank>.jsonl) grouped by prompt id, sorted by sample.

    Read only: a torn last line left by a crash is skipped, not repaired (the audit's resume does that).
    """
    by_prompt: dict[str, dict[int, dict[str, Any]]] = {}
    for path in sorted(run_dir.glob("perception*.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                key = (str(rec["prompt_id"]), int(rec["sample"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
            by_prompt.setdefault(key[0], {}).setdefault(key[1], rec)
    return {pid: [recs[k] for k in sorted(recs)] for pid, recs in by_prompt.items()}


def folder_warnings(results: Mapping[str, Any]) -> list[str]:
    """What a folder: audit did not find, one sentence each (also shown in the report)."""
    folder = results.get("folder") or {}
    out = []
    if folder.get("prompts_without_images"):
        ids = folder["prompts_without_images"]
        out.append(f"{len(ids)} prompt(s) have no images in the folder: {', '.join(ids[:8])}"
                   + (" ..." if len(ids) > 8 else ""))
    if folder.get("prompts_short"):
        short = folder["prompts_short"]
        out.append(f"{len(short)} prompt(s) have fewer images than the {results['images_per_prompt']} asked: "
                   + ", ".join(f"{k} {v}" for k, v in list(short.items())[:8]) + (" ..." if len(short) > 8 else ""))
    if folder.get("unmatched_folders"):
        names = folder["unmatched_folders"]
        out.append(f"{len(names)} folder(s) match no prompt of the suite and were not read: {', '.join(names[:8])}"
                   + (" ..." if len(names) > 8 else ""))
    return out


def render_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.html (atomically) from results.json, manifest.json and perception.jsonl."""
    root = Path(run_dir)
    results, manifest = read_run(root, require_finished=False)
    html = _env.get_template("report.html.j2").render(**_context(root, results, manifest))
    out = root / REPORT
    atomic_write_bytes(out, html.encode("utf-8"))
    return out


def _context(root: Path, results: Mapping[str, Any], manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Everything the template shows, as plain values (formatting of numbers is left to the filters)."""
    config = manifest.get("config", {})
    summary = results["summary"]
    measured = [a for a in METRIC_ATTRIBUTES if summary.get(a)]
    n_per_prompt = int(results.get("images_per_prompt") or config.get("images_per_prompt") or 0)
    records = read_records(root)
    charts = _charts(tuple(measured)) if measured else None
    prompts = [
        _prompt(p, measured, records.get(str(p["id"]), []), n_per_prompt, charts) for p in results["prompts"]
    ]
    _fill_thumbnails(root, prompts)
    return {
        "meta": {
            "model": results.get("model", config.get("model")),
            "suite": results.get("suite", config.get("suite")),
            "perception": results.get("perception", config.get("perception")),
            "images_per_prompt": n_per_prompt,
            "seed": results.get("seed", config.get("seed")),
            "sampling": results.get("sampling", config.get("sampling")) or {},
            "world_spec": config.get("world_spec"),
            "replicates": results.get("bootstrap_replicates"),
            "started": manifest.get("started"),
            "finished": manifest.get("finished"),
            "version": (manifest.get("versions") or {}).get("fairgen"),
        },
        "summary": summary,
        "attributes": list(METRIC_ATTRIBUTES),
        "measured": measured,
        "thumb_attributes": [a for a in ATTRIBUTES if a in measured],
        "colours": CLASS_COLOURS,
        "prompts": prompts,
        "floor_160": noise_floor(160, 2),
        "floor_run": noise_floor(n_per_prompt, 2) if n_per_prompt else None,
        "names": ATTRIBUTE_NAMES,
        "corrected": _corrected(results),
        "warnings": folder_warnings(results),
        "effective_sampling": results.get("effective_sampling"),
        "unreadable": summary.get("n_unreadable", 0),
        "target": results.get("target") or {"name": "uniform"},
        "quality": (results.get("quality") or {}).get("suite"),
        "quality_model": (results.get("quality") or {}).get("model"),
    }


# The chart figures of this thread, by measured attributes: setting one up (axes, ticks, legend, the first
# draw) takes ~0.2 s, a fifth of a small audit's report, and a fix run renders dozens of reports. A kept
# figure draws the same bytes (png_uri restores its background and redraws every changing artist), and
# one per thread keeps two reports rendered at once from drawing on one figure.
_CHARTS = threading.local()


def _charts(measured: tuple[str, ...]) -> ShareCharts:
    """This thread's ShareCharts for `measured`, made on first use."""
    kept = _CHARTS.__dict__.setdefault("by_attributes", {})
    if measured not in kept:
        kept[measured] = ShareCharts(list(measured))
    return kept[measured]


def _corrected(results: Mapping[str, Any]) -> dict[str, Any] | None:
    """The raw-versus-corrected section of a calibrated audit (None otherwise): summary rows, per-prompt rows,
    detection rates per calibration block and warnings where they differ across groups."""
    calibration = results.get("calibration")
    if not calibration:
        return None
    summary = results["summary"]
    attrs = [a for a in METRIC_ATTRIBUTES if (summary.get(a) or {}).get("rd_corrected")]
    gaps = summary.get("detection_rate_gap") or {}
    return {
        "calibration": calibration,
        "attributes": attrs,
        "summary": [(a, summary[a]["rd"], summary[a]["rd_corrected"]) for a in attrs],
        "prompts": [
            {"id": str(p["id"]), "text": p.get("text", ""),
             "rd": {a: (p["rd"][a], p["corrected"][a]["rd"], p["corrected"][a]["rd_ci95"]) for a in attrs}}
            for p in results["prompts"]
        ],
        "detection": gaps,
        "warnings": [(ATTRIBUTE_NAMES.get(b, b), g) for b, g in gaps.items()
                     if g["p_value"] < DETECTION_WARN_P],
        "warn_p": DETECTION_WARN_P,
    }


def _prompt(
    p: Mapping[str, Any],
    measured: list[str],
    records: list[dict[str, Any]],
    n_per_prompt: int,
    charts: ShareCharts | None,
) -> dict[str, Any]:
    """One prompt's section: numbers, chart and the (not yet rendered) thumbnails of its grid."""
    planned = [r for r in records if not n_per_prompt or int(r["sample"]) < n_per_prompt]
    rds, ci95, floors = (p.get(key) or {} for key in ("rd", "rd_ci95", "noise_floor"))
    return {
        "id": str(p["id"]),
        "text": p.get("text", ""),
        "n_images": p.get("n_images", 0),
        "n_faces": p.get("n_faces", 0),
        "n_unreadable": p.get("n_unreadable", 0),
        "fidelity": p.get("fidelity"),
        "rd": {a: (rds.get(a), ci95.get(a), floors.get(a)) for a in measured},  # (rd, ci95, noise floor)
        "chart": charts.png_uri(p.get("counts") or {}) if charts else None,
        "n_records": len(planned),
        "n_shown": min(len(planned), MAX_THUMBS),
        # The first samples by index: a random subset, since every image's seed is a hash.
        "groups": _groups(str(p["id"]), planned[:MAX_THUMBS]),
    }


def _groups(prompt_id: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The grid in Shen et al.'s order: one group per predicted class of the first measured attribute
    (gender, else race, else age), then images without a face, then unreadable ones. Within a group,
    thumbnails are sorted by the other attributes' classes, surest first."""
    groups: dict[tuple, dict[str, Any]] = {}
    for rec in sorted(records, key=_grid_order):
        key = _grid_order(rec)
        if key[0] == 0:
            title = next(iter(_labels(rec).values()), ("face", 0.0))[0]
        else:
            title = "unreadable" if key[0] == 2 else "no face"
        group = groups.setdefault((key[0], title), {"title": title, "thumbs": []})
        group["thumbs"].append(_thumb(prompt_id, rec))
    return list(groups.values())


def _labels(rec: Mapping[str, Any]) -> dict[str, tuple[str, float]]:
    """{attribute: (predicted class, its probability)} of a record, for the attributes it has."""
    out = {}
    probs = rec.get("probs") or {}
    label = rec.get("label") or {}
    for attr, classes in ATTRIBUTES.items():
        p = probs.get(attr)
        if not p:
            continue
        name = label.get(attr) if label.get(attr) in classes else max(classes, key=lambda c: p.get(c, 0.0))
        out[attr] = (name, float(p.get(name, 0.0)))
    return out


def _grid_order(rec: Mapping[str, Any]) -> tuple:
    """Sort key of Shen et al.'s grids: by predicted class (gender, then race, then age), surest first
    within a class; images without a face after all faces, unreadable ones last."""
    if rec.get("error"):
        return (2, int(rec["sample"]))
    if not rec.get("face"):
        return (1, int(rec["sample"]))
    labels = _labels(rec)
    classes = tuple(ATTRIBUTES[a].index(labels[a][0]) if a in labels else -1 for a in ATTRIBUTES)
    first = next(iter(labels.values()), ("", 0.0))
    return (0, *classes, -first[1], int(rec["sample"]))


def _thumb(prompt_id: str, rec: Mapping[str, Any]) -> dict[str, Any]:
    sample = int(rec["sample"])
    labels = _labels(rec) if rec.get("face") else {}
    tooltip = [f"sample {sample}"] + [f"{a} {c} {fmt_num(conf, 2)}" for a, (c, conf) in labels.items()]
    if rec.get("error"):
        tooltip.append(f"unreadable: {rec['error']}")
    elif not rec.get("face"):
        tooltip.append("no face detected")
    # Generated images lie in the run directory; a folder: audit's images stay where the user keeps them.
    source = rec.get("source")
    path = Path(source) if source else Path("images") / prompt_id / f"{sample:05d}.png"
    return {
        "path": path,
        # a folder: audit records absolute files; older runs' relative ones cannot be resolved from here
        "href": path.as_uri() if path.is_absolute() else path.as_posix(),
        "sample": sample,
        "face": bool(rec.get("face")),
        "error": rec.get("error"),
        "box": rec.get("box"),
        "bars": [(a, c, round(100 * conf), CLASS_COLOURS[a][c]) for a, (c, conf) in labels.items()],
        "title": " · ".join(tooltip),
        "image": None,  # filled by _fill_thumbnails, with "upscaled"
        "upscaled": False,
    }


def _fill_thumbnails(root: Path, prompts: Iterable[dict[str, Any]]) -> None:
    """Make every grid's thumbnails on a few threads (Pillow releases the GIL while decoding and resizing)."""
    # An image perception could not read gets the placeholder, whatever is on disk now.
    thumbs = [t for p in prompts for g in p["groups"] for t in g["thumbs"] if not t["error"]]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        images = pool.map(lambda t: thumbnail(root / t["path"], t["box"] if t["face"] else None), thumbs)
        for t, image in zip(thumbs, images):
            t["image"] = image
            t["upscaled"] = image is not None and image.size < THUMB_PX
