"""The built-in suites, described by data/suites.yaml and the concept files next to it.

The code here is generic: a suite is a set of splits, a split is templates x concepts. Adding a
suite means adding data, not code.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from typing import Any

from fairgen.suites.templates import check_unique_ids, cross, text_lines
from fairgen.types import FairgenError, Prompt
from fairgen.yamlfile import load_yaml

PLACEHOLDER = "{concept}"
_DATA = files("fairgen.suites").joinpath("data")


def _read(filename: str) -> str:
    return _DATA.joinpath(filename).read_text(encoding="utf-8")


@cache
def _registry() -> dict[str, Any]:
    """suites.yaml, parsed once per process."""
    return load_yaml(_read("suites.yaml"))


@cache
def _concepts(filename: str) -> tuple[tuple[str, str], ...]:
    """(concept, words for the template) pairs of a concept file: a .txt list or a .yaml mapping."""
    if filename.endswith(".yaml"):
        mapping = load_yaml(_read(filename))
        return tuple((str(concept), str(words)) for concept, words in mapping.items())
    return tuple((line, line) for line in text_lines(_read(filename)))


def builtin_names() -> list[str]:
    """Names of the built-in suites, in the order they are listed."""
    return list(_registry())


def builtin_prompts(name: str, split: str) -> list[Prompt]:
    """The prompts of one split of a built-in suite (fresh objects: callers may keep or alter them)."""
    splits = _registry()[name]["splits"]
    if split not in splits:
        raise FairgenError(f"unknown split '{split}' for suite '{name}' (splits: {', '.join(splits)})")
    spec = splits[split]
    prompts = cross(spec["templates"], _concepts(spec["concepts"]), PLACEHOLDER, spec.get("suffix", "t"))
    check_unique_ids(prompts, f"built-in suite {name}:{split}")
    return prompts


def list_suites() -> list[dict[str, Any]]:
    """One entry per built-in suite: name, description, splits, and the number of prompts per split."""
    return [
        {
            "name": name,
            "description": spec["description"],
            "splits": list(spec["splits"]),
            "prompts": {split: len(builtin_prompts(name, split)) for split in spec["splits"]},
        }
        for name, spec in _registry().items()
    ]
