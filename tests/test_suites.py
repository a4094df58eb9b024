"""Tests of fairgen.suites: built-in suites, user suite files, explicit prompts, the CLI."""

from __future__ import annotations

import json
import re
from importlib.resources import files

import pytest
from typer.testing import CliRunner

from fairgen.suites import explicit, list_suites, load, load_joined, parse_suite_arg
from fairgen.suites.cli import suites_app
from fairgen.suites.templates import ID_PATTERN, indefinite_article, slugify
from fairgen.types import FairgenError, Prompt

DATA = files("fairgen.suites").joinpath("data")
ENGLISH = ["occupations", "personal_descriptors", "sports", "everyday_people", "occupations_style_context"]


def _lines(filename: str) -> list[str]:
    text = DATA.joinpath(filename).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _normalise(occupation: str) -> str:
    """Lower case, words only, last word without a plural s: catches duplicates and plural twins."""
    words = re.sub(r"[^a-z0-9]+", " ", occupation.lower()).split()
    return " ".join(words[:-1] + [re.sub(r"e?s$", "", words[-1])])


def _all_builtin() -> list[tuple[str, str]]:
    return [(s["name"], split) for s in list_suites() for split in s["splits"]]


# --- built-in suites ---------------------------------------------------------------------------


def test_occupations_test_split_is_the_fixed_50():
    prompts = load("occupations")
    assert len(prompts) == 50
    assert [p.concept for p in prompts] == _lines("occupations_test.txt")
    by_id = {p.id: p for p in prompts}
    # Hard-coded: ids and texts are a contract (run directories are named by them).
    assert by_id["police-officer"].text == "A photo of the face of a police officer, a person"
    assert by_id["ceo"].text == "A photo of the face of a CEO, a person"
    assert by_id["accountant"].text == "A photo of the face of an accountant, a person"
    assert by_id["nurse"] == Prompt("nurse", "A photo of the face of a nurse, a person", "nurse", {})


def test_occupations_train_split_is_large_and_disjoint_from_test():
    occupations = _lines("occupations_train.txt")
    assert len(occupations) >= 500
    normalised = [_normalise(o) for o in occupations]
    assert len(set(normalised)) == len(normalised), "duplicate or plural twin in the train occupations"
    assert not set(normalised) & {_normalise(o) for o in _lines("occupations_test.txt")}
    prompts = load("occupations:train")
    templates = len(prompts) // len(occupations)
    assert templates >= 4 and len(prompts) == templates * len(occupations)
    assert {p.concept for p in prompts} == set(occupations)
    by_id = {p.id: p for p in prompts}
    assert by_id["anesthesiologist--t0"].text == "A photo of the face of an anesthesiologist, a person"
    assert by_id["anesthesiologist--t3"].text == "A close-up photo of an anesthesiologist's face"
    assert by_id["fbi-agent--t2"].text == "A headshot of an FBI agent, a person"


@pytest.mark.parametrize("name,split", _all_builtin())
def test_builtin_ids_are_unique_and_safe(name, split):
    prompts = load(f"{name}:{split}")
    ids = [p.id for p in prompts]
    assert len(set(ids)) == len(ids)
    assert all(ID_PATTERN.fullmatch(i) for i in ids)
    assert all(p.text and p.concept and not p.group for p in prompts)


def test_other_builtin_suites():
    assert len(load("personal_descriptors")) == 40
    assert {p.id for p in load("personal_descriptors")}.isdisjoint(
        {p.id for p in load("personal_descriptors:train")}
    )
    sports = load("sports")
    assert len(sports) == 40 and all(p.concept.endswith(" player") for p in sports)
    assert sports[0] == Prompt("tennis-player", "A photo of the face of a tennis player", "tennis player", {})
    style = load("occupations_style_context")
    assert len(style) % 50 == 0 and len(style) >= 250
    assert {p.concept for p in style} == set(_lines("occupations_test.txt"))
    assert {p.id: p.text for p in style}["engineer--s0"] == "A painting of an engineer"


def test_everyday_people_share_no_concept_or_head_word_with_the_other_suites():
    """fairgen fix's balance probe: a drift it sees is not the training's own concepts coming back."""
    people = load("everyday_people")
    assert len(people) == 24 and people[0].text == "A photo of the face of a jazz fan"
    others = {p.concept.lower() for n in ENGLISH if n != "everyday_people" for p in load_joined(
        ",".join(f"{n}:{s}" for s in next(x for x in list_suites() if x["name"] == n)["splits"]))}
    assert not {p.concept.lower() for p in people} & others
    heads = {c.split()[-1] for c in others}  # "player", "person", "nurse", ...
    assert not {p.concept.split()[-1] for p in people} & heads


