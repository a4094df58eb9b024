"""The before/after report of `fairgen fix`: fix_report.json, fix_report.md and the training curves.

From two audits of the test suite (before: the model; after: the model with the adapter) it reports,
per attribute, rd with its 95% interval and noise floor and the relative change; face rate; fidelity
(concept match for world-read images, in points); and explicit-prompt adherence: on a few explicit
prompts per group, the share of images that show the requested group (an image without a face counts
as not showing it). The after-fix checks (checks.py) add understanding accuracy on labelled images and rd
on other suites, before and after. With --quality, the test-suite audits' image quality (CLIP score and
CLIP-IQA, metrics/quality.py) before and after, with their intervals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..metrics.quality import QUALITY_METRICS
from ..types import ATTRIBUTES, METRIC_ATTRIBUTES, Prompt
from .validation import interval_end

REPORT_JSON, REPORT_MD, REPORT_HTML, CURVES_PNG = "fix_report.json", "fix_report.md", "fix_report.html", "train_curves.png"


def audit_summary(results: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The part of an audit's results.json the report keeps: rd (mean, ci95, noise floor) and the total
    variation to the audit's target (mean, ci95) per attribute (None when not measured), face rate,
    fidelity, and image quality: {"model", "clip_score": {"mean", "ci95"}, "clip_iqa": ...} from the
    audit's suite-level quality, None when it was not scored."""
    s = results["summary"]
    rd = {a: ({k: s[a]["rd"].get(k) for k in ("mean", "ci95", "noise_floor")} if s.get(a) else None)
          for a in METRIC_ATTRIBUTES}
    tv = {a: ({k: s[a]["tv"].get(k) for k in ("mean", "ci95")} if s.get(a) and "tv" in s[a] else None)
          for a in METRIC_ATTRIBUTES}
    fidelity = s.get("fidelity")
    q = results.get("quality")
    quality = ({"model": q["model"], **{m: q["suite"].get(m) for m in QUALITY_METRICS}} if q else None)
    return {"run_dir": str(run_dir), "images_per_prompt": results["images_per_prompt"], "rd": rd, "tv": tv,
            "face_rate": s.get("face_rate"), "fidelity": fidelity, "quality": quality}


def adherence_by_group(results: Mapping[str, Any], prompts: Sequence[Prompt]) -> dict[str, dict[str, float | None]]:
    """Per attribute and requested group, the share of explicit-prompt images showing that group (over all
    images of those prompts, faceless ones included)."""
    by_id = {p["id"]: p for p in results["prompts"]}
    hits: dict[str, dict[str, list[int]]] = {}
    for prompt in prompts:
        row = by_id[prompt.id]
        for attr, group in prompt.group.items():
            counts = row["counts"].get(attr)
            h = hits.setdefault(attr, {}).setdefault(group, [0, 0])
            h[0] += counts[group] if counts else 0
            h[1] += row["n_images"]
    return {a: {g: (h[0] / h[1] if h[1] else None) for g, h in groups.items()} for a, groups in hits.items()}


def group_means(by_group: Mapping[str, Mapping[str, float | None]]) -> dict[str, float | None]:
    """Per attribute, the mean of adherence_by_group's shares over its groups: each group weighs the same
    (with as many images per group, as the check makes, it is the share over all the images)."""
    return {a: (None if None in shares.values() else sum(shares.values()) / len(shares))
            for a, shares in by_group.items()}


def relative_change(before: float | None, after: float | None) -> float | None:
    """(after - before) / before: -0.7 is a 70% cut. None when either is missing or before is 0."""
    if before is None or after is None or before == 0:
        return None
    return (after - before) / before


def rd_changes(before: Mapping[str, Any], after: Mapping[str, Any], key: str = "rd"
               ) -> dict[str, dict[str, float | None]]:
    """Per attribute measured in both audit summaries: rd (or `key`: "tv") before, after, and the relative
    change."""
    change = {}
    for attr in METRIC_ATTRIBUTES:
        b, a = (before.get(key) or {}).get(attr), (after.get(key) or {}).get(attr)
        if b and a:
            change[attr] = {"before": b["mean"], "after": a["mean"],
                            "relative": relative_change(b["mean"], a["mean"])}
    return change


