"""Input checks shared by the transformers families: one clear line for what the caller got wrong."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...types import FairgenError


def check_options(family: str, options: Sequence[str]) -> None:
    """Options must be distinct, non-empty strings."""
    if not options or any(not isinstance(o, str) or not o.strip() for o in options) or len(set(options)) != len(options):
        raise FairgenError(f"{family}: answer options must be distinct non-empty strings (got {list(options)!r})")


def check_batch(family: str, prompts: Sequence[Any], seeds_or_images: Sequence[Any], what: str) -> None:
    if len(prompts) != len(seeds_or_images):
        raise FairgenError(f"{family}: {len(prompts)} prompts but {len(seeds_or_images)} {what}")
    if not prompts:
        raise FairgenError(f"{family}: empty batch")


def first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
