"""User suite files: YAML / JSON prompt lists, plain text, and Shen et al.'s occupation.json.

Every problem with a file raises FairgenError as one line that starts with the file's path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from fairgen.suites.explicit import group_error
from fairgen.suites.templates import ID_PATTERN, MAX_ID_LENGTH, check_unique_ids, cross, slugify, text_lines
from fairgen.types import FairgenError, Prompt
from fairgen.yamlfile import load_yaml

SUITE_EXTENSIONS = (".yaml", ".yml", ".json", ".txt")
# Shen et al.'s occupation.json: split -> (templates key, occupations key). Their code builds
# prompts_val from the test templates and the *val* occupations, so that is our "test" split.
SHEN_KEYS = {
    "train": ("prompt_templates_train", "occupations_train_set"),
    "test": ("prompt_templates_test", "occupations_val_set"),
}
SHEN_PLACEHOLDER = "{occupation}"
_TOP_KEYS = ("name", "description", "prompts")
_PROMPT_KEYS = ("id", "text", "concept", "group")


def looks_like_file(name: str) -> bool:
    """Whether a suite argument names a file: it exists, or it has a suite file extension."""
    return Path(name).exists() or Path(name).suffix.lower() in SUITE_EXTENSIONS


def load_file(path: Path, split: str) -> list[Prompt]:
    """The prompts of a user suite file for `split` (plain lists have only the 'test' split)."""
    if not path.exists():
        raise FairgenError(f"{path}: suite file not found")
    if not path.is_file():
        raise FairgenError(f"{path}: not a file")
    ext = path.suffix.lower()
    if ext not in SUITE_EXTENSIONS:
        raise FairgenError(f"{path}: unknown suite file type (use {', '.join(SUITE_EXTENSIONS)})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise FairgenError(f"{path}: cannot read as UTF-8 text ({err})") from None
    if ext == ".txt":
        _single_split(path, split)
        return _from_lines(path, text)
    data = _parse(path, text, ext)
    if isinstance(data, dict) and any(key in data for keys in SHEN_KEYS.values() for key in keys):
        return _from_shen(path, data, split)
    _single_split(path, split)
    if isinstance(data, dict):
        unknown = [key for key in data if key not in _TOP_KEYS]
        if unknown:
            raise FairgenError(f"{path}: unknown key '{unknown[0]}' (allowed: {', '.join(_TOP_KEYS)})")
        if "prompts" not in data:
            raise FairgenError(f"{path}: missing key 'prompts'")
        for key in ("name", "description"):
            if key in data and not isinstance(data[key], str):
                raise FairgenError(f"{path}: '{key}' must be a string")
        data = data["prompts"]
    if not isinstance(data, list):
        raise FairgenError(
            f"{path}: expected a list of prompts, a mapping with 'prompts', "
            "or Shen et al.'s occupation.json keys"
        )
    return _from_items(path, data)


def _single_split(path: Path, split: str) -> None:
    # A plain prompt list is one set of prompts; it answers to the default split only.
    if split != "test":
        raise FairgenError(f"{path}: unknown split '{split}' (this file has one split: test)")


def _parse(path: Path, text: str, ext: str) -> Any:
    """The YAML or JSON document of a file; malformed or empty documents raise FairgenError."""
    if not text.strip():
        raise FairgenError(f"{path}: empty file")
    if ext == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise FairgenError(
                f"{path}: malformed JSON at line {err.lineno}, column {err.colno}: {err.msg}"
            ) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        # YAML messages span lines; keep the one-line contract.
        problem = getattr(err, "problem", None) or " ".join(str(err).split())
        raise FairgenError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise FairgenError(f"{path}: empty file")
    return data


def _from_lines(path: Path, text: str) -> list[Prompt]:
    """Plain text: a prompt per line; ids p000, p001, ... in order; concept = the line."""
    lines = text_lines(text)
    if not lines:
        raise FairgenError(f"{path}: no prompts (only blank lines and # comments)")
    return [Prompt(id=f"p{i:03d}", text=line, concept=line) for i, line in enumerate(lines)]


def _from_shen(path: Path, data: dict[str, Any], split: str) -> list[Prompt]:
    """Shen et al.'s format: the split's templates x its occupations, template-major."""
    if split not in SHEN_KEYS:
        raise FairgenError(f"{path}: unknown split '{split}' (splits: {', '.join(SHEN_KEYS)})")
    templates_key, occupations_key = SHEN_KEYS[split]
    templates, occupations = (_string_list(path, data, key) for key in (templates_key, occupations_key))
    for j, template in enumerate(templates):
        if SHEN_PLACEHOLDER not in template:
            raise FairgenError(f"{path}: template {j} of '{templates_key}' has no {SHEN_PLACEHOLDER}")
    # Exactly as Shen et al.'s code builds them (template.format(occupation=...)): no article fixing.
    prompts = cross(templates, [(occ, occ) for occ in occupations], SHEN_PLACEHOLDER, fix_articles=False)
    check_unique_ids(prompts, f"{path} (split {split})")
    return prompts


def _string_list(path: Path, data: dict[str, Any], key: str) -> list[str]:
    if key not in data:
        raise FairgenError(f"{path}: missing key '{key}'")
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise FairgenError(f"{path}: '{key}' must be a list of non-empty strings")
    if not value:
        raise FairgenError(f"{path}: '{key}' is empty")
    return [v.strip() for v in value]


def _from_items(path: Path, items: list[Any]) -> list[Prompt]:
    """Prompt objects {id?, text, concept?, group?}. Given ids must be unique; missing ones are made
    from the concept (or text) and made unique without ever taking an id the user gave."""
    if not items:
        raise FairgenError(f"{path}: no prompts")
    fields = [_item_fields(path, i + 1, item) for i, item in enumerate(items)]
    given: dict[str, int] = {}
    for number, item in enumerate(fields, start=1):
        if "id" in item:
            if item["id"] in given:
                raise FairgenError(
                    f"{path}: duplicate id '{item['id']}' (prompts {given[item['id']]} and {number})"
                )
            given[item["id"]] = number
    taken = set(given)
    prompts = []
    for i, item in enumerate(fields):
        concept = item.get("concept", item["text"])
        prompt_id = item.get("id")
        if prompt_id is None:
            base = slugify(concept) or f"p{i:03d}"
            prompt_id, n = base, 2
            while prompt_id in taken:
                prompt_id, n = f"{base}-{n}", n + 1
            taken.add(prompt_id)
        prompts.append(Prompt(id=prompt_id, text=item["text"], concept=concept, group=item.get("group", {})))
    return prompts


def _item_fields(path: Path, number: int, item: Any) -> dict[str, Any]:
    """One prompt object, checked; `number` counts from 1 for messages."""
    where = f"{path}: prompt {number}"
    if not isinstance(item, dict):
        raise FairgenError(f"{where} is not a mapping with a 'text' key")
    unknown = [key for key in item if key not in _PROMPT_KEYS]
    if unknown:
        raise FairgenError(f"{where}: unknown key '{unknown[0]}' (allowed: {', '.join(_PROMPT_KEYS)})")
    if "text" not in item:
        raise FairgenError(f"{where} has no 'text'")
    for key in ("text", "concept"):
        if key in item and not (isinstance(item[key], str) and item[key].strip()):
            raise FairgenError(f"{where}: '{key}' must be a non-empty string")
    fields = {key: item[key].strip() for key in ("text", "concept") if key in item}
    if "id" in item:
        prompt_id = item["id"]
        if not (
            isinstance(prompt_id, str) and ID_PATTERN.fullmatch(prompt_id) and len(prompt_id) <= MAX_ID_LENGTH
        ):
            raise FairgenError(
                f"{where}: id {prompt_id!r} must be a string of a-z, 0-9, '_' and '-' "
                f"(at most {MAX_ID_LENGTH} characters)"
            )
        fields["id"] = prompt_id
    if "group" in item:
        group = item["group"]
        problem = "must be a mapping" if not isinstance(group, dict) else group_error(group)
        if problem:
            raise FairgenError(f"{where}: group {problem}")
        fields["group"] = dict(group)
    return fields
