"""Image-token sampling for fairgen-tiny: classifier-free guidance, temperature, top-k / top-p, and a
counter-based random stream per image.

Why a counter-based stream: a shared torch.Generator hands out numbers in batch order, so an image would
depend on what else is in its batch. Here the uniform number for image token t of an image with seed s is a
pure function hash(s, t), and the token is drawn by inverse CDF over the filtered distribution. The same
integer arithmetic runs on CPU and GPU, so an image depends only on its prompt, seed and settings.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...types import FairgenError
from .model import KVCache, TinyLM
from .text import Vocab, left_pad

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """Avalanche hash of 32-bit values held in int64 (lowbias32-style). Multipliers are below 2**31, so
    every product fits in int64 and nothing overflows on any device."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & _M32
    return x ^ (x >> 16)


def seed_keys(seeds: list[int], device: torch.device | str = "cpu") -> torch.Tensor:
    """One 32-bit stream key per image from its seed (any Python int; all 64 low bits matter)."""
    lo = torch.tensor([s & _M32 for s in seeds], dtype=torch.long, device=device)
    hi = torch.tensor([(s >> 32) & _M32 for s in seeds], dtype=torch.long, device=device)
    return _mix32(lo ^ _mix32(hi ^ 0x5BD1E995))


def uniforms(keys: torch.Tensor, position: int) -> torch.Tensor:
    """The uniform number in (0, 1) of each stream at `position`: float64 [B], 24 random bits."""
    bits = _mix32(keys ^ _mix32(torch.full_like(keys, (position + 0x632BE5AB) & _M32)))
    return ((bits >> 8).double() + 0.5) / float(1 << 24)


def filter_probs(probs: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Zero all but the top_k most likely tokens and then all but the smallest set holding top_p of the
    mass (the most likely token always stays). probs: [B, K]; returns unnormalised [B, K]."""
    if top_k is not None and top_k < probs.shape[1]:
        kth = probs.topk(top_k, dim=1).values[:, -1:]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=1, descending=True, stable=True)
        before = sorted_p.cumsum(1) - sorted_p  # mass strictly ahead of each token
        keep_sorted = before < top_p * sorted_p.sum(1, keepdim=True)
        keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
        probs = torch.where(keep, probs, torch.zeros_like(probs))
    return probs


def draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first token whose cumulative mass exceeds u * total. probs [B, K] (unnormalised,
    zeros never drawn), u float64 [B] in (0, 1). Returns LongTensor[B]."""
    cdf = probs.double().cumsum(1)
    target = (u * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=probs.shape[1] - 1)


@dataclass(frozen=True)
class Sampling:
    """Sampling settings. cfg: classifier-free guidance scale (1 = plain conditional sampling; the
    unconditional prompt is empty text). temperature: 0 = greedy. top_k / top_p: None = off."""

    cfg: float = 1.0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def check(self) -> None:
        if self.cfg < 0 or self.temperature < 0:
            raise FairgenError(
                f"cfg and temperature must be >= 0 (got cfg={self.cfg}, temperature={self.temperature})"
            )
        if self.top_k is not None and self.top_k < 1:
            raise FairgenError(f"top_k must be >= 1 (got {self.top_k})")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise FairgenError(f"top_p must be in (0, 1] (got {self.top_p})")


@torch.no_grad()
def generate_codes(lm: TinyLM, vocab: Vocab, texts: list[str], seeds: list[int], s: Sampling) -> torch.Tensor:
    """Sample one image per (text, seed): LongTensor[B, T] of tokenizer codes.

    Conditional and unconditional rows (when cfg != 1) run in one batched forward with a shared KV cache.
    Only image codes can be drawn: other vocabulary entries are excluded before guidance."""
    s.check()
    device = next(lm.parameters()).device
    B, T = len(texts), vocab.n_image_tokens
    rows = [vocab.generation_prefix(t) for t in texts]
    guided = s.cfg != 1.0
    if guided:
        rows += [vocab.generation_prefix("")] * B
    if max(len(r) for r in rows) + T > lm.cfg.block_size:
        raise FairgenError(f"prompt too long for fairgen-tiny: at most {lm.cfg.block_size - T - 2} bytes")
    ids, valid, pos, img = left_pad(rows, vocab, device)
    cache = KVCache(lm.cfg, len(rows), ids.shape[1] + T, device, next(lm.parameters()).dtype)
    keys = seed_keys(seeds, device)
    logits = lm(ids, pos, img, valid, cache=cache, last_only=True)[:, -1]
    next_pos = pos[:, -1:] + 1
    codes = torch.empty(B, T, dtype=torch.long, device=device)
    for t in range(T):
        lg = logits[:, vocab.image_offset : vocab.image_offset + vocab.n_codes].float()
        if guided:
            cond, uncond = lg[:B], lg[B:]
            lg = uncond + s.cfg * (cond - uncond)
        if s.temperature == 0:
            tok = lg.argmax(1)
        else:
            probs = torch.softmax(lg / s.temperature, dim=1)
            tok = draw(filter_probs(probs, s.top_k, s.top_p), uniforms(keys, t))
        codes[:, t] = tok
        if t == T - 1:
            break
        step = (tok + vocab.image_offset).repeat(2 if guided else 1).unsqueeze(1)
        img_t = torch.full_like(step, t)
        logits = lm(step, next_pos, img_t, torch.ones_like(step, dtype=torch.bool), cache=cache)[:, -1]
        next_pos = next_pos + 1
    return codes
