"""Prompt suites: built-in ones (data files under data/) and user suite files.

Public API (other stages code against these names):
- load(name, split=None) -> list[Prompt]       "occupations", "occupations:train", "my.yaml", ...
- load_joined(arg) -> list[Prompt]              several suites joined by commas, "a:train,b:train"
- parse_suite_arg(arg) -> (name or path, split)
- list_suites() -> [{name, description, splits, prompts: {split: count}}]
- explicit(prompt, group) -> Prompt             the neutral prompt with demographic words added
"""

from fairgen.suites.builtin import list_suites
from fairgen.suites.explicit import explicit
from fairgen.suites.loader import load, load_joined, parse_suite_arg

__all__ = ["explicit", "list_suites", "load", "load_joined", "parse_suite_arg"]
