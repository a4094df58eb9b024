"""Show-o's parallel decoding (upstream `Showo.t2i_generate`, MaskGIT-style) with per-image random streams,
and the masked-token likelihood surrogate fairgen's fix trains on.

One sampling step, all rows at once (N image positions, K codes):

    logits  = (1 + w) * cond - w * uncond         guided code logits [B, N, K]; w = cfg - 1 (upstream's
                                                  guidance_scale; fairgen's cfg is the usual scale 1 + w)
    sampled = draw(softmax(logits), u)            a code for every position (models/sampling.draw);
                                                  kept codes stay as they are
    ratio   = (step + 1) / steps
    n_mask  = clamp(floor(N * cos(ratio * pi/2)), 1, still_masked - 1)
    tau     = tau * (1 - ratio)                   upstream decays the noise temperature multiplicatively
    conf    = log p(sampled) + tau * gumbel       (+inf-like for codes fixed at earlier steps)
    the n_mask least confident positions are masked again; the last step's `sampled` is the image.

upstream draws with torch.multinomial and uniform_ from one generator for the whole batch; fairgen draws
the same distributions by inverse CDF from each image's own uniforms (`Noise`, from models/sampling.py's
per-image stream), so an image depends only on its seed. Given the same uniforms the two are the same
computation (the equivalence fixtures feed upstream's loop and this one the same uniforms).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..types import FairgenError
from . import sampling as common
from .show_o_lm import TEXT_LEN, CachedPrefix, additive, t2i_allowed

LogitsFn = Callable[[torch.Tensor], torch.Tensor]  # codes [R, N] (mask id where masked) -> fp32 [R, N, K]


@dataclass(frozen=True)
class Settings:
    """cfg: guidance scale (1 = none; upstream's guidance_scale w is cfg - 1). steps: unmasking steps.
    temperature: the initial Gumbel temperature of the re-masking choice (upstream's generation_temperature;
    codes themselves are drawn at temperature 1, as upstream does)."""

    cfg: float
    steps: int
    temperature: float = 1.0

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "guidance_scale": self.cfg - 1.0}


def resolve(defaults: Settings, given: dict[str, Any], family: str) -> Settings:
    """generate()'s keyword arguments over the checkpoint's defaults, through the common settings
    (models/sampling.py: unknown keys refused) plus `steps`; top_p / top_k have no meaning here."""
    base = common.Sampling(cfg=defaults.cfg, temperature=defaults.temperature)
    s = base.resolve(given, family, extra=("steps",))
    if s.top_p != 1.0 or s.top_k is not None:
        raise FairgenError(f"{family}: parallel decoding has no top_p / top_k (upstream draws every code from "
                           f"the full distribution); leave them unset")
    steps = given.get("steps")
    steps = defaults.steps if steps is None else steps
    if s.cfg < 1.0 or int(steps) != steps or steps < 1:
        raise FairgenError(f"{family}: need cfg >= 1 (upstream's guidance scale cfg - 1 >= 0) and a whole "
                           f"number of steps >= 1 (got cfg {s.cfg}, steps {steps})")
    return Settings(cfg=s.cfg, steps=int(steps), temperature=s.temperature)


# Upstream's demo settings (README commands): 512 px w = 5 with 50 steps; 256 px w = 1.75 with 16 steps.
DEFAULT_512 = Settings(cfg=6.0, steps=50, temperature=1.0)
DEFAULT_256 = Settings(cfg=2.75, steps=16, temperature=1.0)


def defaults_for(n_tokens: int) -> Settings:
    """The 512 px settings for 1024-token checkpoints, the 256 px ones otherwise."""
    return DEFAULT_512 if n_tokens >= 1024 else DEFAULT_256


class Noise:
    """The sampler's uniforms: `cat` [B, steps, N] for drawing codes and `gumbel` [B, steps, N] for the
    re-masking noise, float32."""

    def __init__(self, cat: torch.Tensor, gumbel: torch.Tensor) -> None:
        self.cat, self.gumbel = cat.float(), gumbel.float()

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], steps: int, n: int, device: torch.device) -> Noise:
        """Each image's numbers from its own counter-based stream (models/sampling.py): positions
        0..steps*N-1 draw codes, the next steps*N the Gumbel noise."""
        table = common.uniform_table(seeds, 2 * steps * n, device).view(len(seeds), 2, steps, n)
        return cls(table[:, 0], table[:, 1])


def gumbel(u: torch.Tensor) -> torch.Tensor:
    """Gumbel noise from uniforms, with upstream's clamp of both logarithms at 1e-20."""
    inner = -torch.log(u.clamp(min=1e-20))
    return -torch.log(inner.clamp(min=1e-20))


def unmask(logits_fn: LogitsFn, batch: int, n: int, mask_id: int, s: Settings, noise: Noise) -> torch.Tensor:
    """Run the sampler (module docstring) -> codes LongTensor [B, N]."""
    codes = torch.full((batch, n), mask_id, dtype=torch.long, device=noise.cat.device)
    w, tau, sampled = s.cfg - 1.0, float(s.temperature), codes
    for step in range(s.steps):
        logits = logits_fn(codes)
        if w > 0:
            cond, uncond = logits.chunk(2)
            logits = (1 + w) * cond - w * uncond
        probs = logits.softmax(dim=-1)
        unknown = codes == mask_id
        drawn = common.draw(probs.flatten(0, 1), noise.cat[:, step].flatten().double()).view_as(codes)
        sampled = torch.where(unknown, drawn, codes)
        ratio = (step + 1) / s.steps
        mask_ratio = torch.cos(torch.tensor(ratio) * math.pi * 0.5)  # float32, as upstream
        selected = probs.gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        selected = torch.where(unknown, selected, torch.finfo(selected.dtype).max)
        n_mask = (n * mask_ratio).floor().to(codes.device).view(1, 1)
        n_mask = torch.maximum(torch.ones_like(n_mask), torch.minimum(unknown.sum(-1, keepdim=True) - 1, n_mask))
        tau = tau * (1.0 - ratio)
        confidence = torch.log(selected.clamp(min=1e-20)) + tau * gumbel(noise.gumbel[:, step])
        cut = confidence.sort(dim=-1).values.gather(1, n_mask.long())
        codes = torch.where(confidence < cut, mask_id, sampled)
    return sampled


def prefix_logits(model: Any, text: torch.Tensor) -> LogitsFn:
    """The fast path's logits function (inference only): the text rows [R, 129] go through the LM once;
    each step runs only the image span against their cached keys and values (show_o_lm.CachedPrefix),
    with each layer's input projections fused into one matrix product, and the head only over the code
    rows. Inside, the rows are ordered by how much left padding they have (the prompts' rows together,
    the empty prompts' together), so that rows sharing their visible keys attend in one unmasked call;
    the logits come back in the caller's row order."""
    embed, pad = model.lm.model.embed_tokens, model.ids["pad"]
    order = (text != pad).sum(1).argsort(descending=True, stable=True)
    same = bool((order == torch.arange(len(order), device=order.device)).all())
    text = text if same else text[order]
    back = None if same else order.argsort()
    with torch.no_grad():
        kv = model.runner.prefix(embed(text), additive(t2i_allowed(text, pad, 0), model.dtype))
        prefix = CachedPrefix(kv, text != pad, model.n_tokens + 2, model.runner.fused_inputs())
    twins = text.shape[0]

    @torch.no_grad()
    def logits(codes: torch.Tensor) -> torch.Tensor:
        rows = codes if codes.shape[0] == twins else codes.repeat(twins // codes.shape[0], 1)
        rows = rows if same else rows[order]
        hidden, _ = model.runner.run(embed(model.span_ids(rows)), None, start=TEXT_LEN, prefix=prefix)
        hidden = hidden[:, 1:-1] if same else hidden[back, 1:-1]
        return model.code_head(hidden).float()

    return logits


# The surrogate's mask ratios: the cosine schedule at the midpoints of 4 equal time intervals, the
# quadrature of Show-o's training objective E_t[CE on the cos(pi t / 2) share of masked codes].
SURROGATE_RATIOS = tuple(math.cos(math.pi / 2 * (k + 0.5) / 4) for k in range(4))


def masked_logprob(logits_fn: LogitsFn, tokens: torch.Tensor, mask_id: int, seed: int = 0,
                   ratios: Sequence[float] = SURROGATE_RATIOS) -> torch.Tensor:
    """Surrogate of log p(codes | prompt) per token: for each mask ratio r, mask round(r N) positions (a
    permutation fixed by seed and r, the same for every row) and average log p(true code) over them; then
    average over the ratios. float32 [B]; differentiable through logits_fn; deterministic per seed."""
    n = tokens.shape[1]
    total = tokens.new_zeros(tokens.shape[0], dtype=torch.float32)
    for k, r in enumerate(ratios):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + k)).to(tokens.device)
        masked = order < max(1, round(r * n))
        logits = logits_fn(torch.where(masked, mask_id, tokens))
        logp = torch.log_softmax(logits.float(), -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
        total = total + (logp * masked).sum(-1) / masked.sum()
    return total / len(ratios)


def checkerboard_logits(logits_fn: LogitsFn, tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Code logits [B, N, K] of every position of a square grid, predicted with its own checkerboard colour
    masked and the other colour given: two forward passes."""
    n = tokens.shape[1]
    side = math.isqrt(n)
    idx = torch.arange(n, device=tokens.device)
    black = ((idx // side + idx % side) % 2 == 0) if side * side == n else idx % 2 == 0
    first = logits_fn(torch.where(black, mask_id, tokens))
    second = logits_fn(torch.where(~black, mask_id, tokens))
    return torch.where(black.view(1, -1, 1), first, second)
