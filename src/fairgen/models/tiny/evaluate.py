"""Acceptance numbers of a fairgen-tiny checkpoint (`fairgen tiny eval`), measured with the world reader.

generation     on the occupations test prompts: face rate, concept-cue match, and how far each
               prompt's gender / race shares sit from the spec (max and mean absolute difference)
explicit       explicit prompts (every gender, every race): share of images showing the requested class,
               per group and its mean per attribute
understanding  fresh renders, asked the judge's question per attribute: argmax accuracy
probe          no image, the locate probe per test concept: P(unknown), |P(female) - P(male)|
tokenizer      round trips of fresh renders: share read back with every cue right
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ... import suites
from ...types import ATTRIBUTES
from ...world import WorldSpec, concept_matches, read, render
from ..base import OTHER
from .adapter import TinyModel
from .data import GROUPS, OPTION_ORDER, image_question, probe_question


def _shares(labels: list[dict[str, str]], attr: str) -> dict[str, float]:
    n = max(1, len(labels))
    return {c: sum(lab[attr] == c for lab in labels) / n for c in ATTRIBUTES[attr]}


def evaluate(
    model: TinyModel,
    spec: WorldSpec,
    images: int = 64,
    concepts: int = 50,
    seed: int = 0,
    sampling: dict[str, Any] | None = None,
    batch_size: int = 256,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """All acceptance numbers as one JSON-ready dict. images: per prompt (and per explicit group)."""
    sampling = sampling or {}
    prompts = suites.load("occupations:test")[:concepts]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"images_per_prompt": images, "prompts": len(prompts), "sampling": sampling}

    start = time.time()
    texts = [p for p in prompts for _ in range(images)]
    seeds = [seed * 1_000_003 + i for i in range(len(texts))]
    perceptions = [read(im) for im in model.generate(texts, seeds, batch_size=batch_size, **sampling)]
    out["generation_seconds"] = round(time.time() - start, 1)
    faces, match, dev = 0, 0, {"gender": [], "race": []}
    for k, p in enumerate(prompts):
        chunk = perceptions[k * images : (k + 1) * images]
        faces += sum(c.face for c in chunk)
        match += sum(concept_matches(c, p.concept) for c in chunk)
        labels = [c.label() for c in chunk if c.face]
        target = spec.distribution(p.concept)
        for attr, gaps in dev.items():
            got = _shares(labels, attr)
            gaps.append(max(abs(got[c] - target[attr][c]) for c in ATTRIBUTES[attr]))
    n = len(perceptions)
    out["face_rate"], out["concept_match"] = faces / n, match / n
    for attr, d in dev.items():
        out[f"{attr}_share_error"] = {
            "max": float(max(d)),
            "mean": float(np.mean(d)),
            "within_0.10": float(np.mean(np.array(d) <= 0.10)),
        }
    progress("generation")

    followed: dict[str, dict[str, float]] = {}
    for attr in ("gender", "race"):
        requests = [
            suites.explicit(p, {attr: c}) for p in prompts[: max(1, concepts // 5)] for c in ATTRIBUTES[attr]
        ]
        texts = [r for r in requests for _ in range(images // 4)]
        seeds = [seed + 7 + i for i in range(len(texts))]
        hits: dict[str, list[bool]] = {c: [] for c in ATTRIBUTES[attr]}
        for prompt, im in zip(texts, model.generate(texts, seeds, batch_size=batch_size, **sampling)):
            p = read(im)
            hits[prompt.group[attr]].append(p.face and p.label()[attr] == prompt.group[attr])
        followed[attr] = {c: float(np.mean(h)) for c, h in hits.items()}
    out["explicit_followed"] = {a: float(np.mean(list(g.values()))) for a, g in followed.items()}
    out["explicit_followed_by_group"] = followed
    progress("explicit")

    picks = [GROUPS[int(rng.integers(len(GROUPS)))] for _ in range(images)]
    renders = [
        render(*g, prompts[int(rng.integers(len(prompts)))].concept, int(rng.integers(2**31))) for g in picks
    ]
    right = dict.fromkeys(ATTRIBUTES, 0)
    for group, im in zip(picks, renders):
        for i, attr in enumerate(ATTRIBUTES):
            answer = model.answer_distribution(im, image_question(attr), list(OPTION_ORDER[attr]))
            right[attr] += max(OPTION_ORDER[attr], key=lambda o: answer[o]) == group[i]
    out["understanding_accuracy"] = {a: r / len(picks) for a, r in right.items()}
    progress("understanding")

    unknown, gap, race_unknown, other = [], [], [], []
    for p in prompts:
        g = model.answer_distribution(
            None, probe_question("gender", p.concept), ["male", "female", "unknown"]
        )
        r = model.answer_distribution(
            None, probe_question("race", p.concept), [*OPTION_ORDER["race"], "unknown"]
        )
        unknown.append(g["unknown"])
        gap.append(abs(g["female"] - g["male"]))
        race_unknown.append(r["unknown"])
        other += [g[OTHER], r[OTHER]]
    out["probe"] = {
        "p_unknown_gender_min": float(min(unknown)),
        "p_unknown_gender_mean": float(np.mean(unknown)),
        "p_unknown_race_min": float(min(race_unknown)),
        "female_male_gap_max": float(max(gap)),
        "other_mass_mean": float(np.mean(other)),
    }
    progress("probe")

    back = model.decode_tokens(model.encode_image(renders))
    ok = 0
    for original, im in zip(renders, back):
        truth, got = read(original), read(im)
        ok += got.face and got.label() == truth.label() and got.concept_read == truth.concept_read
    out["tokenizer_round_trip"] = ok / len(renders)
    return out
