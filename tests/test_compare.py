"""compare_runs on two world runs with different planted specs: the table, its formats, the difference."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

import fairgen
from fairgen.metrics import expected_rd
from fairgen.report import compare_runs
from fairgen.report.compare import latex_escape, paired_difference
from fairgen.types import ATTRIBUTES, FairgenError
from fairgen.world import WorldSpec

CONCEPTS = ["nurse", "pilot", "teacher", "farmer", "chef", "judge"]
N_IMAGES = 100
# Share of female faces planted per concept: run A strongly skewed, run B near balance.
FEMALE = {"spec_a": [0.95, 0.1, 0.85, 0.15, 0.8, 0.2], "spec_b": [0.6, 0.45, 0.55, 0.5, 0.4, 0.6]}


def _spec(path: Path, female: list[float]) -> Path:
    concepts = {c: {"gender": {"female": f, "male": round(1 - f, 6)}} for c, f in zip(CONCEPTS, female)}
    concepts["nurse"]["race"] = {"white": 0.7, "black": 0.1, "asian": 0.1, "indian": 0.1}
    path.write_text(yaml.safe_dump({
        "default": {"gender": {"female": 0.5, "male": 0.5},
                    "race": {"white": 0.25, "black": 0.25, "asian": 0.25, "indian": 0.25},
                    "age": {"young": 0.5, "old": 0.5}},
        "concepts": concepts,
    }))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two finished world runs of the same suite (dirs spec_a, spec_b) with different planted gender skews."""
    root = tmp_path_factory.mktemp("compare")
    suite = root / "suite.yaml"
    suite.write_text(yaml.safe_dump({"prompts": [
        {"id": c, "text": f"A photo of the face of a {c}, a person", "concept": c} for c in CONCEPTS]}))
    out = []
    # Different run seeds: the paired interval assumes independent runs, and two world runs with the same
    # seed share their random draws (same seed, same uniform number behind each avatar's attributes).
    for seed, (name, female) in enumerate(FEMALE.items(), start=1):
        spec = _spec(root / f"{name}.yaml", female)
        fairgen.audit(model="world", world_spec=spec, suite=str(suite), images_per_prompt=N_IMAGES,
                      seed=seed, out=root / name)
        out.append(root / name)
    return out


def _planted_gender_rd(run: Path) -> float:
    """Suite mean of the spec's expected gender rd at each prompt's number of faces."""
    results = json.loads((run / "results.json").read_text())
    spec = WorldSpec.load(run.parent / f"{run.name}.yaml")
    values = []
    for p in results["prompts"]:
        dist = spec.distribution(p["concept"])["gender"]
        values.append(expected_rd([dist.get(c, 0.0) for c in ATTRIBUTES["gender"]], p["n_faces"]))
    return float(np.mean(values))


def _md_rows(table: str) -> list[list[str]]:
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert len({len(r) for r in rows}) == 1, "every markdown row has the same number of cells"
    assert all(re.fullmatch(r":?-+:?", c) for c in rows[1])
    return [rows[0]] + rows[2:]


def _interval(cell: str) -> tuple[float, float, float]:
    m = re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell.replace("−", "-"))
    assert m, cell
    return tuple(float(x) for x in m.groups())


def test_planted_difference_lies_in_the_paired_interval(runs):
    planted = _planted_gender_rd(runs[1]) - _planted_gender_rd(runs[0])
    assert planted < -0.3  # the specs differ a lot: the test is not vacuous
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    diff = paired_difference(*results)
    value, lo, hi = diff["gender"]
    assert lo <= planted <= hi
    assert lo < value < hi and hi - lo < 0.2
    means = [r["summary"]["gender"]["rd"]["mean"] for r in results]
    assert value == pytest.approx(means[1] - means[0])
    # The markdown shows the same numbers, rounded.
    header, *rows = _md_rows(compare_runs(runs, "md"))
    assert rows[-1][0].startswith("difference:")
    shown = _interval(rows[-1][header.index("rd gender")])
    assert shown == pytest.approx((value, lo, hi), abs=0.005)
    assert paired_difference(*results) == diff  # fixed seed: reproducible


def test_markdown_table(runs):
    header, *rows = _md_rows(compare_runs(runs))
    assert header == ["run", "rd gender", "rd race", "rd gender × race", "rd age", "face rate",
                      "fidelity (concept_match)"]
    assert [r[0] for r in rows[:2]] == ["spec_a", "spec_b"]  # same model and suite: directory names
    results = json.loads((runs[0] / "results.json").read_text())
    rd = results["summary"]["gender"]["rd"]
    assert _interval(rows[0][1]) == pytest.approx((rd["mean"], *rd["ci95"]), abs=0.005)
    assert rows[0][5] == "1.00" and rows[2][5] == "–"


