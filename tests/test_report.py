"""report.html on a real world run: content, escaping, grids, and rendering in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageStat
from typer.testing import CliRunner

import fairgen
from fairgen.report import render_report
from fairgen.report.cli import compare_command, report_command
from fairgen.report.html import MAX_THUMBS
from fairgen.types import FairgenError

EVIL = "A <script>alert(1)</script> nurse & co"
CONCEPTS = ["nurse", "pilot", "teacher", "farmer", "chef", "judge"]
N_IMAGES = 70  # above MAX_THUMBS, so the grid cap is exercised
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished world run over 6 prompts, one of them with markup in its text."""
    root = tmp_path_factory.mktemp("report")
    prompts = [{"id": c, "text": f"A photo of the face of a {c}, a person", "concept": c} for c in CONCEPTS]
    prompts[0]["text"] = EVIL
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"prompts": prompts}))
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({
        "default": {"gender": {"female": 0.5, "male": 0.5},
                    "race": {"white": 0.25, "black": 0.25, "asian": 0.25, "indian": 0.25},
                    "age": {"young": 0.5, "old": 0.5}},
        "concepts": {"nurse": {"gender": {"female": 0.9, "male": 0.1}},
                     "pilot": {"gender": {"female": 0.1, "male": 0.9}}},
    }))
    out = root / "run"
    fairgen.audit(model="world", world_spec=spec, suite=str(suite), images_per_prompt=N_IMAGES, out=out)
    return out


@pytest.fixture(scope="module")
def html(run) -> str:
    return (run / "report.html").read_text(encoding="utf-8")


