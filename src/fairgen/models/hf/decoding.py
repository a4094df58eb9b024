"""A KV-cached decoder loop over a transformers language model fed input embeddings (the reference path
the engine is tested against, and Emu3's generation)."""

from __future__ import annotations

import torch


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] from an attention mask: 0 at each row's first real token, so left padding
    changes no position (what transformers' generate does)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class CachedDecoder:
    """Feeds a decoder-only transformers LM a growing sequence of input embeddings with a KV cache.

    The first call is the prefill with `mask` ([N, L], 0 on left padding); each later call appends n
    always-valid positions. Returns the last hidden states [N, n, D].
    """

    def __init__(self, lm: torch.nn.Module, mask: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.lm, self.mask = lm, mask
        self.cache = DynamicCache(config=lm.config)
        self.next_pos: torch.Tensor | None = None

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[1]
        if self.next_pos is None:
            pos = positions(self.mask)
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], n)], dim=1)
            pos = self.next_pos + torch.arange(n, device=self.mask.device)
        out = self.lm(inputs_embeds=embeds, attention_mask=self.mask, position_ids=pos, cache=self.cache,
                      use_cache=True)
        self.next_pos = pos[:, -1:] + 1
        return out.last_hidden_state
