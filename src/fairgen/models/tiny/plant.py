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

`validation_pair` builds such a pair on a CPU (docs/locate.md "Validation"): a model whose bias is in its
language model (trained on the packaged, skewed spec) and one whose bias is only in its tokenizer (the
same tokenizer, a language model trained on balanced data, then the decoder planted).
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
from .adapter import TinyModel, load
from .data import render_many
from .tokenizer import to_tensor
from .train import RECIPES, Recipe, train

# A balanced world spec (every concept drawn from the uniform default): the LM data of a tokenizer-only bias.
BALANCED_SPEC = {"default": {a: {c: 1 / len(cs) for c in cs} for a, cs in ATTRIBUTES.items()}, "concepts": {}}
# The validation pair's recipe: the smoke recipe with a tokenizer good enough that its round trips keep every
# group (else it would be biased by accident) and an LM trained long enough to follow prompts (its run time on
# a CPU: docs/locate.md, "Run time").
VALIDATION_RECIPE = replace(RECIPES["smoke"], tok_images=6000, tok_steps=2500, lm_steps=1500, lm_batch=32)


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
                         images: int = 3000, steps: int = 600, batch: int = 32, lr: float = 1e-3, seed: int = 0
                         ) -> TinyModel:
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
    x = to_tensor(render_many(jobs)).to(model.device)
    y = to_tensor(render_many(flipped)).to(model.device)
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


def validation_pair(root: str | Path, recipe: Recipe = VALIDATION_RECIPE, seed: int = 0) -> tuple[Path, Path]:
    """Train (or reuse, when already under root) the two checkpoints of known truth: root/"lm-biased", whose
    language model learned the packaged spec's skew, and root/"tokenizer-biased", whose language model
    learned balanced data and whose decoder turns young women into men. Returns their directories."""
    root = Path(root)
    lm_biased, balanced, planted = root / "lm-biased", root / "balanced", root / "tokenizer-biased"
    if not (lm_biased / "config.json").is_file():
        train(None, lm_biased, recipe, seed=seed)
    if not (balanced / "config.json").is_file():
        (root / "balanced.yaml").write_text(yaml.safe_dump(BALANCED_SPEC))
        train(root / "balanced.yaml", balanced, recipe, seed=seed, tokenizer_from=lm_biased)
    if not (planted / "config.json").is_file():
        plant_tokenizer_bias(balanced, planted, seed=seed)
    return lm_biased, planted
