"""Image-token generation for fairgen-tiny: prompts and their unconditional twins in one batched forward
with a KV cache, each token drawn with the shared sampler and per-image random stream (models/sampling.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...types import FairgenError
from ..sampling import Sampling, sample, seed_keys, uniforms
from .model import KVCache, TinyLM
from .text import Vocab, left_pad


@torch.no_grad()
def generate_codes(lm: TinyLM, vocab: Vocab, texts: list[str], seeds: list[int], s: Sampling) -> torch.Tensor:
    """Sample one image per (text, seed): LongTensor[B, T] of tokenizer codes.

    Conditional and unconditional rows (when cfg != 1) run in one batched forward with a shared KV cache.
    Only image codes can be drawn, so the output head computes only their rows (half the vocabulary)."""
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
    head = lm.wte.weight[vocab.image_offset : vocab.image_offset + vocab.n_codes]  # the tied head's code rows

    def next_logits(*inputs: torch.Tensor) -> torch.Tensor:  # the image codes' logits after the newest token
        return F.linear(lm.hidden(*inputs, cache=cache)[:, -1], head)

    logits = next_logits(ids, pos, img, valid)
    next_pos = pos[:, -1:] + 1
    codes = torch.empty(B, T, dtype=torch.long, device=device)
    for t in range(T):
        lg = s.guide(logits.float())
        tok = sample(lg, s, uniforms(keys, t))
        codes[:, t] = tok
        if t == T - 1:
            break
        step = (tok + vocab.image_offset).repeat(2 if guided else 1).unsqueeze(1)
        img_t = torch.full_like(step, t)
        logits = next_logits(step, next_pos, img_t, torch.ones_like(step, dtype=torch.bool))
        next_pos = next_pos + 1
    return codes
