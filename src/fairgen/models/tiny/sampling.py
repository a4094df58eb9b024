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
    # The prompt is read once per distinct row, not once per image (an audit makes many images of one
    # prompt: 256 rows of the test suite hold 2 prompts), and its keys and values are copied to every row
    # of it. Left padding is to the longest distinct row, which is the longest row, so each row sees the
    # same positions and padding as in a forward over all rows (the codes are the same; tests/test_tiny).
    distinct = list(dict.fromkeys(tuple(r) for r in rows))
    number = {r: i for i, r in enumerate(distinct)}
    index = torch.tensor([number[tuple(r)] for r in rows], device=device)
    ids, valid, pos, img = left_pad([list(r) for r in distinct], vocab, device)
    dtype, length = next(lm.parameters()).dtype, ids.shape[1]
    prompt_cache = KVCache(lm.cfg, len(distinct), length, device, dtype)
    head = lm.wte.weight[vocab.image_offset : vocab.image_offset + vocab.n_codes]  # the tied head's code rows
    logits = F.linear(lm.hidden(ids, pos, img, valid, cache=prompt_cache)[:, -1], head)[index]
    cache = KVCache(lm.cfg, len(rows), length + T, device, dtype)
    cache.k[:, :, :, :length] = prompt_cache.k[:, index]
    cache.v[:, :, :, :length] = prompt_cache.v[:, index]
    cache.valid[:, :length] = prompt_cache.valid[index]
    cache.length = length
    del prompt_cache
    keys = seed_keys(seeds, device)

    def next_logits(*inputs: torch.Tensor) -> torch.Tensor:  # the image codes' logits after the newest token
        return F.linear(lm.hidden(*inputs, cache=cache)[:, -1], head)

    next_pos = pos[index, -1:] + 1
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