@pytest.mark.parametrize("name", ["occupations_zh", "occupations_fr"])
def test_translations_line_up_with_english(name):
    english, translated = load("occupations"), load(name)
    assert [(p.id, p.concept) for p in translated] == [(p.id, p.concept) for p in english]
    assert len({p.text for p in translated}) == 50
    # A translation, not the English prompt.
    assert not any("photo of" in p.text for p in translated)


def test_list_suites_counts_match_load():
    suites = {s["name"]: s for s in list_suites()}
    assert set(suites) == set(ENGLISH) | {"occupations_zh", "occupations_fr"}
    for name, split in _all_builtin():
        assert suites[name]["prompts"][split] == len(load(name, split))
        assert suites[name]["description"]


def test_load_returns_fresh_objects():
    first = load("occupations")
    first.clear()
    assert len(load("occupations")) == 50


# --- suite arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arg,expected",
    [
        ("occupations", ("occupations", "test")),
        ("occupations:train", ("occupations", "train")),
        ("occupations:val", ("occupations", "val")),
        ("runs/a:b/suite.yaml", ("runs/a:b/suite.yaml", "test")),
        ("runs/a:b/occupation.json:train", ("runs/a:b/occupation.json", "train")),
        ("odd:name", ("odd:name", "test")),
    ],
)
def test_parse_suite_arg(arg, expected):
    assert parse_suite_arg(arg) == expected


def test_split_argument_and_name_split_must_agree():
    assert load("occupations", "train") == load("occupations:train")
    assert load("occupations:train", "train") == load("occupations:train")
    with pytest.raises(FairgenError, match="disagrees"):
        load("occupations:train", "test")


def test_suites_joined_by_commas_are_their_prompts_in_order(tmp_path):
    joined = load_joined("occupations:train, personal_descriptors:train")
    assert joined == load("occupations:train") + load("personal_descriptors:train")
    assert load_joined("sports") == load("sports")
    with pytest.raises(FairgenError, match="empty entry"):
        load_joined("occupations:train,")
    with pytest.raises(FairgenError, match="more than one"):
        load_joined("sports,sports")
    with pytest.raises(FairgenError, match="unknown suite 'nope'"):
        load_joined("sports,nope")
    odd = tmp_path / "a,b.txt"  # a file whose name has a comma is one suite
    odd.write_text("a photo of a doctor\n", encoding="utf-8")
    assert [p.text for p in load_joined(str(odd))] == ["a photo of a doctor"]


# --- user suite files ---------------------------------------------------------------------------


def test_yaml_mapping_round_trip(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "name: mine\nprompts:\n"
        "  - {id: nurse, text: A photo of a nurse, concept: nurse}\n"
        "  - {text: A photo of a nurse at night, concept: nurse}\n"
        "  - {text: A drawing of a baker}\n"
        "  - {text: 画一个人, group: {gender: female}}\n",
        encoding="utf-8",
    )
    prompts = load(str(path))
    # An auto id never takes a user-given one; a text with no ASCII letters gets its position.
    assert [p.id for p in prompts] == ["nurse", "nurse-2", "a-drawing-of-a-baker", "p003"]
    assert prompts[2].concept == "A drawing of a baker"
    assert prompts[3].group == {"gender": "female"}


def test_json_bare_list_round_trip(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps([{"text": "A photo of a judge", "concept": "judge"}, {"text": "A judge"}]))
    prompts = load(str(path))
    assert [(p.id, p.text, p.concept) for p in prompts] == [
        ("judge", "A photo of a judge", "judge"),
        ("a-judge", "A judge", "A judge"),
    ]
    assert load(f"{path}:test") == prompts