def test_csv_parses_with_numbers_in_columns(runs):
    table = list(csv.DictReader(io.StringIO(compare_runs(runs, "csv"))))
    assert len(table) == 3
    results = [json.loads((r / "results.json").read_text()) for r in runs]
    for row, res in zip(table, results):
        assert float(row["rd_gender"]) == pytest.approx(res["summary"]["gender"]["rd"]["mean"])
        assert float(row["rd_race_lo"]) == pytest.approx(res["summary"]["race"]["rd"]["ci95"][0])
        assert row["model"] == "world" and row["fidelity_metric"] == "concept_match"
    assert float(table[2]["rd_gender_lo"]) < float(table[2]["rd_gender"]) < float(table[2]["rd_gender_hi"])


def test_latex_is_escaped_booktabs(runs):
    table = compare_runs(runs, "latex")
    assert not re.search(r"(?<!\\)[_%&#]", table.replace(" & ", " ")), "unescaped special character"
    assert "spec\\_a" in table
    lines = table.splitlines()
    assert lines[0].startswith(r"\begin{tabular}{l") and lines[-1] == r"\end{tabular}"
    assert [ln for ln in lines if ln in (r"\toprule", r"\midrule", r"\bottomrule")] == [
        r"\toprule", r"\midrule", r"\midrule", r"\bottomrule"]
    body = [ln for ln in lines if ln.endswith(r"\\")]
    assert len(body) == 4 and len({ln.count(" & ") for ln in body}) == 1
    assert r"$\times$" in table and "−" not in table and "–" not in table  # pdflatex-safe


def test_latex_escape_every_special_character():
    assert latex_escape(r"a_b%c&d#e$f{g}h~i^j\k") == (
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )
    assert latex_escape("[x]") == "{}[x]"


def test_labels_runs_by_model_and_suite_when_unique(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs[0], other)
    results = json.loads((other / "results.json").read_text())
    results["model"] = "tiny"
    results["prompts"] = results["prompts"][:-1]  # another prompt set: no paired difference
    (other / "results.json").write_text(json.dumps(results))
    _, *rows = _md_rows(compare_runs([runs[0], other]))
    suite = runs[0].parent / "suite.yaml"
    assert [r[0] for r in rows] == [f"world ({suite})", f"tiny ({suite})"]


def test_bad_input(runs, tmp_path):
    with pytest.raises(FairgenError, match="unknown format 'xlsx'"):
        compare_runs(runs, "xlsx")
    with pytest.raises(FairgenError, match="at least one"):
        compare_runs([])
    with pytest.raises(FairgenError, match="not a fairgen run"):
        compare_runs([runs[0], tmp_path])


def test_paired_interval_covers_the_planted_difference_at_its_level():
    """Over simulated pairs of runs from the two specs, the 95% interval holds the planted difference
    about 95% of the time (the run-based test above checks one fixed draw)."""
    n, sims = N_IMAGES, 200
    planted = {name: np.mean([expected_rd([f, 1 - f], n) for f in female]) for name, female in FEMALE.items()}
    target = planted["spec_b"] - planted["spec_a"]
    rng = np.random.default_rng(0)
    hits = 0
    for s in range(sims):
        runs = []
        for female in FEMALE.values():
            counts = [rng.multinomial(n, [f, 1 - f]) for f in female]
            runs.append({"summary": {"gender": {"rd": {}}}, "prompts": [
                {"id": c, "counts": {"gender": dict(zip(ATTRIBUTES["gender"], map(int, k)))}}
                for c, k in zip(CONCEPTS, counts)]})
        _, lo, hi = paired_difference(*runs, replicates=400, seed=s)["gender"]
        hits += lo <= target <= hi
    assert 0.9 <= hits / sims <= 0.99


# --- issue 24 (Found 10): same-seed runs are paired image by image, noise floors, warnings ----------------
def test_a_run_compared_with_itself_differs_by_exactly_zero(runs):
    """Main reported 0.00 [−0.21, 0.21]: the same images resampled as if independent."""
    table = compare_runs([runs[0], runs[0]])
    diff = [r for r in _md_rows(table) if r[0].startswith("difference")][0]
    assert _interval(diff[1]) == (0.0, 0.0, 0.0)
    assert "paired image by image" in table and "noise floor" in table


