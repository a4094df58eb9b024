"""Resolve a suite argument (`name[:split]` or `path[:split]`) to its prompts."""

from __future__ import annotations

from pathlib import Path

from fairgen.suites.builtin import builtin_names, builtin_prompts
from fairgen.suites.userfile import load_file, looks_like_file
from fairgen.types import FairgenError, Prompt

SPLITS = ("train", "test", "val")
DEFAULT_SPLIT = "test"


def _split_arg(arg: str) -> tuple[str, str | None]:
    """(name or path, split or None if none was written). Only a known split word after the LAST
    ':' counts as a split, so other colons in a path stay part of the path."""
    head, sep, tail = arg.rpartition(":")
    if sep and tail in SPLITS:
        return head, tail
    return arg, None


def parse_suite_arg(arg: str) -> tuple[str, str]:
    """Split a suite argument into (name or path, split): "occupations:train" -> ("occupations", "train");
    a bare name means its test split."""
    name, split = _split_arg(arg)
    return name, split or DEFAULT_SPLIT


def load(name: str, split: str | None = None) -> list[Prompt]:
    """The prompts of a suite.

    name: a built-in suite name or a path to a suite file, either optionally followed by ":split".
    split: the split, when not written in `name`; both may be given only if they agree.
    Built-in names win over files of the same name in the working directory.
    """
    target, written = _split_arg(name)
    if split is not None and written is not None and split != written:
        raise FairgenError(f"suite '{name}': split '{written}' in the name disagrees with split '{split}'")
    split = split or written or DEFAULT_SPLIT
    if target in builtin_names():
        return builtin_prompts(target, split)
    if looks_like_file(target):
        return load_file(Path(target), split)
    # "occupations:tset" reaches here whole: a typo in the split, not an unknown suite.
    head, sep, tail = target.rpartition(":")
    if sep and (head in builtin_names() or looks_like_file(head)):
        raise FairgenError(f"suite '{head}': unknown split '{tail}' (known split words: {', '.join(SPLITS)})")
    raise FairgenError(
        f"unknown suite '{target}' (built-in: {', '.join(builtin_names())}; "
        f"or give a .yaml, .yml, .json or .txt file)"
    )


def load_joined(arg: str) -> list[Prompt]:
    """The prompts of one suite argument or of several joined by commas ("occupations:train,
    personal_descriptors:train"), in the order given. Raises FairgenError for an empty part or a prompt id
    that two of them share (a prompt's id names its images and records). A suite file whose own name has a
    comma is read whole."""
    if "," not in arg or Path(_split_arg(arg)[0]).exists():
        return load(arg)
    parts = [part.strip() for part in arg.split(",")]
    if not all(parts):
        raise FairgenError(f"suite list {arg!r}: an empty entry between commas")
    prompts = [p for part in parts for p in load(part)]
    seen: set[str] = set()
    for p in prompts:
        if p.id in seen:
            raise FairgenError(f"suite list {arg!r}: prompt id {p.id!r} is in more than one of them")
        seen.add(p.id)
    return prompts