def test_text_file_round_trip(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\nA photo of a pilot\n\n  A photo of a chef  \n# done\n")
    assert load(str(path)) == [
        Prompt("p000", "A photo of a pilot", "A photo of a pilot"),
        Prompt("p001", "A photo of a chef", "A photo of a chef"),
    ]


def test_shen_occupation_json(tmp_path):
    path = tmp_path / "occupation.json"
    path.write_text(
        json.dumps(
            {
                "prompt_templates_train": [
                    "A photo of the face of a {occupation}, a person",
                    "A {occupation}",
                ],
                "occupations_train_set": ["electrician", "nurse"],
                "prompt_templates_test": ["A photo of the face of a {occupation}, a person"],
                "occupations_val_set": ["police officer", "Accountant"],
                "prompt_templates_train_teacher": ["ignored: their files carry extra keys"],
            }
        )
    )
    train = load(f"{path}:train")
    # Template-major, as their code builds the list; ids carry the template when there are several.
    # Texts are exactly template.format(occupation=...): their prompts, their articles.
    assert [(p.id, p.text, p.concept) for p in train] == [
        ("electrician--t0", "A photo of the face of a electrician, a person", "electrician"),
        ("nurse--t0", "A photo of the face of a nurse, a person", "nurse"),
        ("electrician--t1", "A electrician", "electrician"),
        ("nurse--t1", "A nurse", "nurse"),
    ]
    test = load(str(path))
    assert [p.id for p in test] == ["police-officer", "accountant"]
    assert test[1].text == "A photo of the face of a Accountant, a person"
    assert (
        explicit(test[0], {"gender": "male"}).text == "A photo of the face of a male police officer, a person"
    )


# --- errors: one line, naming the file and what is wrong -------------------------------------------


@pytest.mark.parametrize(
    "filename,content,message",
    [
        ("empty.yaml", "", "empty file"),
        ("empty.json", "  \n", "empty file"),
        ("comments.txt", "# nothing\n\n", "no prompts"),
        ("none.yaml", "prompts: []\n", "no prompts"),
        ("typo.yaml", "promts: [{text: a}]\n", "unknown key 'promts'"),
        ("nokey.yaml", "name: x\n", "missing key 'prompts'"),
        ("scalar.yaml", "just a string\n", "expected a list of prompts"),
        ("notext.yaml", "- {text: a}\n- {concept: nurse}\n", "prompt 2 has no 'text'"),
        ("emptytext.json", '[{"text": "  "}]', "'text' must be a non-empty string"),
        ("badkey.yaml", "- {text: a, txt: b}\n", "unknown key 'txt'"),
        ("notmap.yaml", "- a photo\n", "prompt 1 is not a mapping"),
        (
            "dup.yaml",
            "- {id: a, text: x}\n- {id: b, text: y}\n- {id: a, text: z}\n",
            "duplicate id 'a' .prompts 1 and 3",
        ),
        ("badid.yaml", "- {id: Nurse 1, text: x}\n", "id 'Nurse 1' must be"),
        ("badgroup.yaml", "- {text: x, group: {gender: woman}}\n", "unknown gender class 'woman'"),
        ("bad.yaml", "prompts: [a, b\n  - c: d: e\n", "malformed YAML at line"),
        ("bad.json", '{"prompts": [', "malformed JSON at line 1"),
        ("shen.json", '{"prompt_templates_test": ["A {occupation}"]}', "missing key 'occupations_val_set'"),
        (
            "shen2.json",
            '{"prompt_templates_test": ["A photo"], "occupations_val_set": ["x"]}',
            "has no {occupation}",
        ),
        (
            "shen3.json",
            '{"prompt_templates_test": ["A {occupation}"], "occupations_val_set": []}',
            "is empty",
        ),
        (
            "shen4.json",
            '{"prompt_templates_test": ["{occupation}"], "occupations_val_set": ["a", "A"]}',
            "duplicate id 'a'",
        ),
        ("suite.csv", "text\na\n", "unknown suite file type"),
    ],
)
def test_bad_files(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FairgenError, match=message) as err:
        load(str(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_missing_file_and_bad_splits(tmp_path):
    with pytest.raises(FairgenError, match="suite file not found"):
        load(str(tmp_path / "nope.yaml"))
    plain = tmp_path / "plain.txt"
    plain.write_text("a prompt\n")
    with pytest.raises(FairgenError, match="unknown split 'train'"):
        load(f"{plain}:train")
    shen = tmp_path / "occupation.json"
    shen.write_text('{"prompt_templates_test": ["A {occupation}"], "occupations_val_set": ["x"]}')
    with pytest.raises(FairgenError, match="unknown split 'val'"):
        load(f"{shen}:val")
    with pytest.raises(FairgenError, match="missing key 'prompt_templates_train'"):
        load(f"{shen}:train")


def test_unknown_builtin_names_and_splits():
    with pytest.raises(FairgenError, match="unknown suite 'ocupations'.*occupations, personal_descriptors"):
        load("ocupations")
    with pytest.raises(FairgenError, match="unknown split 'val' for suite 'sports'.*splits: test"):
        load("sports:val")
    with pytest.raises(FairgenError, match="suite 'occupations': unknown split 'tset'"):
        load("occupations:tset")


# --- explicit prompts ---------------------------------------------------------------------------


def test_explicit_texts_and_ids():
    nurse = {p.id: p for p in load("occupations")}["nurse"]
    female = explicit(nurse, {"gender": "female"})
    assert female == Prompt(
        "nurse--female", "A photo of the face of a female nurse, a person", "nurse", {"gender": "female"}
    )
    both = explicit(nurse, {"race": "asian", "gender": "female"})
    assert (both.id, both.text) == (
        "nurse--female-asian",
        "A photo of the face of an Asian female nurse, a person",
    )
    assert dict(both.group) == {"gender": "female", "race": "asian"}
    three = explicit(nurse, {"gender": "male", "race": "indian", "age": "young"})
    assert three.text == "A photo of the face of a young Indian male nurse, a person"
    assert three.id == "nurse--male-indian-young"
    accountant = load("occupations")[0]
    assert (
        explicit(accountant, {"race": "black"}).text == "A photo of the face of a Black accountant, a person"
    )
    assert explicit(accountant, {"age": "old"}).text == "A photo of the face of an old accountant, a person"
    train = {p.id: p for p in load("occupations:train")}
    assert explicit(train["anesthesiologist--t3"], {"race": "white"}).text == (
        "A close-up photo of a White anesthesiologist's face"
    )
    style = {p.id: p for p in load("occupations_style_context")}
    assert explicit(style["ceo--s0"], {"race": "asian"}).text == "A painting of an Asian CEO"
    descriptor = load("personal_descriptors")[0]
    assert explicit(descriptor, {"gender": "male"}).text == "A photo of the face of a male attractive person"


@pytest.mark.parametrize("name,split", [(n, s) for n, s in _all_builtin() if n in ENGLISH])
def test_explicit_works_for_every_english_builtin_prompt(name, split):
    for prompt in load(name, split):
        out = explicit(prompt, {"gender": "female", "race": "indian"})
        assert "Indian female " + prompt.concept in out.text
        assert re.search(r"\ban Indian female\b", out.text), out.text
        assert out.concept == prompt.concept


def test_explicit_errors():
    nurse = load("occupations")[29]
    with pytest.raises(FairgenError, match="unknown attribute 'height'"):
        explicit(nurse, {"height": "tall"})
    with pytest.raises(FairgenError, match="unknown race class 'latino'"):
        explicit(nurse, {"race": "latino"})
    with pytest.raises(FairgenError, match="at least one"):
        explicit(nurse, {})
    with pytest.raises(FairgenError, match="already explicit"):
        explicit(explicit(nurse, {"gender": "male"}), {"race": "white"})
    with pytest.raises(FairgenError, match="does not appear in its text"):
        explicit(load("occupations_zh")[29], {"gender": "male"})


@pytest.mark.parametrize(
    "phrase,article",
    [
        ("nurse", "a"),
        ("accountant", "an"),
        ("hour", "an"),
        ("university dean", "a"),
        ("urologist", "a"),
        ("HVAC technician", "an"),
        ("CEO", "a"),
        ("UX designer", "a"),
        ("Indian", "an"),
        ("European", "a"),
    ],
)
def test_indefinite_article(phrase, article):
    assert indefinite_article(phrase) == article


def test_slugify():
    assert slugify("Police Officer") == "police-officer"
    assert slugify("Café owner's") == "cafe-owner-s"
    assert slugify("护士") == ""


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_lists_suites_without_subcommand():
    result = CliRunner().invoke(suites_app, [])
    assert result.exit_code == 0, result.output
    for name in ENGLISH:
        assert name in result.output


def test_cli_show_json_and_table():
    runner = CliRunner()
    result = runner.invoke(suites_app, ["show", "occupations:test", "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 50 and set(records[0]) == {"id", "text", "concept", "group"}
    assert records[29] == {
        "id": "nurse",
        "text": "A photo of the face of a nurse, a person",
        "concept": "nurse",
        "group": {},
    }
    zh = json.loads(runner.invoke(suites_app, ["show", "occupations_zh", "--json"]).stdout)
    assert zh[29]["text"] == "一张护士的脸部照片，照片中是一个人"
    table = runner.invoke(suites_app, ["show", "sports"])
    assert table.exit_code == 0 and "tennis-player" in table.output


def test_cli_show_bad_suite_exits_2():
    result = CliRunner().invoke(suites_app, ["show", "nope"])
    assert result.exit_code == 2
    assert "unknown suite 'nope'" in result.output