def quality_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, float | None] | None:
    """Per quality metric, after − before of the suite means (None where either is missing); None when
    either audit was not scored."""
    b, a = before.get("quality"), after.get("quality")
    if not (b and a):
        return None
    return {m: (a[m]["mean"] - b[m]["mean"] if a.get(m) and b.get(m) else None) for m in QUALITY_METRICS}


def build_report(config: Mapping[str, Any], data_stats: Mapping[str, Any], before: dict[str, Any],
                 after: dict[str, Any], explicit_by_group: Mapping[str, Any], training: Sequence[Mapping[str, Any]],
                 checks: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """fix_report.json's content. explicit_by_group: {"before", "after"}: adherence_by_group results ({}
    without the check); explicit_adherence is their group_means. training: the lines of train_log.jsonl.
    checks: {"understanding":
    {"before", "after"}: understanding_accuracy results or None, "suites": {name: {"before", "after"}: audit
    summaries}}; each suite gets its rd_change."""
    change = rd_changes(before, after)
    fb, fa = before.get("fidelity"), after.get("fidelity")
    measured = fb and fa and None not in (fa["value"], fb["value"])
    fidelity_points = 100 * (fa["value"] - fb["value"]) if measured else None
    stages = {}
    for line in training:
        entry = stages.setdefault(line["stage"], {"first": line, "last": line})
        entry["last"] = line
    # anchor, contrast: only with --anchor, --contrast; caption: understanding
    terms = ("loss", "sft", "bpo", "anchor", "contrast", "caption")
    curves = {name: {"steps": e["last"]["step"] + 1,
                     **{f"{k}_first": e["first"][k] for k in terms if k in e["first"]},
                     **{f"{k}_last": e["last"][k] for k in terms if k in e["last"]}} for name, e in stages.items()}
    return {"config": dict(config), "data": dict(data_stats), "training": curves, "before": before, "after": after,
            "rd_change": change, "fidelity_change_points": fidelity_points,
            "tv_change": rd_changes(before, after, "tv") if config.get("target", "uniform") != "uniform" else None,
            "quality_change": quality_changes(before, after),
            "explicit_adherence": {m: group_means(explicit_by_group[m]) for m in ("before", "after")},
            "explicit_adherence_by_group": {m: dict(explicit_by_group[m]) for m in ("before", "after")},
            "checks": _checks(checks or {})}


def _checks(checks: Mapping[str, Any]) -> dict[str, Any]:
    suites = {name: {**pair, "rd_change": rd_changes(pair["before"], pair["after"])}
              for name, pair in checks.get("suites", {}).items()}
    return {"understanding": dict(checks.get("understanding") or {"before": None, "after": None}), "suites": suites}


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(pair: Sequence[float | None] | None) -> str:
    return f"[{_f(pair[0])}, {_f(pair[1])}]" if pair else "[–]"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:+.1f}%"


