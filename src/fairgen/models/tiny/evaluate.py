"""Acceptance numbers of a fairgen-tiny checkpoint (`fairgen tiny eval`), measured with the world reader.

generation     on the occupations test prompts: face rate, concept-cue match, and how far each
               prompt's gender / race shares sit from the spec (max and mean absolute difference)
explicit       explicit prompts (every gender, every race, on every test prompt): share of images
               showing the requested class, per group and its mean per attribute
               (both under the checkpoint's default sampling, and again under RAW_SAMPLING: `raw`)
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
from .adapter import RAW_SAMPLING, TinyModel
from .data import GROUPS, OPTION_ORDER, image_question, probe_question


def _shares(labels: list[dict[str, str]], attr: str) -> dict[str, float]:
    n = max(1, len(labels))
    return {c: sum(lab[attr] == c for lab in labels) / n for c in ATTRIBUTES[attr]}


def _generate(model: TinyModel, texts: list, seeds: list[int], sampling: dict[str, Any],
              batch_size: int) -> list:
    """model.generate in calls of at most batch_size images."""
    return [im for i in range(0, len(texts), batch_size)
            for im in model.generate(texts[i:i + batch_size], seeds[i:i + batch_size], **sampling)]


def _generation(model: TinyModel, spec: WorldSpec, prompts: list, images: int, seed: int,
                sampling: dict[str, Any], batch_size: int) -> dict[str, Any]:
    """Face rate, cue match and share errors over `images` images per prompt, and explicit adherence over
    images // 4 images per (prompt, group), under these sampling settings."""
    out: dict[str, Any] = {}
    start = time.time()
    texts = [p for p in prompts for _ in range(images)]
    seeds = [seed * 1_000_003 + i for i in range(len(texts))]
    perceptions = [read(im) for im in _generate(model, texts, seeds, sampling, batch_size)]
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

    followed: dict[str, dict[str, float]] = {}
    for attr in ("gender", "race"):
        requests = [suites.explicit(p, {attr: c}) for p in prompts for c in ATTRIBUTES[attr]]
        texts = [r for r in requests for _ in range(max(1, images // 4))]
        seeds = [seed + 7 + i for i in range(len(texts))]
        hits: dict[str, list[bool]] = {c: [] for c in ATTRIBUTES[attr]}
        for prompt, im in zip(texts, _generate(model, texts, seeds, sampling, batch_size)):
            p = read(im)
            hits[prompt.group[attr]].append(p.face and p.label()[attr] == prompt.group[attr])
        followed[attr] = {c: float(np.mean(h)) for c, h in hits.items()}
    out["explicit_followed"] = {a: float(np.mean(list(g.values()))) for a, g in followed.items()}
    out["explicit_followed_by_group"] = followed
    out["explicit_images_per_group"] = len(prompts) * max(1, images // 4)
    return out


def evaluate(
    model: TinyModel,
    spec: WorldSpec,
    images: int = 64,
    concepts: int = 50,
    seed: int = 0,
    batch_size: int = 256,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """All acceptance numbers as one JSON-ready dict. images: per prompt (a quarter of it per explicit
    prompt and group, on every one of the `concepts` prompts).

    Generation and explicit adherence are measured twice: under the checkpoint's default sampling (top
    level; `sampling` says what it is) and under RAW_SAMPLING (`raw`: cfg 1, temperature 1, no top-k /
    top-p, the learned distribution itself). A checkpoint without default sampling is measured once and
    `raw` repeats those numbers."""
    prompts = suites.load("occupations:test")[:concepts]
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"images_per_prompt": images, "prompts": len(prompts),
                           "sampling": {**RAW_SAMPLING, **model.default_sampling}}
    out.update(_generation(model, spec, prompts, images, seed, {}, batch_size))
    progress("generation and explicit prompts")
    raw = {k: v for k, v in out.items() if k not in ("images_per_prompt", "prompts", "sampling")}
    if model.default_sampling:
        raw = _generation(model, spec, prompts, images, seed, dict(RAW_SAMPLING), batch_size)
        progress("the same without the default sampling")
    out["raw"] = {"sampling": dict(RAW_SAMPLING), **raw}

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
