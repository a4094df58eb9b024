"""Decoder pixels -> PIL images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image


def to_pil(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[Image.Image]:
    """Decoder output [B, 3, H, W], normalised with the image processor's mean/std, -> RGB images. The
    conversion to 8 bits runs where the pixels are (a GPU's batch crosses to the host as bytes, a quarter
    of its float32 size, and the host does no per-pixel arithmetic; docs/performance.md, "Costs the code
    is shaped by")."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    x = (pixels.detach().float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [Image.fromarray(a, "RGB") for a in x.permute(0, 2, 3, 1).contiguous().cpu().numpy()]