def test_same_seed_runs_are_paired_and_narrower(runs, tmp_path):
    """Two runs with the same seed and prompts share every image's seed: for a small change of the model (spec
    A with 5 points more women) the paired interval is far narrower than the independent one and still holds
    the planted difference."""
    spec = _spec(tmp_path / "a2.yaml", [min(1.0, f + 0.05) for f in FEMALE["spec_a"]])
    fairgen.audit(model="world", world_spec=spec, suite=str(runs[0].parent / "suite.yaml"),
                  images_per_prompt=N_IMAGES, seed=1, out=tmp_path / "a2")
    a = json.loads((runs[0] / "results.json").read_text())
    b = json.loads((tmp_path / "a2" / "results.json").read_text())
    from fairgen.report.html import read_records

    paired = paired_difference(a, b, records=[read_records(runs[0]), read_records(tmp_path / "a2")])["gender"]
    independent = paired_difference(a, b)["gender"]
    assert paired[0] == independent[0]
    assert paired[2] - paired[1] < 0.5 * (independent[2] - independent[1])
    truth = _planted_gender_rd(tmp_path / "a2") - _planted_gender_rd(runs[0])
    assert paired[1] <= truth <= paired[2]
    assert "paired image by image" in compare_runs([runs[0], tmp_path / "a2"])


def test_compare_warns_on_other_sizes_or_prompts(runs):
    from fairgen.report.compare import compare_warnings

    a = json.loads((runs[0] / "results.json").read_text())
    b = dict(a, images_per_prompt=50)
    c = dict(a, prompts=a["prompts"][:3])
    assert any("images per prompt" in w for w in compare_warnings([a, b]))
    assert any("different prompts" in w for w in compare_warnings([a, c]))
    assert compare_warnings([a, a]) == []


# --- issue 31: --rank-by METRIC[:ATTRIBUTE] -----------------------------------------------------------------
def _ranked(table: str) -> list[tuple[str, str]]:
    """(rank, run) of a ranked markdown table's run rows, in table order."""
    header, *rows = _md_rows(table)
    assert header[:2] == ["rank", "run"]
    return [(r[0], r[1]) for r in rows if not r[1].startswith("difference")]


@pytest.fixture(scope="module")
def three(runs, tmp_path_factory):
    """The two planted runs and a copy of the skewed one (exactly its values: a tie), in the order
    spec_a, spec_b, spec_a_copy."""
    copy = tmp_path_factory.mktemp("tie") / "spec_a_copy"
    shutil.copytree(runs[0], copy)
    return [runs[0], runs[1], copy]


@pytest.mark.parametrize("metric", ["rd", "kl", "entropy", "mad", "disparity", "tv", "js", "rd_population"])
def test_rank_by_orders_runs_by_their_results(three, metric):
    """Every per-attribute metric ranks the runs by results.json's suite value, in its direction (entropy:
    higher is fairer). The planted specs make spec_b (near balance) the fairer on gender by every metric."""
    results = [json.loads((r / "results.json").read_text()) for r in three]
    key = "estimate" if metric == "rd_population" else "mean"
    values = [r["summary"]["gender"][metric][key] for r in results]
    sign = -1 if metric == "entropy" else 1
    expected = sorted(range(3), key=lambda i: sign * values[i])  # stable: the copy stays after spec_a
    table = compare_runs(three, rank_by=f"{metric}:gender")
    assert [run for _, run in _ranked(table)] == [three[i].name for i in expected]
    assert [run for _, run in _ranked(table)][0] == "spec_b"
    assert values[0] == values[2] and values[0] != values[1]  # the tie is real, the order is not vacuous
    assert [rank for rank, _ in _ranked(table)] == ["1", "2", "2"]  # ties share a rank
    header, *rows = _md_rows(table)
    if metric != "rd":  # its own column, the value of results.json with its interval
        entry = results[1]["summary"]["gender"][metric]
        assert _interval(rows[0][header.index(f"{metric} gender")]) == pytest.approx(
            (entry[key], *entry["ci95"]), abs=0.005)


def test_rank_by_default_attribute_ties_and_formats(three):
    # no attribute: the first one every run measured (gender here)
    assert compare_runs(three, rank_by="mad") == compare_runs(three, rank_by="mad:gender")
    race = [json.loads((r / "results.json").read_text())["summary"]["race"]["mad"]["mean"] for r in three]
    by_race = _ranked(compare_runs(three, rank_by="mad:race"))
    assert [run for _, run in by_race] == [three[i].name for i in sorted(range(3), key=lambda i: race[i])]
    # ties keep the order given: the copy first when it is given first
    assert [run for _, run in _ranked(compare_runs([three[2], three[1], three[0]], rank_by="rd"))] == [
        "spec_b", "spec_a_copy", "spec_a"]
    # fidelity: higher is better, and every run's is 1 here: one shared rank
    assert [rank for rank, _ in _ranked(compare_runs(three, rank_by="fidelity"))] == ["1", "1", "1"]
    rows = list(csv.DictReader(io.StringIO(compare_runs(three, "csv", rank_by="tv:gender"))))
    assert [r["rank"] for r in rows] == ["1", "2", "2"] and rows[0]["run"] == "spec_b"
    tv = json.loads((three[1] / "results.json").read_text())["summary"]["gender"]["tv"]
    assert (float(rows[0]["tv_gender"]), float(rows[0]["tv_gender_lo"])) == pytest.approx((tv["mean"], tv["ci95"][0]))
    latex = compare_runs(three, "latex", rank_by="tv:gender")
    assert latex.splitlines()[0] == r"\begin{tabular}{rlrrrrrrr}" and "tv gender" in latex
    # two runs: ranked rows, and the paired difference stays last, labelled in the order given
    table = compare_runs(three[:2], rank_by="rd")
    assert [run for _, run in _ranked(table)] == ["spec_b", "spec_a"]
    assert _md_rows(table)[-1][1] == "difference: spec_b − spec_a"
    assert "ranked by rd gender (lower is fairer)" in table


