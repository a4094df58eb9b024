"""Vision tokenizer audit on attribute-balanced labelled images.

(a) Round trip: encode -> decode -> perceive again. For each attribute and true group g, among images
    whose original is perceived with a face and as g (so perception errors are not blamed on the
    tokenizer), the survival rate is the share whose reconstruction still shows a face perceived as g.
    The *gap* is max_g - min_g of the survival rates: a tokenizer that blurs every group alike has a gap
    near 0 however low its survival; one that turns one group into another has a large gap. Its interval
    is a bootstrap resampling images within each group (the gap's max and min are taken again in every
    replicate, so choosing the extreme groups is part of what is resampled) at level 1 - ALPHA / (looks x
    attributes): the images are read in looks of doubling size until every attribute is decided
    (sequential.py).
(b) Linear probes: can each attribute be read linearly from the tokenizer's embeddings (probes.py),
    per vision path a model exposes:
      tokenizer      `tokenizer_embeddings(images) -> [B, C, h, w]`: the code vectors of each image's
                     tokens on their grid, average-pooled to at most 8x8 cells and flattened
      understanding  `understanding_embeddings(images) -> [B, N, D]`: the understanding encoder's patch
                     features (Janus's SigLIP; Emu3's LM input embeddings of its codes), mean over N
    Balanced accuracy per group on a held-out 30%: the paper's Table 3. Encoding an attribute is not
    bias (a tokenizer must encode skin tone to reconstruct it); changing one group more than another is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..labelled import LabelledSet
from ..config import AuditConfig
from ..models.protocols import TokenizerFeatures, UnderstandingFeatures, VisionTokenizer
from ..metrics import percentile_interval
from ..types import ATTRIBUTES, FairgenError
from . import sequential
from .probes import probe_accuracy
from .verdict import tokenizer_decision

REPLICATES = 20000  # the intervals' tails are at ALPHA / (2 looks attributes), about 0.002
POOL = 8  # probe features: code-vector maps are average-pooled to at most POOL x POOL cells
NO_FACE = "no face"


def _images(labelled: LabelledSet, idx: Sequence[int]) -> list[Image.Image]:
    try:
        return [labelled.load(i).convert("RGB") for i in idx]
    except (OSError, ValueError) as e:
        raise FairgenError(f"labelled set {labelled.source}: cannot read an image ({e})") from None


def round_trip(model: Any, labelled: LabelledSet, backend: Any, batch_size: int = AuditConfig.batch_size, seed: int = 0,
               progress: Callable[[int, int], None] | None = None, base: int | None = None,
               looks: int = 1) -> dict[str, Any]:
    """Survival of each attribute through encode_image -> decode_tokens (module docstring), measured in
    looks of base, 2 base, ... images (sequential.py) until every attribute's verdict is decided.

    A world set (`world:N`, balanced in every prefix of 16) is read in order; any other in a seeded random
    order. Returns {"n_images" (read), "looks_used", "level", attr: {"groups": {g: {"n", "survived",
    "rate"}}, "flips": {g: {label: count}}, "gap", "gap_ci", "worst", "best", "decision"}} for each
    attribute both labelled and perceived; gap_ci is at `level` (Bonferroni over looks and attributes)."""
    if not isinstance(model, VisionTokenizer):
        raise FairgenError(f"model {model.spec} has no vision tokenizer round trip (no 'tokenize' capability)")
    attrs = [a for a in ATTRIBUTES if a in backend.attributes and any(a in t for t in labelled.truths)]
    flips = {a: {g: {} for g in ATTRIBUTES[a]} for a in attrs}
    n = len(labelled.truths)
    order = (np.arange(n) if labelled.source.startswith("world:")
             else np.random.default_rng([seed, 11]).permutation(n))
    sizes = [min(n, s) for s in sequential.look_sizes(base or n, looks)]
    z_level = sequential.level(looks, max(len(attrs), 1))
    rng = np.random.default_rng(seed)
    done, out = 0, {}
    for look, size in enumerate(sizes):
        for start in range(done, size, batch_size):
            idx = [int(i) for i in order[start:min(size, start + batch_size)]]
            images = _images(labelled, idx)
            back = model.decode_tokens(model.encode_image(images))
            for i, before, after in zip(idx, backend.perceive(images), backend.perceive(back)):
                truth = labelled.truths[i]
                for a in attrs:
                    g = truth.get(a)
                    if g is None or not before.face or before.label().get(a) != g:
                        continue  # the original is not perceived as its truth: not the tokenizer's doing
                    seen = after.label().get(a, NO_FACE) if after.face else NO_FACE
                    flips[a][g][seen] = flips[a][g].get(seen, 0) + 1
            if progress:
                progress(min(size, start + batch_size), sizes[-1])
        done = size
        out = {"n_images": size, "looks_used": look + 1, "looks": looks, "level": z_level}
        for a in attrs:
            out[a] = _survival(flips[a], a, rng, z_level)
        if size >= n or all(out[a]["decision"] is not None for a in attrs):
            break
    return out


def _survival(flips: dict[str, dict[str, int]], attr: str, rng: np.random.Generator, level: float
              ) -> dict[str, Any]:
    """Survival rates, their best - worst gap and its bootstrap interval at `level`, and the decision."""
    groups = [g for g in ATTRIBUTES[attr] if flips[g]]
    totals = np.array([sum(flips[g].values()) for g in groups])
    kept = np.array([flips[g].get(g, 0) for g in groups])
    rates = kept / np.maximum(totals, 1)
    entry: dict[str, Any] = {
        "groups": {g: {"n": int(t), "survived": int(s), "rate": float(r)}
                   for g, t, s, r in zip(groups, totals, kept, rates)},
        "flips": {g: dict(v) for g, v in flips.items()}, "gap": None, "gap_ci": [None, None], "worst": None,
        "best": None, "decision": None}
    if len(groups) >= 2:
        # Within-group resampling of Bernoulli outcomes: a binomial draw per group and replicate.
        boot = rng.binomial(totals, rates, size=(REPLICATES, len(groups))) / totals
        lo, hi = percentile_interval(boot.max(axis=1) - boot.min(axis=1), level)
        entry.update(gap=float(rates.max() - rates.min()), gap_ci=[float(lo), float(hi)],
                     worst=groups[int(rates.argmin())], best=groups[int(rates.argmax())])
        entry["decision"] = tokenizer_decision(entry)
    return entry


def _pooled(maps: torch.Tensor) -> np.ndarray:
    """[B, C, h, w] -> [B, C * min(h, POOL) * min(w, POOL)] float32 (adaptive average pooling)."""
    h, w = maps.shape[-2:]
    return F.adaptive_avg_pool2d(maps.float(), (min(h, POOL), min(w, POOL))).flatten(1).cpu().numpy()


# path -> (the protocol that exposes it, its per-image features [B, F]).
VISION_PATHS: dict[str, tuple[type, Callable[[Any, list[Image.Image]], np.ndarray]]] = {
    "tokenizer": (TokenizerFeatures, lambda m, ims: _pooled(m.tokenizer_embeddings(ims))),
    "understanding": (UnderstandingFeatures,
                      lambda m, ims: m.understanding_embeddings(ims).float().mean(dim=1).cpu().numpy()),
}


def vision_probes(model: Any, labelled: LabelledSet, batch_size: int = AuditConfig.batch_size, seed: int = 0) -> dict[str, Any]:
    """Held-out linear-probe accuracy of every labelled attribute from every vision path the model exposes.

    Returns {path: {"features": F, attr: probes.probe_accuracy(...)}}; {} when the model exposes none."""
    paths = [p for p, (protocol, _) in VISION_PATHS.items() if isinstance(model, protocol)]
    feats: dict[str, list[np.ndarray]] = {p: [] for p in paths}
    n = len(labelled.truths)
    for start in range(0, n, batch_size):
        images = _images(labelled, range(start, min(n, start + batch_size)))
        for p in paths:
            feats[p].append(VISION_PATHS[p][1](model, images))
    out: dict[str, Any] = {}
    for p in paths:
        x = np.concatenate(feats[p])
        out[p] = {"features": int(x.shape[1])}
        for a, classes in ATTRIBUTES.items():
            keep = np.array([a in t for t in labelled.truths])
            if keep.sum() < 2 * len(classes):
                continue
            y = np.array([classes.index(t[a]) for t in labelled.truths if a in t])
            out[p][a] = probe_accuracy(x[keep], y, classes, seed=seed)
    return out