class Page(HTMLParser):
    """Tags, attributes and visible text of an HTML document, for structural checks."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        """Attributes of every `tag` element (having class `cls`, if given)."""
        matches = [a for t, a in self.tags if t == tag]
        return [a for a in matches if cls is None or cls in (a.get("class") or "").split()]


def test_audit_writes_a_self_contained_report(run, html):
    page = Page(html)
    assert not page.find("script") and "<script" not in html.lower()
    assert not page.find("link"), "no external stylesheets"
    assert all(img["src"].startswith("data:image/") for img in page.find("img"))
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html), "nothing fetched from elsewhere"
    assert "@import" not in html and "url(" not in html
    assert len(page.find("img", "chart")) == len(CONCEPTS)
    assert (run / "report.html").stat().st_size < 2_000_000


def test_header_summary_and_limitations(run, html):
    results = json.loads((run / "results.json").read_text())
    text = " ".join(" ".join(Page(html).text).split())
    for needle in ("model world", "perception world", f"images / prompt {N_IMAGES}", "seed 0",
                   "face rate 1.000", "fidelity (concept_match)", "How to read this",
                   "Perceived, not self-identified", "--calibration", "0.063 at 160"):
        assert needle in text, needle
    assert f"{results['summary']['gender']['rd']['mean']:.3f}" in text
    lo, hi = results["summary"]["gender"]["rd"]["ci95"]
    assert f"[{lo:.3f}, {hi:.3f}]" in text
    assert f"{results['summary']['gender']['rd']['noise_floor']:.3f}" in text


def test_user_text_is_escaped(html):
    assert "A &lt;script&gt;alert(1)&lt;/script&gt; nurse &amp; co" in html
    assert EVIL in " ".join(Page(html).text)


def test_grids_sorted_capped_and_linked(run, html):
    sections = html.split('<article class="prompt"')[1:]
    assert len(sections) == len(CONCEPTS)
    for section in sections:
        hrefs = re.findall(r'<a class="th[^"]*" href="([^"]+)"', section)
        assert len(hrefs) == MAX_THUMBS
        assert all((run / h).is_file() and re.fullmatch(r"images/[\w-]+/\d{5}\.png", h) for h in hrefs)
        assert section.count('class="box"') == MAX_THUMBS  # every world avatar has a face box
        assert section.count('class="bar"') == 3 * MAX_THUMBS  # gender, race, age
    nurse = sections[0]
    groups = re.findall(r"<h4>(\w[\w ]*) <span", nurse)
    assert groups == ["female", "male"]  # predicted gender, in class order
    first = [b for b in re.findall(r'<i class="bar"><i style="width:(\d+)%;background:(#\w+)"', nurse)][::3]
    assert len(first) == MAX_THUMBS and first[0][1] == "#882255"  # first group: female's colour


def test_no_face_and_unreadable_images_go_last_as_placeholders(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    lines = (copy / "perception.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    nurse = [r for r in recs if r["prompt_id"] == "nurse"]
    nurse[0].update(face=False, box=None, probs={}, label={})
    nurse[1].update(face=False, box=None, probs={}, label={}, error="truncated file")
    (copy / "images" / "nurse" / f"{nurse[2]['sample']:05d}.png").write_bytes(b"not a png")
    (copy / "perception.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"prompt_id": "nur')
    html = render_report(copy).read_text()
    section = html.split('<article class="prompt"')[1]
    assert re.findall(r"<h4>(\w[\w ]*) <span", section)[-2:] == ["no face", "unreadable"]
    assert section.count('class="im ph"') == 2  # the unreadable record and the broken file
    tail = section.split("<h4>no face")[1]
    assert f"images/nurse/{nurse[0]['sample']:05d}.png" in tail.split("<h4>unreadable")[0]


def test_not_measured_is_never_zero(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    results = json.loads((copy / "results.json").read_text())
    for attr in ("race", "gender_x_race"):
        results["summary"][attr] = None
        for p in results["prompts"]:
            for key in ("rd", "rd_ci95", "noise_floor", "kl", "entropy"):
                p[key][attr] = None
            p["counts"].pop(attr)
    (copy / "results.json").write_text(json.dumps(results))
    html = render_report(copy).read_text()
    summary = html.split('<table class="summary">')[1].split("</table>")[0]
    rows = dict(re.findall(r'<th scope="row">([^<]+)</th>\s*(.*?)</tr>', summary, re.S))
    assert "not measured" in rows["race"] and "not measured" in rows["gender × race"]
    assert "0.000" not in rows["race"] and "not measured" not in rows["gender"]


def test_a_kept_chart_figure_draws_what_a_fresh_one_draws(run, tmp_path):
    """Reports reuse their thread's chart figure: a report rendered after another run's (whose prompts
    have other counts, one prompt none at all: the "no faces" label) is byte for byte the report rendered
    with a fresh figure."""
    from fairgen.report import html as report_html

    report_html._CHARTS.__dict__.clear()
    fresh = render_report(run).read_bytes()
    (figure,) = report_html._CHARTS.by_attributes.values()
    other = tmp_path / "run"
    shutil.copytree(run, other)
    results = json.loads((other / "results.json").read_text())
    for i, p in enumerate(results["prompts"]):
        p["counts"] = {a: {c: (0 if i == 0 else (i * 7 + j) % 11) for j, c in enumerate(classes)}
                       for a, classes in p["counts"].items()}
    (other / "results.json").write_text(json.dumps(results))
    assert render_report(other).read_bytes() != fresh
    assert render_report(run).read_bytes() == fresh
    assert list(report_html._CHARTS.by_attributes.values()) == [figure]  # kept, not remade


def test_report_command_rerenders_and_refuses_unfinished_runs(run, tmp_path, capsys):
    (run / "report.html").unlink()
    report_command(run)
    assert (run / "report.html").is_file() and "report:" in capsys.readouterr().out
    with pytest.raises(FairgenError, match="not a directory"):
        report_command(tmp_path / "missing")
    with pytest.raises(FairgenError, match="manifest.json"):
        report_command(tmp_path)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run, unfinished)
    manifest = json.loads((unfinished / "manifest.json").read_text())
    manifest.pop("finished")
    (unfinished / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FairgenError, match="not a finished"):
        report_command(unfinished)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.json").write_text("{")
    with pytest.raises(FairgenError, match="cannot be read"):
        report_command(tmp_path / "broken")


def test_commands_register_on_a_typer_app(run):
    import typer

    app = typer.Typer()
    app.command("report")(report_command)
    app.command("compare")(compare_command)
    runner = CliRunner()
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    result = runner.invoke(app, ["compare", str(run), "--format", "csv"])
    assert result.exit_code == 0 and result.output.startswith("run,")
    assert "--format" in runner.invoke(app, ["compare", "--help"]).output


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (`apt-get install -y chromium`)")
def test_renders_in_headless_chromium(run, tmp_path):
    shot = tmp_path / "report.png"
    url = (run / "report.html").resolve().as_uri()
    _chromium(f"--screenshot={shot}", "--window-size=1280,2000", url, profile=tmp_path / "profile")
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        stats = ImageStat.Stat(im.convert("L"))
        # Not blank: text, tables and pictures give contrast and many colours.
        assert stats.stddev[0] > 20 and len(im.convert("RGB").getcolors(1 << 20)) > 500

    dom = _chromium("--dump-dom", url, profile=tmp_path / "profile").stdout
    page = Page(dom)
    assert not page.find("script")
    assert page.find("table", "summary") and len(page.find("img", "chart")) == len(CONCEPTS)
    assert len(page.find("div", "grid")) >= len(CONCEPTS)
    assert len(page.find("a", "th")) == len(CONCEPTS) * MAX_THUMBS
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom


def test_thumbnail_is_small_and_keeps_the_face_box(tmp_path):
    from fairgen.report.plots import THUMB_PX, thumbnail

    path = tmp_path / "big.jpg"
    Image.new("RGB", (1000, 500), (200, 120, 90)).save(path)
    thumb = thumbnail(path, [100, 50, 300, 250])
    assert thumb.size == THUMB_PX <= 128 and thumb.uri.startswith("data:image/jpeg;base64,")
    assert thumb.box_pct == (10.0, 10.0, 20.0, 40.0)  # in percent of the full image, whatever the decode size
    assert thumbnail(path, [5, 5, 5, 9]).box_pct is None  # an empty box is not drawn
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert thumbnail(tmp_path / "bad.png", None) is None and thumbnail(tmp_path / "none.png", None) is None
