"""locate.html: the locate findings as one self-contained report section (no server, no JavaScript).

Charts are matplotlib PNGs embedded as data URIs (report.plots.data_uri); every interpolated value goes
through jinja2's autoescape; the page shares report.html's stylesheet and Content-Security-Policy.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..report.html import fmt_ci, fmt_num
from ..report.plots import CLASS_COLOURS, data_uri
from ..store import atomic_write_bytes
from ..types import ATTRIBUTES

LOCATE_HTML = "locate.html"
_MARKERS = {"gender": ("o", "#882255"), "race": ("s", "#009e73")}

_env = jinja2.Environment(loader=jinja2.PackageLoader("fairgen.report", "templates"), autoescape=True,
                          trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
_env.filters["num"] = fmt_num
_env.filters["ci"] = fmt_ci


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return data_uri(buf.getvalue(), "image/png")


def alignment_scatter(alignment: Mapping[str, Any]) -> str | None:
    """Per prompt, understanding rd (x) against generation rd net of noise floor (y); the diagonal is
    perfect alignment, points above it are drawn more skewed than stated."""
    series = {a: v["prompts"] for a, v in alignment.items() if v}
    if not series:
        return None
    fig = Figure(figsize=(4.2, 3.6), dpi=90)
    ax = fig.subplots()
    for attr, rows in series.items():
        pts = [(r["understanding_rd"], r["generation_rd_net"]) for r in rows
               if r["understanding_rd"] is not None and r["generation_rd_net"] is not None]
        marker, colour = _MARKERS[attr]
        ax.scatter([x for x, _ in pts], [y for _, y in pts], s=18, marker=marker, color=colour, alpha=0.75, label=attr)
    ax.plot([0, 1], [0, 1], color="#777", lw=0.8, ls="--")
    ax.axhline(0, color="#bbb", lw=0.6)
    ax.set(xlim=(-0.02, 1.0), ylim=(-0.15, 1.0), xlabel="understanding rd (stated, exact)",
           ylabel="generation rd − noise floor (drawn)")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def survival_chart(round_trip: Mapping[str, Any]) -> str | None:
    """Bars of the round-trip survival rate of each group, one panel per attribute."""
    attrs = [a for a in ATTRIBUTES if isinstance(round_trip.get(a), dict) and round_trip[a]["groups"]]
    if not attrs:
        return None
    fig = Figure(figsize=(1.2 + 1.1 * sum(len(round_trip[a]["groups"]) for a in attrs) / 2, 2.4), dpi=90)
    axes = fig.subplots(1, len(attrs), squeeze=False)[0]
    for ax, attr in zip(axes, attrs):
        groups = list(round_trip[attr]["groups"])
        rates = [round_trip[attr]["groups"][g]["rate"] for g in groups]
        ax.bar(range(len(groups)), rates, color=[CLASS_COLOURS[attr][g] for g in groups])
        ax.set_xticks(range(len(groups)), groups, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{attr}: survival", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return _png(fig)


def render_locate(out: str | Path, findings: Mapping[str, Any]) -> Path:
    """Write <out>/locate.html (atomically) from the findings dict; returns its path."""
    tokenizer = findings.get("tokenizer") or {}
    charts = {"alignment": alignment_scatter(findings.get("alignment") or {}),
              "survival": survival_chart(tokenizer.get("round_trip") or {})}
    html = _env.get_template("locate.html.j2").render(f=findings, v=findings["verdicts"], charts=charts,
                                                      attributes=ATTRIBUTES)
    path = Path(out) / LOCATE_HTML
    atomic_write_bytes(path, html.encode("utf-8"))
    return path
