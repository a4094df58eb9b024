"""Explicit prompts: a neutral prompt with demographic words put in front of its concept.

"A photo of the face of a nurse, a person" + {gender: female, race: asian}
-> "A photo of the face of an Asian female nurse, a person" (id "nurse--female-asian").
The fix stage builds its balanced set from these, and locate compares them with the neutral prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from fairgen.suites.templates import fix_article
from fairgen.types import ATTRIBUTES, FairgenError, Prompt

# The English word for every attribute class. Race words are proper adjectives, hence capitals.
GROUP_WORDS: dict[str, dict[str, str]] = {
    "gender": {"female": "female", "male": "male"},
    "race": {"white": "White", "black": "Black", "asian": "Asian", "indian": "Indian"},
    "age": {"young": "young", "old": "old"},
}
# Order of the words in the text, as English orders adjectives: age, then origin, then the gender
# word that sits closest to the noun ("a young Asian female nurse").
_WORD_ORDER = ("age", "race", "gender")


def group_error(group: Mapping[str, object]) -> str | None:
    """Why `group` is not a valid {attribute: class} request, or None if it is."""
    for attr, cls in group.items():
        if attr not in ATTRIBUTES:
            return f"unknown attribute {attr!r} (known: {', '.join(ATTRIBUTES)})"
        if cls not in ATTRIBUTES[attr]:
            return f"unknown {attr} class {cls!r} (known: {', '.join(ATTRIBUTES[attr])})"
    return None


def explicit(prompt: Prompt, group: dict[str, str]) -> Prompt:
    """The explicit version of a neutral prompt: group words inserted right before its concept.

    The article before the insertion is fixed ("a" -> "an Asian"). The id gets "--" plus the group's
    classes in canonical attribute order (gender, race, age); concept stays, group is set.
    The concept must appear in the text as whole words, as it does in every English built-in
    prompt; translated prompts (whose concept is the English name) are refused.
    """
    if not group:
        raise FairgenError(f"prompt '{prompt.id}': explicit() needs at least one attribute")
    problem = group_error(group)
    if problem:
        raise FairgenError(f"prompt '{prompt.id}': {problem}")
    if prompt.group:
        raise FairgenError(f"prompt '{prompt.id}' is already explicit ({dict(prompt.group)})")
    # The first whole-word occurrence; lookarounds instead of \b so concepts may end in punctuation.
    match = re.search(rf"(?<!\w){re.escape(prompt.concept)}(?!\w)", prompt.text, re.IGNORECASE)
    if match is None:
        raise FairgenError(
            f"prompt '{prompt.id}': cannot place group words, its concept {prompt.concept!r} "
            f"does not appear in its text {prompt.text!r}"
        )
    words = " ".join(GROUP_WORDS[attr][group[attr]] for attr in _WORD_ORDER if attr in group)
    head, tail = prompt.text[: match.start()], prompt.text[match.start() :]
    text = fix_article(head, words) + words + " " + tail
    canonical = {attr: group[attr] for attr in ATTRIBUTES if attr in group}
    return Prompt(
        id=f"{prompt.id}--{'-'.join(canonical.values())}",
        text=text,
        concept=prompt.concept,
        group=canonical,
    )
