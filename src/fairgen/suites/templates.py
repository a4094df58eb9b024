"""From templates and concepts to prompt texts and ids: slugs, English articles, crossing.

Shared by the built-in suites and by Shen et al.'s occupation.json user files, so both build prompts
(and ids) the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from fairgen.types import FairgenError, Prompt

# What an id may look like: safe as a directory name on every OS, never "." or "..".
ID_PATTERN = re.compile(r"[a-z0-9_-]+")
MAX_ID_LENGTH = 100
# Auto ids are cut shorter than user ids so suffixes ("--t3", "--female-asian") still fit.
_MAX_SLUG_LENGTH = 64

# Words read with a consonant sound although they start with a vowel letter ("a unicorn", "a
# European", "a one-off", "a urologist"), and the reverse: a silent h ("an hour", "an honest").
_CONSONANT_SOUND_PREFIXES = ("uni", "use", "usu", "uti", "uro", "ure", "eu", "ewe", "one", "once", "ufo")
_VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir")
# Letters whose spoken name starts with a vowel sound, for initialisms read letter by letter
# ("an FBI agent", "an HVAC technician", but "a CEO", "a UX designer").
_VOWEL_SOUND_LETTERS = set("AEFHILMNORSX")
# An article "a"/"an" (any case) at the very end of a text, followed by spaces.
_TRAILING_ARTICLE = re.compile(r"(?<!\w)(an?)(\s+)$", re.IGNORECASE)


def slugify(text: str) -> str:
    """Lower-case ASCII words joined by '-' ("Police Officer" -> "police-officer"); '' if none."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:_MAX_SLUG_LENGTH].rstrip("-")


def indefinite_article(phrase: str) -> str:
    """'a' or 'an' for the phrase that follows the article, by the sound of its first word."""
    word = phrase.split()[0] if phrase.split() else ""
    letters = re.sub(r"[^A-Za-z]", "", word)
    if not letters:
        return "a"
    if len(letters) > 1 and letters.isupper():  # an initialism, read letter by letter
        return "an" if letters[0] in _VOWEL_SOUND_LETTERS else "a"
    lower = letters.lower()
    if lower.startswith(_VOWEL_SOUND_PREFIXES):
        return "an"
    if lower.startswith(_CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if lower[0] in "aeiou" else "a"


def fix_article(before: str, following: str) -> str:
    """`before` with a trailing "a"/"an" made right for `following`, keeping its capitalisation."""
    match = _TRAILING_ARTICLE.search(before)
    if match is None:
        return before
    article = indefinite_article(following)
    if match.group(1)[0].isupper():
        article = article.capitalize()
    return before[: match.start()] + article + match.group(2)


def fill(template: str, placeholder: str, words: str) -> str:
    """The template with its placeholder replaced by `words` and the article before it fixed.

    str.replace rather than str.format, so other braces in a user's template are kept as written.
    """
    head, sep, tail = template.partition(placeholder)
    if not sep:
        raise ValueError(f"template {template!r} has no {placeholder}")
    return fix_article(head, words) + words + tail.replace(placeholder, words)


def cross(
    templates: Sequence[str],
    concepts: Sequence[tuple[str, str]],
    placeholder: str,
    suffix: str = "t",
    fix_articles: bool = True,
) -> list[Prompt]:
    """Every template filled with every concept, template-major (as Shen et al. build their lists).

    concepts: (concept, words written into the template) pairs; the words differ from the concept
    only for translations. Ids: the concept's slug (or "c<index>" when it has no ASCII letters), plus
    "--<suffix><j>" (template index j) when there are several templates. fix_articles=False keeps the
    template's words exactly (a user's file: their exact prompts, "a accountant" included).
    """
    slugs = [slugify(concept) or f"c{i:03d}" for i, (concept, _) in enumerate(concepts)]
    prompts = []
    for j, template in enumerate(templates):
        tag = f"--{suffix}{j}" if len(templates) > 1 else ""
        for slug, (concept, words) in zip(slugs, concepts, strict=True):
            text = fill(template, placeholder, words) if fix_articles else template.replace(placeholder, words)
            prompts.append(Prompt(id=slug + tag, text=text, concept=concept))
    return prompts


def check_unique_ids(prompts: Iterable[Prompt], where: str) -> None:
    """Raise FairgenError naming `where` if two prompts share an id."""
    seen: dict[str, Prompt] = {}
    for prompt in prompts:
        if prompt.id in seen:
            raise FairgenError(
                f"{where}: duplicate id '{prompt.id}' "
                f"(from {seen[prompt.id].concept!r} and {prompt.concept!r})"
            )
        seen[prompt.id] = prompt


def text_lines(text: str) -> list[str]:
    """The stripped lines of a text, without blank lines and lines starting with '#'."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]