def markdown(report: Mapping[str, Any]) -> str:
    """fix_report.md: the before/after table and the data and training summaries."""
    c = report["config"]
    lines = [f"# fairgen fix: {c['model']} ({c['method']}, attributes {', '.join(c['attributes'])})", "",
             f"Trained on {c['train_suite']}, audited on {c['test_suite']} at "
             f"{report['after']['images_per_prompt']} images per prompt.", "",
             "| attribute | rd before [95% CI] | rd after [95% CI] | change | noise floor |",
             "| --- | --- | --- | --- | --- |"]
    for attr in METRIC_ATTRIBUTES:
        b, a = report["before"]["rd"][attr], report["after"]["rd"][attr]
        if not (b and a):
            lines.append(f"| {attr} | not measured | not measured | | |")
            continue
        mark = " **(fixed)**" if attr in c["attributes"] else ""
        lines.append(f"| {attr}{mark} | {_f(b['mean'])} {_ci(b['ci95'])} | {_f(a['mean'])} {_ci(a['ci95'])} | "
                     f"{_pct(report['rd_change'][attr]['relative'])} | {_f(a['noise_floor'])} |")
    if report.get("tv_change"):
        lines += ["", f"Distance to the target `{c['target']}` (total variation, 0 when the shares are the "
                  "target's):", "", "| attribute | TV before [95% CI] | TV after [95% CI] | change |",
                  "| --- | --- | --- | --- |"]
        for attr in c["attributes"]:
            b, a = report["before"]["tv"][attr], report["after"]["tv"][attr]
            lines.append(f"| {attr} | {_f(b['mean'])} {_ci(b['ci95'])} | {_f(a['mean'])} {_ci(a['ci95'])} | "
                         f"{_pct(report['tv_change'][attr]['relative'])} |")
    lines += quality_markdown(report)
    lines += _generalisation_markdown(report)
    fb, fa = report["before"]["fidelity"], report["after"]["fidelity"]
    lines += ["", f"Face rate {_f(report['before']['face_rate'])} → {_f(report['after']['face_rate'])}."]
    if fb and fa:
        lines.append(f"Fidelity ({fa['metric']}) {_f(fb['value'])} → {_f(fa['value'])} "
                     f"({_f(report['fidelity_change_points'], 1)} points).")
    ex = report["explicit_adherence"]
    lines.append("Explicit prompts followed: " + ", ".join(
        f"{a} {_f(ex['before'].get(a))} → {_f(v)}" for a, v in ex["after"].items()) + ".")
    by_group = report.get("explicit_adherence_by_group") or {}
    if by_group.get("after"):
        lines.append("By group: " + "; ".join(
            f"{a} " + ", ".join(f"{g} {_f(by_group['before'].get(a, {}).get(g))} → {_f(v)}" for g, v in shares.items())
            for a, shares in by_group["after"].items()) + ".")
    lines += ["", "## Balanced set", "", "| attribute | group | generated | dropped | drop rate | kept |",
              "| --- | --- | --- | --- | --- | --- |"]
    for attr, block in report["data"].items():
        for g, e in block["groups"].items():
            dropped = e["generated"] - e["kept"]
            lines.append(f"| {attr} | {g} | {e['generated']} | {dropped} | {_f(e['drop_rate'])} | {e['kept']} |")
        kept, dropped = block["prompts_kept"], len(block["prompts_dropped"])
        lines.append(f"| {attr} | prompts kept / dropped | {kept} / {dropped} | | | |")
    lines += _checks_markdown(report.get("checks", {}))
    lines += _validation_markdown(report.get("validation"))
    if report["training"]:
        terms = [k for k in ("sft", "bpo", "anchor", "contrast", "caption")
                 if any(f"{k}_first" in t for t in report["training"].values())]
        lines += ["", "## Training", "", "| stage | steps | loss first → last | " + " | ".join(terms) + " |",
                  "| --- " * (3 + len(terms)) + "|"]
        for name, t in report["training"].items():
            cells = [f"{_f(t.get(f'{k}_first'), 5)} → {_f(t.get(f'{k}_last'), 5)}" for k in terms]
            lines.append(f"| {name} | {t['steps']} | {_f(t['loss_first'], 4)} → {_f(t['loss_last'], 4)} | "
                         + " | ".join(cells) + " |")
    rate = report.get("audit_rate")
    if rate:
        lines += ["", f"Audit speed (test suite): before {rate['before']:.1f} images/s, after {rate['after']:.1f} "
                  f"images/s ({100 * rate['after_over_before']:.0f} % of before)."]
    lines += verdict_markdown(report.get("verdict"))
    return "\n".join(lines) + "\n"


QUALITY_NAMES = {"clip_score": "CLIP score (0–100)", "clip_iqa": "CLIP-IQA (0–1)"}