def test_rank_by_parsing_known_answers():
    from fairgen.report.ranking import parse_rank_by, ranks

    measured = {"gender": {"rd": {}}, "race": {"rd": {}}, "gender_x_race": {"rd": {}}, "age": None}
    only_age = {"gender": None, "race": None, "gender_x_race": None, "age": {"rd": {}}}
    both = {**measured, "age": {"rd": {}}}
    assert parse_rank_by("kl", [{"summary": measured}]).attribute == "gender"
    assert parse_rank_by("kl", [{"summary": only_age}, {"summary": both}]).attribute == "age"
    assert parse_rank_by(" js : race ", [{"summary": measured}]).attribute == "race"
    with pytest.raises(FairgenError, match="no attribute in common"):
        parse_rank_by("kl", [{"summary": measured}, {"summary": only_age}])
    assert ranks([0.3, 0.1, 0.3, None, 0.2], higher_is_better=False) == [3, 1, 3, None, 2]
    assert ranks([0.3, 0.1, 0.3, None, 0.2], higher_is_better=True) == [1, 4, 1, None, 3]


def test_rank_by_errors_through_the_cli(three, tmp_path):
    """Unknown metric or attribute, a run-level metric given an attribute, a metric a run lacks: one
    `error:` line, exit 2, nothing on stdout."""
    from conftest import run_cli

    lacking = tmp_path / "old"  # an audit from before the target distances: no tv in its results.json
    shutil.copytree(three[1], lacking)
    results = json.loads((lacking / "results.json").read_text())
    for attr in results["summary"].values():
        if isinstance(attr, dict):
            attr.pop("tv", None)
    (lacking / "results.json").write_text(json.dumps(results))
    runs = [str(three[0]), str(three[1])]
    cases = {
        "foo": "unknown metric 'foo'; choose one of: rd, kl, entropy",
        "mad:height": "unknown attribute 'height'; choose one of: gender, race, gender_x_race, age",
        "clip_score:gender": "clip_score is a metric of the whole run",
        "clip_score": f"run spec_a ({three[0]}) has no clip_score (audited without --quality)",
        "rd_corrected:race": "has no rd_corrected (audited without --calibration)",
    }
    for rank_by, message in cases.items():
        proc = run_cli("compare", *runs, "--rank-by", rank_by)
        assert proc.returncode == 2 and proc.stdout == "", (rank_by, proc.stdout)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (rank_by, proc.stderr)
    proc = run_cli("compare", str(three[0]), str(lacking), "--rank-by", "tv:gender")
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: --rank-by tv:gender: run old ({lacking}) has no tv (audited before that metric was reported)")
    ok = run_cli("compare", *runs, "--rank-by", "entropy:gender")
    assert ok.returncode == 0 and [r for _, r in _ranked(ok.stdout)] == ["spec_b", "spec_a"]


def test_rank_by_a_distance_warns_when_the_targets_differ(runs, tmp_path):
    """tv ranks each run's distance to its own target: a run audited against 75 % women ranks by that, and
    the table says the goals differ."""
    target = tmp_path / "target.yaml"
    target.write_text("default:\n  gender: {female: 0.75, male: 0.25}\n")
    fairgen.audit(model="world", world_spec=runs[1].parent / "spec_b.yaml", suite=str(runs[1].parent / "suite.yaml"),
                  images_per_prompt=20, seed=5, out=tmp_path / "to75", target=str(target))
    results = json.loads((tmp_path / "to75" / "results.json").read_text())
    shares = [p["counts"]["gender"]["female"] / sum(p["counts"]["gender"].values()) for p in results["prompts"]]
    assert results["summary"]["gender"]["tv"]["mean"] == pytest.approx(np.mean([abs(f - 0.75) for f in shares]))
    table = compare_runs([runs[1], tmp_path / "to75"], rank_by="tv:gender")
    assert "warning: the runs measure tv to different targets" in table
    assert "different targets" not in compare_runs([runs[1], runs[0]], rank_by="tv:gender")
