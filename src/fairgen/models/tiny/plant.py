"""Plant a bias in fairgen-tiny's vision tokenizer decoder: a checkpoint with known truth for locate.

The decoder is fine-tuned so that reconstructions of one group show another: by default young women's
long hair comes back short, so the world reader (and any viewer) reads them as men. The encoder is frozen,
so every image still gets exactly the same codes: the language model is untouched (whatever it learned,
balanced or not, it still generates the same codes), the tokenizer's embeddings still encode gender
perfectly well, and only the decoding of one group changes. Targets are counterfactual renders: the same
seed and concept with the one attribute swapped (render.py guarantees they differ only in that cue).

Pair it with a language model trained on balanced data for a model whose only bias is in its tokenizer:

    fairgen tiny train --spec balanced.yaml --tokenizer-from tiny_weights/ --out /tmp/balanced
    fairgen tiny plant-tokenizer-bias --model /tmp/balanced --out /tmp/tokenizer-biased

`plant_understanding_bias` teaches a balanced LM's blank-image answers a spec's stereotypes while its
generation examples stay balanced. `validation_set` builds the validation set of docs/locate.md from these
(`benchmarks/locate_validation.py` builds it and locates every variant).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn import functional as F

from ...types import ATTRIBUTES, FairgenError
from ...world import WorldSpec
from .adapter import PACKAGED, TinyModel, load
from .data import Mixture, render_many
from .tokenizer import to_tensor
from .train import RECIPES, Recipe, build_sampler, train, train_lm

# A balanced world spec (every concept drawn from the uniform default): the LM data of a tokenizer-only bias.
BALANCED_SPEC = {"default": {a: {c: 1 / len(cs) for c in cs} for a, cs in ATTRIBUTES.items()}, "concepts": {}}


def _check(attribute: str, source: str, target: str, only: Mapping[str, str]) -> None:
    if attribute not in ATTRIBUTES:
        raise FairgenError(f"unknown attribute {attribute!r} (known: {', '.join(ATTRIBUTES)})")
    for cls in (source, target):
        if cls not in ATTRIBUTES[attribute]:
            raise FairgenError(f"unknown {attribute} class {cls!r} (known: {', '.join(ATTRIBUTES[attribute])})")
    if source == target:
        raise FairgenError("the planted flip needs two different classes")
    for a, c in only.items():
        if a not in ATTRIBUTES or a == attribute or c not in ATTRIBUTES[a]:
            raise FairgenError(f"--only {a}={c}: not a class of another attribute")


def plant_tokenizer_bias(checkpoint: str | Path | TinyModel, out: str | Path, attribute: str = "gender",
                         source: str = "female", target: str = "male", only: Mapping[str, str] | None = None,
                         images: int = 3000, steps: int = 600, batch: int = 32, lr: float = 1e-3, seed: int = 0,
                         workers: int = 1) -> TinyModel:
    """Fine-tune the decoder so that `source` renders (those also matching `only`, e.g. {"age": "young"})
    decode as `target`; save the checkpoint (same encoder and LM) to `out` and return it.

    images: distinct training renders (random groups; the checkpoint's training concepts and made-up ones);
    steps x batch: Adam steps on pixel MSE."""
    only = dict({"age": "young"} if only is None else only)
    _check(attribute, source, target, only)
    if images < batch or steps < 1 or batch < 1:
        raise FairgenError("plant: need images >= batch >= 1 and steps >= 1")
    model = checkpoint if isinstance(checkpoint, TinyModel) else load(checkpoint)
    started = time.time()
    rng = np.random.default_rng([seed, 7])
    torch.manual_seed(seed)
    known = list((model.training or {}).get("concepts") or [])
    names = known + [f"plant concept {i}" for i in range(256)]
    jobs, flipped = [], []
    for _ in range(images):
        truth = {a: cs[int(rng.integers(len(cs)))] for a, cs in ATTRIBUTES.items()}
        job = (truth["gender"], truth["race"], truth["age"], names[int(rng.integers(len(names)))], int(rng.integers(2**31)))
        jobs.append(job)
        flip = truth[attribute] == source and all(truth[a] == c for a, c in only.items())
        flipped.append((*(target if a == attribute else truth[a] for a in ATTRIBUTES), *job[3:]) if flip else job)
    x = to_tensor(render_many(jobs, workers)).to(model.device)
    y = to_tensor(render_many(flipped, workers)).to(model.device)
    tok = copy.deepcopy(model.tokenizer)  # the model passed in keeps its own decoder
    with torch.no_grad():
        values = torch.cat([tok._values(tok.encode(x[i:i + 256])) for i in range(0, len(x), 256)])
    tok.decoder.train()
    opt = torch.optim.Adam(tok.decoder.parameters(), lr=lr)
    for _ in range(steps):
        idx = torch.randint(len(values), (batch,), device=model.device)
        loss = F.mse_loss(tok.decoder(values[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    tok.eval()
    info: dict[str, Any] = {"attribute": attribute, "from": source, "to": target, "only": only, "images": images,
                            "steps": steps, "seed": seed, "final_loss": round(loss.item(), 5),
                            "base": str(model.directory) if model.directory else None,
                            "seconds": round(time.time() - started, 1)}
    planted = TinyModel(tok, model.lm, training={**(model.training or {}), "planted_tokenizer_bias": info},
                        words=model.vocab.words)
    planted.save(out)
    return planted


def plant_understanding_bias(checkpoint: str | Path | TinyModel, out: str | Path, recipe: Recipe,
                             stated: WorldSpec | None = None, steps: int = 400, unknown_share: float = 0.3,
                             seed: int = 0) -> TinyModel:
    """Continue training a checkpoint's language model (trained with `recipe` on balanced data) on a mixture
    whose blank-image answers that name a group follow `stated` (default: the packaged skewed spec) for each
    concept, while its generation examples stay balanced: a model whose understanding states stereotypes
    its generation does not draw. Saves the checkpoint to `out` and returns it."""
    model = checkpoint if isinstance(checkpoint, TinyModel) else load(checkpoint)
    started = time.time()
    mix = Mixture(neutral=0.3, explicit=0.3, image_qa=0.1, blank_qa=0.3, unknown_share=unknown_share)
    recipe = replace(recipe, tokenizer=model.tokenizer.cfg, lm_steps=steps, warmup=10, lm_lr=recipe.lm_lr / 3,
                     mixture=mix)
    sampler = build_sampler(WorldSpec.from_dict(BALANCED_SPEC), model.tokenizer, recipe, seed, model.device)
    if sampler.vocab != model.vocab:
        raise FairgenError("plant_understanding_bias: the recipe's concepts differ from the checkpoint's")
    stated = stated or WorldSpec.default()
    sampler.answer_shares = {a: np.array([[stated.distribution(c)[a][k] for k in cs] for c in sampler.names])
                             for a, cs in ATTRIBUTES.items()}
    lm = train_lm(sampler, sampler.vocab, recipe, seed, model.device, lambda record: None, init=model.lm)
    info = {"stated_spec_sha256": stated.sha256(), "steps": steps, "unknown_share": unknown_share, "seed": seed,
            "seconds": round(time.time() - started, 1)}
    planted = TinyModel(model.tokenizer, lm, training={**(model.training or {}), "planted_understanding_bias": info},
                        words=model.vocab.words)
    planted.save(out)
    return planted


# The validation set's language models: fairgen-tiny's tokenizer (packaged, reused: its round trips keep every
# group), a 4-layer LM on the six first occupations, long enough that group words change its codes (an LM that
# cannot tell "female" from "male" has no group-reading to measure). About 20 s each on one H100.
VALIDATION_SET_RECIPE = replace(RECIPES["smoke"], n_layer=4, n_embd=128, renders_per_group=4, lm_steps=2500,
                                lm_batch=64, lm_lr=2e-3, warmup=100)
# (variant, what is planted where): the truth every verdict is checked against.
VALIDATION_TRUTH = {
    "lm-biased": {"understanding": "not biased", "tokenizer": "not biased", "language_model": "biased"},
    "no-bias": {"understanding": "not biased", "tokenizer": "not biased", "language_model": "not biased"},
    "tokenizer-gender": {"understanding": "not biased", "tokenizer": "biased", "language_model": "not biased"},
    "tokenizer-race": {"understanding": "not biased", "tokenizer": "biased", "language_model": "not biased"},
    "tokenizer-subgroup": {"understanding": "not biased", "tokenizer": "biased", "language_model": "not biased"},
    "understanding-biased": {"understanding": "biased", "tokenizer": "not biased", "language_model": "not biased"},
}
# Decoder plants: (attribute, from, to, only), each PLANT_STEPS Adam steps on PLANT_IMAGES render pairs.
PLANT_IMAGES, PLANT_STEPS = 1500, 300
VALIDATION_PLANTS = {
    "tokenizer-gender": ("gender", "female", "male", {"age": "young"}),
    "tokenizer-race": ("race", "black", "white", {"age": "young"}),
    "tokenizer-subgroup": ("race", "indian", "asian", {"gender": "female", "age": "old"}),
}


def validation_set(root: str | Path, device: str = "cpu", seed: int = 0, workers: int = 1) -> dict[str, Path]:
    """Build (or reuse, when already under root) the checkpoints of VALIDATION_TRUTH: an LM trained on the
    packaged skewed spec; one trained on balanced data (no bias anywhere), then its decoder planted three
    ways (gender for young faces, race for young faces, race for old women only) and its answers taught
    the spec's stereotypes. Returns {variant: directory}."""
    root = Path(root)
    dirs = {name: root / name for name in VALIDATION_TRUTH}

    def fresh(name: str) -> bool:
        return not (dirs[name] / "config.json").is_file()

    if fresh("lm-biased"):
        train(None, dirs["lm-biased"], VALIDATION_SET_RECIPE, seed=seed, device=device, tokenizer_from=PACKAGED)
    if fresh("no-bias"):
        (root / "balanced.yaml").write_text(yaml.safe_dump(BALANCED_SPEC))
        train(root / "balanced.yaml", dirs["no-bias"], VALIDATION_SET_RECIPE, seed=seed, device=device,
              tokenizer_from=PACKAGED)
    base = load(dirs["no-bias"], device=device)
    for name, (attr, source, target, only) in VALIDATION_PLANTS.items():
        if fresh(name):
            plant_tokenizer_bias(base, dirs[name], attr, source, target, only, images=PLANT_IMAGES, steps=PLANT_STEPS,
                                 seed=seed, workers=workers)
    if fresh("understanding-biased"):
        plant_understanding_bias(base, dirs["understanding-biased"], VALIDATION_SET_RECIPE, seed=seed)
    return dirs