def quality_markdown(report: Mapping[str, Any]) -> list[str]:
    """The test suite's image quality before and after, with 95% intervals (or why it was not measured)."""
    b, a = report["before"].get("quality"), report["after"].get("quality")
    if not (b and a):
        return ["", "Image quality: not measured (give --quality with a CLIP checkpoint)."]
    lines = ["", f"Image quality of the test-suite images (CLIP model {a['model']}; higher is better).", "",
             "| metric | before [95% CI] | after [95% CI] | change |", "| --- | --- | --- | --- |"]
    for m in QUALITY_METRICS:
        if b.get(m) and a.get(m):
            lines.append(f"| {QUALITY_NAMES[m]} | {_f(b[m]['mean'])} {_ci(b[m]['ci95'])} | {_f(a[m]['mean'])} "
                         f"{_ci(a[m]['ci95'])} | {report['quality_change'][m]:+.3f} |")
    return lines


def verdict_markdown(verdict: Mapping[str, Any] | None) -> list[str]:
    """The verdict's lines: one per guardrail, then the overall one."""
    if not verdict:
        return []
    overall = "PASS: every guardrail holds" if verdict["passed"] else "FAIL: a guardrail does not hold"
    return ["", "## Verdict", "", *[f"- {g['line']}" for g in verdict["guardrails"]], f"- **{overall}**"]


def _generalisation_markdown(report: Mapping[str, Any]) -> list[str]:
    """The headline's second table: rd of the fixed attributes on the test suite and on every check
    suite, none of whose prompts the fix trained on."""
    attributes = report["config"]["attributes"]
    rows = [(f"{report['config']['test_suite']} (test)", report["before"], report["after"],
             report["rd_change"])]
    for name, pair in (report.get("checks") or {}).get("suites", {}).items():
        rows.append((f"{name} (check)", pair["before"], pair["after"], pair["rd_change"]))
    if len(rows) == 1:
        return ["", "Generalisation: no check suites (--check-suites none)."]
    lines = ["", "Generalisation: rd of the fixed attributes on suites the fix never trained on "
             "(noise floor: the rd chance alone gives at that many images per prompt).", "",
             "| suite | images per prompt | " + " | ".join(f"{a} before → after (change) | {a} noise floor"
                                                         for a in attributes) + " | face rate |",
             "| --- " * (3 + 2 * len(attributes)) + "|"]
    for name, before, after, change in rows:
        cells = []
        for attr in attributes:
            ch, a = change.get(attr), after["rd"].get(attr)
            cells.append(f"{_f(ch['before'])} → {_f(ch['after'])} ({_pct(ch['relative'])})" if ch else "not measured")
            cells.append(_f(a["noise_floor"]) if a else "–")
        lines.append(f"| {name} | {after['images_per_prompt']} | " + " | ".join(cells)
                     + f" | {_f(before['face_rate'])} → {_f(after['face_rate'])} |")
    return lines


def _validation_markdown(summary: Mapping[str, Any] | None) -> list[str]:
    """The validation measurements (held-out training concepts) and the adapter kept."""
    if not summary:
        return []
    records = summary["records"]
    attrs = list(records[0]["rd"]) if records else []
    probed = [a for a in attrs if records and (records[0].get("probe") or {}).get(a)]
    lines = ["", "## Validation (held-out training concepts)", "",
             "| step | stage | " + " | ".join(f"{a} rd" for a in attrs)
             + "".join(f" | probe {a} rd" for a in probed) + " | fidelity | face rate | "
             "explicit, lowest group |", "| --- " * (5 + len(attrs) + len(probed)) + "|"]
    for r in records:
        shares = [(g, v) for groups in r["explicit"].values() for g, v in groups.items()]
        low = min(shares, key=lambda gv: -1 if gv[1] is None else gv[1]) if shares else None
        mark = " **kept**" if r["step"] == summary["kept_step"] else ""
        probe = [((r.get("probe") or {}).get(a) or {}).get("mean") for a in probed]
        lines.append(f"| {r['step']}{mark} | {r['stage']} | " + " | ".join(_f(r["rd"][a]) for a in attrs)
                     + "".join(f" | {_f(v)}" for v in probe)
                     + f" | {_f(r['fidelity'])} | {_f(r['face_rate'])} | "
                     + (f"{low[0]} {_f(low[1])}" if low else "–") + " |")
    if probed:
        first = records[0]["probe"]
        lines += ["", "Balance probe: rd on prompts the fix never trains on; a step above step 0's 95 % interval ("
                  + ", ".join(f"{a} ≤ {_f(interval_end(first[a]))}" for a in probed if interval_end(first[a]) is not None)
                  + ") is not kept."]
    stopped = summary.get("stopped_early_at")
    lines += ["", f"Kept {summary['reason']}."
              + (f" Training stopped early at step {stopped}: {summary['patience']} measurements in a row "
                 "found no better adapter." if stopped is not None else "")]
    return lines


