"""What a fix must not break, and the adapter-free baseline.

    understanding_accuracy(model, n, seed)   labelled world renders, "What is the gender of the person in the
                                             image? ..." scored exactly: the share answered right, per attribute
    prompt_suffix(attributes) / with_suffix  the `prompt` method (prompt engineering, the paper's baseline):
                                             ", any gender" / ", any race" / both, appended to every prompt
    check_prompts(suite, limit)              a check suite (style and context, descriptors, sports), evenly
                                             thinned, audited before and after for rd outside the training domain
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .. import suites

from ..models.protocols import Understander
from ..questions import IMAGE_QUESTION, OPTION_ORDER, image_question  # noqa: F401  (re-exported)
from ..types import ATTRIBUTES, FairgenError, Prompt
from .data import spread

def understanding_accuracy(model: Any, n: int, seed: int = 0,
                           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Accuracy of the model's answers about n labelled world renders (balanced over the 16 gender x race x
    age classes): per attribute, the share of images whose most probable option (answer_distribution,
    exact) is the true class. Returns {"images": n, "accuracy": {attr: share}}."""
    from ..labelled import labelled_set

    if not isinstance(model, Understander):
        raise FairgenError(f"model {model.spec} cannot answer questions about images (no 'understand' capability)")
    labelled = labelled_set(f"world:{n}", seed)
    right = dict.fromkeys(ATTRIBUTES, 0)
    for i, truth in enumerate(labelled.truths):
        image = labelled.load(i)
        for attr, options in OPTION_ORDER.items():
            answer = model.answer_distribution(image, image_question(attr), list(options))
            right[attr] += max(options, key=lambda o: answer[o]) == truth[attr]
        if progress:
            progress(i + 1, n)
    return {"images": n, "accuracy": {a: r / n for a, r in right.items()}}


def prompt_suffix(attributes: Sequence[str]) -> str:
    """The prompt-engineering suffix: ', any gender', ', any race', or both in the attributes' order."""
    return "".join(f", any {a}" for a in attributes)


def with_suffix(prompts: Sequence[Prompt], suffix: str) -> list[Prompt]:
    """The prompts with `suffix` appended to their text (ids, concepts and groups kept, so the audits of
    the two line up prompt by prompt)."""
    return [Prompt(p.id, p.text + suffix, p.concept, p.group) for p in prompts]


def check_prompts(suite: str, limit: int | None) -> list[Prompt]:
    """The prompts of a check suite, at most `limit` of them evenly spread (None: all)."""
    return spread(suites.load(suite), limit)


def suite_dir_name(suite: str) -> str:
    """A check suite's folder name: 'sports' -> 'sports', 'my/suite.yaml' -> 'suite', 'a:test' -> 'a-test'."""
    name = suite.replace("\\", "/").rsplit("/", 1)[-1]
    for ext in (".yaml", ".yml", ".txt", ".json"):
        name = name.removesuffix(ext)
    return name.replace(":", "-")
