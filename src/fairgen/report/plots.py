"""Pictures for the HTML report: class-share bar charts (matplotlib) and image thumbnails (Pillow).

Everything is returned as `data:` URIs so the report stays one self-contained file. Charts are blitted:
the axes, ticks and titles (nearly all of matplotlib's drawing time) are drawn once per report, and each
prompt only draws its bars over a copy of that background — about 5 ms a chart instead of 150 ms.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image, UnidentifiedImageError

from ..types import ATTRIBUTES, JOINT, METRIC_ATTRIBUTES

# One colour per class, shared by the charts, the thumbnail bars and the legend. Okabe–Ito / Tol
# colour-blind-safe hues, deliberately unrelated to skin tones or gender stereotypes.
CLASS_COLOURS: dict[str, dict[str, str]] = {
    "gender": {"female": "#882255", "male": "#44aa99"},
    "race": {"white": "#e69f00", "black": "#56b4e9", "asian": "#009e73", "indian": "#cc79a7"},
    "age": {"young": "#0072b2", "old": "#d55e00"},
}
# Longest side of a thumbnail, and its JPEG quality: a face photo then takes ~2 KB, so 50 prompts × 64
# thumbnails stay under 10 MB of HTML (96 px would be ~12 MB).
THUMB_PX = 80
JPEG_QUALITY = 60
_CHART_DPI = 80
_SHORT = {"female": "F", "male": "M", "white": "W", "black": "B", "asian": "A", "indian": "I"}


def data_uri(data: bytes, mime: str) -> str:
    """Bytes as a base64 `data:` URI."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class ShareCharts:
    """One reusable figure: a bar chart of class shares for each measured attribute of a prompt.

    attributes: the measured attributes in display order (keys of METRIC_ATTRIBUTES). The joint
    gender×race chart colours each bar by race and hatches the male half.
    """

    def __init__(self, attributes: Sequence[str]):
        self.attributes = list(attributes)
        widths = [len(METRIC_ATTRIBUTES[a]) + 1 for a in self.attributes]
        self.figure = Figure(figsize=(max(3.6, 0.42 * sum(widths) + 0.8), 2.1), dpi=_CHART_DPI)
        # The Agg canvas is attached to this figure only: no pyplot, no global backend switch, so a
        # notebook or GUI that imports fairgen keeps its own backend.
        self.canvas = FigureCanvasAgg(self.figure)
        axes = self.figure.subplots(1, len(widths), gridspec_kw={"width_ratios": widths}, squeeze=False)[0]
        self.layers: dict[str, list] = {}  # per attribute: what changes between prompts, in drawing order
        for ax, attr in zip(axes, self.attributes):
            classes = METRIC_ATTRIBUTES[attr]
            bars = ax.bar(range(len(classes)), [0.0] * len(classes), color=_colours(attr), edgecolor="white")
            if attr == JOINT:
                for bar, name in zip(bars, classes):
                    bar.set_hatch("///" if name.startswith("male") else "")
            balanced = ax.axhline(1 / len(classes), color="#555555", lw=0.8, ls="--")  # over the bars
            empty = ax.text(0.5, 0.5, "no faces", transform=ax.transAxes, ha="center", fontsize=8)
            ax.set_ylim(0, 1)
            ax.set_xticks(range(len(classes)), [_tick(attr, c) for c in classes], fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            ax.set_title(attr.replace("_x_", " × "), fontsize=8)
            ax.spines[["top", "right"]].set_visible(False)
            self.layers[attr] = [ax, list(bars), balanced, empty]
            for artist in [*bars, balanced, empty]:
                artist.set_animated(True)  # left out of the background, drawn per prompt
        # The legend says what the dashed line and the hatching mean; the left margin is set in inches so the
        # first panel's y labels fit however few panels there are (age-gender measures two).
        handles = [Line2D([], [], color="#555555", lw=0.8, ls="--", label="share if balanced")]
        if JOINT in self.attributes:
            handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="///", label="male (gender × race)"))
        self.figure.legend(handles=handles, loc="upper right", ncol=len(handles), fontsize=6, frameon=False,
                           handlelength=1.8, borderaxespad=0.1)
        width = self.figure.get_figwidth()
        self.figure.subplots_adjust(left=min(0.3, 0.34 / width), right=0.99, bottom=0.16, top=0.78,
                                    wspace=max(0.35, 0.3 * len(widths) / width))
        self.canvas.draw()
        self.background = self.canvas.copy_from_bbox(self.figure.bbox)

    def png_uri(self, counts: Mapping[str, Mapping[str, int]]) -> str:
        """The chart of one prompt's counts ({attribute: {class: count}}) as a PNG data URI."""
        self.canvas.restore_region(self.background)
        for attr in self.attributes:
            ax, bars, balanced, empty = self.layers[attr]
            values = [counts.get(attr, {}).get(c, 0) for c in METRIC_ATTRIBUTES[attr]]
            total = sum(values)
            for bar, v in zip(bars, values):
                bar.set_height(v / total if total else 0.0)
                ax.draw_artist(bar)
            ax.draw_artist(balanced)
            if total == 0:
                ax.draw_artist(empty)
        rgba = Image.frombuffer("RGBA", self.canvas.get_width_height(), self.canvas.buffer_rgba())
        buf = io.BytesIO()
        # A chart has a handful of colours: a 64-colour palette keeps it sharp at a fraction of RGB's size.
        palette = rgba.convert("RGB").quantize(64, method=Image.Quantize.FASTOCTREE)
        palette.save(buf, format="PNG")
        return data_uri(buf.getvalue(), "image/png")