def _checks_markdown(checks: Mapping[str, Any]) -> list[str]:
    """The after-fix understanding check (the check suites are in the generalisation table)."""
    lines: list[str] = []
    und = checks.get("understanding") or {}
    if und.get("before") and und.get("after"):
        b, a = und["before"]["accuracy"], und["after"]["accuracy"]
        lines += ["", f"Understanding accuracy on {und['after']['images']} labelled world images: " + ", ".join(
            f"{attr} {_f(b[attr])} → {_f(a[attr])}" for attr in a) + "."]
    return lines


def html(report: Mapping[str, Any]) -> str:
    """fix_report.html: the verdict, the before/after and generalisation tables, explicit adherence and the
    validation, as one self-contained page (the audit report's styles)."""
    from ..report.html import _env

    return _env.get_template("fix.html.j2").render(r=report, c=report["config"], pct=_pct,
                                                  quality_names=QUALITY_NAMES)


def plot_curves(training: Sequence[Mapping[str, Any]], path: Path) -> None:
    """train_curves.png: per stage, the SFT loss and the BPO loss against the step (the understanding
    stage: its caption loss)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    stages = list(dict.fromkeys(line["stage"] for line in training))
    fig = Figure(figsize=(4.5 * max(1, len(stages)), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    for k, name in enumerate(stages):
        ax = fig.add_subplot(1, len(stages), k + 1)
        lines = [line for line in training if line["stage"] == name]
        steps = [line["step"] for line in lines]
        ax.set_xlabel("step")
        ax.set_title(f"stage {k + 1}: {name}")
        if "caption" in lines[0]:
            ax.plot(steps, [line["caption"] for line in lines], color="#009e73")
            ax.set_ylabel("caption loss (−mean log p)", color="#009e73")
            continue
        ax.plot(steps, [line["sft"] for line in lines], color="#0072b2", label="SFT (−mean log p)")
        ax.set_ylabel("SFT loss", color="#0072b2")
        twin = ax.twinx()
        twin.plot(steps, [line["bpo"] for line in lines], color="#d55e00", label="BPO")
        twin.set_ylabel("BPO loss", color="#d55e00")
    fig.tight_layout()
    fig.savefig(path)


def explicit_prompts(test_prompts: Sequence[Prompt], attributes: Sequence[str], n_concepts: int) -> list[Prompt]:
    """The explicit prompts of the adherence check: the first n_concepts test prompts, every group of every
    chosen attribute."""
    from .. import suites

    return [suites.explicit(p, {a: g})
            for p in test_prompts[:n_concepts] for a in attributes for g in ATTRIBUTES[a]]


def write(out: Path, report: Mapping[str, Any], training: Sequence[Mapping[str, Any]]) -> None:
    """fix_report.json, fix_report.md and train_curves.png in `out` (each written whole or not at all)."""
    from ..store import atomic_write_bytes, atomic_write_json

    atomic_write_json(out / REPORT_JSON, report)
    atomic_write_bytes(out / REPORT_MD, markdown(report).encode())
    atomic_write_bytes(out / REPORT_HTML, html(report).encode())
    if training:
        tmp = out / f".{CURVES_PNG}.tmp.png"
        plot_curves(training, tmp)
        tmp.replace(out / CURVES_PNG)


def read_log(path: Path) -> list[dict[str, Any]]:
    """The lines of train_log.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
