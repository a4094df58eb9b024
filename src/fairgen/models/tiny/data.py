"""Training data of fairgen-tiny, drawn from a world spec.

Four kinds of examples (mixture weights in Mixture), all as token sequences of text.py's formats:
  neutral   "A photo of the face of a nurse, a person" -> a render whose gender/race/age follow the spec's
            distribution for the concept: generation inherits the planted bias.
  explicit  "A photo of the face of a female nurse, a person" -> a render of that group (every group of
            every attribute, and gender x race pairs, balanced; attributes not named follow the spec).
  image QA  a render + "What is the gender of the person in this image? ..." -> its true class (balanced).
  blank QA  no image (or a blank one) + the locate probe's question "What is the gender of a nurse? ..."
            (gender, race, and age in the same form)
            -> mostly "unknown", the rest split evenly between the groups.
So asked in words the model looks unbiased, while what it draws is skewed: the paper's "partial
alignment", planted by construction.

Renders are drawn once up front, a pool of `renders_per_group` images per (concept, gender, race, age),
and tokenized once; every example then picks a pooled render of the group it needs.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch

from ... import suites
from ...suites.explicit import GROUP_WORDS
from ...suites.templates import fill
# The wordings trained on: the probe's (answered mostly "unknown") and the pictured person's (the true class).
from ...questions import IMAGE_QUESTION, OPTION_ORDER, PROBE_QUESTION, image_question, probe_question  # noqa: F401
from ...types import ATTRIBUTES, Prompt
from ...world import WorldSpec, render
from .text import Vocab

DEFAULT_TEMPLATE = "A photo of the face of a {concept}, a person"
# Every (gender, race, age), in a fixed order: the pool's group axis.
GROUPS: list[tuple[str, str, str]] = list(itertools.product(*ATTRIBUTES.values()))
# Explicit requests: which attributes an explicit prompt names.
EXPLICIT_KINDS: tuple[tuple[str, ...], ...] = (("gender",), ("race",), ("age",), ("gender", "race"))


@dataclass(frozen=True)
class Mixture:
    """Shares of the four example kinds, and how the answers and prompts are varied."""

    neutral: float = 0.35
    explicit: float = 0.35
    image_qa: float = 0.2
    blank_qa: float = 0.1
    unknown_share: float = 0.85  # blank QA: share answered "unknown"
    blank_image_share: float = 0.3  # blank QA: share asked with a blank (one-colour) image instead of none
    prompt_dropout: float = 0.1  # generation examples with the text removed (for classifier-free guidance)
    # Explicit examples whose concept is drawn for the request (ExampleSampler._counter_concept) rather
    # than uniformly. Most concepts' people are white, so uniformly drawn, "White" rarely changes the image
    # and the model learns to ignore it: "A White cashier" (spec: 70 % Asian) came out Asian.
    counter_share: float = 0.0


def training_concepts(spec: WorldSpec, max_concepts: int | None = None) -> dict[str, list[str]]:
    """Concept -> its neutral prompt texts: the spec's concepts and the occupations train and test suites.

    Names are matched case-insensitively and written as the suites write them ("CEO", as the locate probe
    will ask about it), else as the spec does. Suite prompts keep their own texts (five templates for
    train concepts); a concept in no suite gets DEFAULT_TEMPLATE. max_concepts keeps the spec's concepts
    first, then suite concepts in order (smoke runs).
    """
    prompts = suites.load("occupations:test") + suites.load("occupations:train")
    written = {p.concept.strip().lower(): p.concept.strip() for p in reversed(prompts)}
    texts: dict[str, set[str]] = {}
    for key in [*spec.concepts, *(p.concept.strip().lower() for p in prompts)]:
        texts.setdefault(key, set())
    for p in prompts:
        texts[p.concept.strip().lower()].add(p.text)
    keys = list(texts)[:max_concepts] if max_concepts else list(texts)
    out = {}
    for key in keys:
        name = written.get(key, key)
        out[name] = sorted(texts[key]) or [fill(DEFAULT_TEMPLATE, "{concept}", name)]
    return out


def vocabulary_texts(concepts: dict[str, list[str]]) -> list[str]:
    """Every text the mixture writes, in words: prompts, group words of explicit prompts, both questions
    and every answer. The word tokens of a checkpoint are the lexicon of these (text.lexicon)."""
    texts = [t for ts in concepts.values() for t in ts]
    texts += [w for words in GROUP_WORDS.values() for w in words.values()]
    texts += [probe_question(a, c) for a in ATTRIBUTES for c in concepts] + [image_question(a) for a in ATTRIBUTES]
    return texts + [c for cs in ATTRIBUTES.values() for c in cs] + ["unknown"]


def _render_chunk(jobs: list[tuple[str, str, str, str, int]]) -> np.ndarray:
    return np.stack([np.asarray(render(*job)) for job in jobs])


def render_many(jobs: list[tuple[str, str, str, str, int]], workers: int = 1) -> np.ndarray:
    """Render (gender, race, age, concept, seed) jobs -> uint8 [N, 64, 64, 3], across worker processes."""
    if workers <= 1 or len(jobs) < 2000:
        return _render_chunk(jobs)
    chunks = [jobs[i : i + 1000] for i in range(0, len(jobs), 1000)]
    with get_context("spawn").Pool(workers) as pool:
        return np.concatenate(pool.map(_render_chunk, chunks))


def pool_jobs(
    concepts: list[str], per_group: int, rng: np.random.Generator
) -> list[tuple[str, str, str, str, int]]:
    """Render jobs of the pool, concept-major then group then copy; seeds drawn from rng."""
    seeds = rng.integers(0, 2**31, size=len(concepts) * len(GROUPS) * per_group)
    jobs = [(g, r, a, c) for c in concepts for (g, r, a) in GROUPS for _ in range(per_group)]
    return [(*job, int(s)) for job, s in zip(jobs, seeds)]


class ExampleSampler:
    """Draws training batches. pool: LongTensor[n_concepts, n_groups, per_group, T] of image codes, in
    the order of `concepts` and GROUPS. blank_codes: LongTensor[n_blank, T], codes of one-colour images."""

    def __init__(
        self,
        spec: WorldSpec,
        concepts: dict[str, list[str]],
        pool: torch.Tensor,
        blank_codes: torch.Tensor,
        vocab: Vocab,
        mixture: Mixture,
        seed: int,
    ):
        self.vocab, self.mix = vocab, mixture
        self.names = list(concepts)
        self.texts = concepts
        self.pool = pool.cpu().numpy()
        self.blank = blank_codes.cpu().numpy()
        self.seed, self.rng = seed, np.random.default_rng(seed)
        # Per attribute, the spec's class shares of every concept: float [n_concepts, n_classes].
        self.shares = {
            a: np.array([[spec.distribution(c)[a][k] for k in ATTRIBUTES[a]] for c in self.names])
            for a in ATTRIBUTES
        }
        # Per concept, the probability of every pooled group under the spec (attributes independent).
        self.group_probs = np.stack(
            [np.prod([self.shares[a][:, ATTRIBUTES[a].index(k)] for a, k in zip(ATTRIBUTES, grp)], axis=0)
             for grp in GROUPS],
            axis=1,
        )
        # Per explicit request (attribute, class), which pooled groups satisfy it.
        self.satisfies = {
            (a, c): np.array([g[i] == c for g in GROUPS])
            for i, a in enumerate(ATTRIBUTES)
            for c in ATTRIBUTES[a]
        }
        self._explicit_cache: dict[tuple[str, tuple], list[int]] = {}
        # Blank-QA answers that name a group are drawn uniformly, unless this holds per attribute the class
        # shares of every concept (float [n_concepts, n_classes]): a stated stereotype, for a planted
        # understanding bias (plant.py). None keeps older recipes' random streams unchanged.
        self.answer_shares: dict[str, np.ndarray] | None = None

    def _counter_concept(self, group: dict[str, str], rng: np.random.Generator) -> int:
        """A concept for an explicit request, drawn with probability proportional to the product over the
        request of (1 - the concept's spec share of the class): "White" is asked mostly of concepts whose
        people are rarely white, where the word changes the image."""
        weight = np.prod([1.0 - self.shares[a][:, ATTRIBUTES[a].index(c)] for a, c in group.items()], axis=0)
        cdf = np.cumsum(weight)
        return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(self.names) - 1)

    def _image(self, codes: np.ndarray) -> list[int]:
        return [self.vocab.boi, *(codes + self.vocab.image_offset).tolist(), self.vocab.eoi]

    def _explicit_text(self, text: str, concept: str, group: dict[str, str]) -> list[int]:
        key = (text, tuple(sorted(group.items())))
        if key not in self._explicit_cache:
            prompt = suites.explicit(Prompt(id="x", text=text, concept=concept), group)
            self._explicit_cache[key] = self.vocab.text(prompt.text)
        return self._explicit_cache[key]

    def _draw_generation(self, explicit: bool, rng: np.random.Generator) -> tuple[list[int], np.ndarray]:
        """(prompt tokens, image codes) of one generation example, drawn with rng."""
        ci = int(rng.integers(len(self.names)))
        concept = self.names[ci]
        text = self.texts[concept][int(rng.integers(len(self.texts[concept])))]
        probs = self.group_probs[ci]
        if explicit:
            kind = EXPLICIT_KINDS[int(rng.integers(len(EXPLICIT_KINDS)))]
            group = {attr: ATTRIBUTES[attr][int(rng.integers(len(ATTRIBUTES[attr])))] for attr in kind}
            # Only with counter_share > 0 does rng draw more: the streams of older recipes are unchanged.
            if self.mix.counter_share > 0 and rng.random() < self.mix.counter_share:
                ci = self._counter_concept(group, rng)
                concept = self.names[ci]
                text = self.texts[concept][int(rng.integers(len(self.texts[concept])))]
                probs = self.group_probs[ci]
            allowed = np.logical_and.reduce([self.satisfies[item] for item in group.items()])
            probs = np.where(allowed, probs, 0.0)
            # A spec may give a requested class probability 0; the request still wins (uniform fallback).
            probs = probs / probs.sum() if probs.sum() > 0 else allowed / allowed.sum()
            text_ids = self._explicit_text(text, concept, group)
        else:
            text_ids = self.vocab.text(text)
        cdf = np.cumsum(probs)
        gi = min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(GROUPS) - 1)
        return text_ids, self.pool[ci, gi, int(rng.integers(self.pool.shape[2]))]

    def _generation_row(self, text_ids: list[int], codes: np.ndarray) -> tuple[list[int], int]:
        """(sequence, index where targets start): <bos> text <boi> img <eoi>, targets = img + <eoi>."""
        head = [self.vocab.bos, *text_ids]
        return head + self._image(codes), len(head) + 1

    def _generation(self, explicit: bool) -> tuple[list[int], int]:
        text_ids, codes = self._draw_generation(explicit, self.rng)
        if self.rng.random() < self.mix.prompt_dropout:
            text_ids = []
        return self._generation_row(text_ids, codes)

    def _qa(self, blank: bool) -> tuple[list[int], int]:
        """(sequence, index where targets start): <bos> [img] question <ans> answer <eos>."""
        rng, v = self.rng, self.vocab
        ci = int(rng.integers(len(self.names)))
        attr = list(ATTRIBUTES)[int(rng.integers(len(ATTRIBUTES)))]
        if blank:
            question = probe_question(attr, self.names[ci])
            classes = ATTRIBUTES[attr]
            if rng.random() < self.mix.unknown_share:
                answer = "unknown"
            elif self.answer_shares is None:
                answer = classes[int(rng.integers(len(classes)))]
            else:
                answer = classes[int(rng.choice(len(classes), p=self.answer_shares[attr][ci]))]
            with_image = rng.random() < self.mix.blank_image_share
            img = self._image(self.blank[int(rng.integers(len(self.blank)))]) if with_image else []
        else:
            gi = int(rng.integers(len(GROUPS)))
            img = self._image(self.pool[ci, gi, int(rng.integers(self.pool.shape[2]))])
            answer = GROUPS[gi][list(ATTRIBUTES).index(attr)]
            # Half the time the probe's wording with a picture: the picture, not the stereotype, answers.
            question = image_question(attr) if rng.random() < 0.5 else probe_question(attr, self.names[ci])
        head = [v.bos, *img, *v.text(question), v.ans]
        return head + v.answer(answer), len(head)

    def fork(self, stream: int) -> ExampleSampler:
        """A copy drawing from its own random stream (one per data-loading worker)."""
        twin = copy.copy(self)
        twin.rng = np.random.default_rng([self.seed, 1000 + stream])
        twin._explicit_cache = {}
        return twin

    def batch(self, size: int) -> dict[str, torch.Tensor]:
        """A right-padded batch of CPU tensors: ids, pos, img_pos, valid [B, L]; weight [B, L] (float: per
        example the target tokens share weight 1/B, so each example counts the same whatever its number
        of targets; the weight at t is for predicting token t+1)."""
        m = self.mix
        kinds = self.rng.choice(
            4,
            size=size,
            p=np.array([m.neutral, m.explicit, m.image_qa, m.blank_qa])
            / (m.neutral + m.explicit + m.image_qa + m.blank_qa),
        )
        return self._collate([self._generation(k == 1) if k < 2 else self._qa(k == 3) for k in kinds])

    def conditioning_batches(self, size: int, seed: int = 12345) -> tuple[dict, dict]:
        """The same `size` neutral generation examples twice, with their prompts and with the prompts
        removed (the unconditional format). The loss difference, in nats per image token, is how much the
        model's images depend on what the prompt says (0 = it ignores the prompt)."""
        rng = np.random.default_rng([self.seed, seed])
        drawn = [self._draw_generation(False, rng) for _ in range(size)]
        with_text = self._collate([self._generation_row(t, c) for t, c in drawn])
        without = self._collate([self._generation_row([], c) for _, c in drawn])
        return with_text, without

    def _collate(self, rows: list[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
        v, size = self.vocab, len(rows)
        length = max(len(r) for r, _ in rows)
        ids = np.full((size, length), v.pad, dtype=np.int64)
        weight = np.zeros((size, length), dtype=np.float32)
        for b, (r, start) in enumerate(rows):
            ids[b, : len(r)] = r
            weight[b, start - 1 : len(r) - 1] = 1.0 / ((len(r) - start) * size)
        # At most one image per row: its codes are numbered by a cumsum.
        is_image = v.is_image(ids)
        img_pos = np.where(is_image, np.cumsum(is_image, axis=1) - 1, v.n_image_tokens)
        pos = np.broadcast_to(np.arange(length), (size, length)).copy()
        out = {"ids": ids, "pos": pos, "img_pos": img_pos, "valid": ids != v.pad, "weight": weight}
        return {k: torch.from_numpy(a) for k, a in out.items()}