def _colours(attr: str) -> list[str]:
    if attr == JOINT:
        return [CLASS_COLOURS["race"][c.split("_", 1)[1]] for c in METRIC_ATTRIBUTES[JOINT]]
    return [CLASS_COLOURS[attr][c] for c in ATTRIBUTES[attr]]


def _tick(attr: str, name: str) -> str:
    """Axis label of a class; joint classes are abbreviated ("F·A") so eight fit under their bars."""
    if attr == JOINT:
        g, r = name.split("_", 1)
        return f"{_SHORT[g]}·{_SHORT[r]}"
    return name


@dataclass
class Thumbnail:
    """A thumbnail ready for the page: its data URI, and the face box in percent of the image's sides."""

    uri: str
    size: int  # longest side of the thumbnail, pixels
    box_pct: tuple[float, float, float, float] | None  # left, top, width, height


def thumbnail(path: Path, box: Sequence[float] | None, max_px: int = THUMB_PX) -> Thumbnail | None:
    """A JPEG thumbnail (longest side ≤ max_px, never enlarged) of the image at path; None if unreadable.

    box: the face box (x0, y0, x1, y1) in pixels of the full image; it is returned in percent so the page
    can draw it over the thumbnail at any display size.
    """
    try:
        with Image.open(path) as im:
            full = im.size  # before draft(), which shrinks a JPEG's size
            im.draft("RGB", (max_px, max_px))  # JPEG sources decode at reduced size: much faster
            im = im.convert("RGB")
            im.thumbnail((max_px, max_px), Image.Resampling.LANCZOS, reducing_gap=2.0)
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    except (OSError, UnidentifiedImageError, ValueError):  # missing, truncated or not an image
        return None
    return Thumbnail(data_uri(buf.getvalue(), "image/jpeg"), max(im.size), _box_percent(box, full))


def _box_percent(box: Sequence[float] | None, size: tuple[int, int]) -> tuple[float, ...] | None:
    """(x0, y0, x1, y1) pixels -> (left, top, width, height) percent, clipped to the image."""
    if not box or len(box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        return None
    w, h = size
    x0, y0 = max(0.0, box[0] / w), max(0.0, box[1] / h)
    x1, y1 = min(1.0, box[2] / w), min(1.0, box[3] / h)
    if x1 <= x0 or y1 <= y0:
        return None
    return (round(100 * x0, 1), round(100 * y0, 1), round(100 * (x1 - x0), 1), round(100 * (y1 - y0), 1))
