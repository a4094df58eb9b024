"""The vision tokenizer of fairgen-tiny: a small VQ-VAE from 64x64 RGB images to a grid of discrete codes.

    encoder   space-to-depth (64x64x3 -> 16x16x48), 3x3 convs, one stride-2 conv to the 8x8 grid, 1x1 to
              len(levels) channels
    quantiser finite scalar quantisation (FSQ, Mentzer et al. 2023): each of len(levels) channels is
              squashed and rounded to one of levels[i] values; a code is the tuple of rounded values. No
              codebook to collapse and no commitment loss, so it trains as fast as a plain autoencoder,
              which is what lets a test session train a usable tokenizer on 2 CPU cores
    decoder   the mirror image: 3x3 convs, a stride-2 transposed conv to 16x16, depth-to-space to 64x64

Images are float tensors [B, 3, 64, 64] in [-1, 1]; tokens are LongTensor[B, grid * grid] in row-major
grid order (what the language model generates, left to right, top to bottom).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ...types import FairgenError

IMAGE_SIZE = 64


@dataclass
class TokenizerConfig:
    grid: int = 8  # tokens per side: 8 -> 64 tokens of 8x8 px each
    levels: tuple[int, ...] = (8, 5, 5, 5)  # FSQ levels per channel; the codebook is their product (1000)
    width: int = 64  # channels of the convs at 16x16; the 8x8 convs have twice as many

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def n_tokens(self) -> int:
        return self.grid * self.grid

    @property
    def n_codes(self) -> int:
        return int(np.prod(self.levels))


class VisionTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        if IMAGE_SIZE % (cfg.grid * 2) or cfg.grid < 2:
            raise FairgenError(f"tokenizer grid must be even and divide {IMAGE_SIZE // 2}, got {cfg.grid}")
        self.cfg = cfg
        s, w = IMAGE_SIZE // (2 * cfg.grid), cfg.width  # pixel-(un)shuffle factor; channels
        # Space-to-depth first: every conv then runs at 2*grid resolution or below, where CPU convs are fast,
        # and the last layer paints each s x s pixel block directly, keeping pixel-art edges sharp.
        self.encoder = nn.Sequential(
            nn.PixelUnshuffle(s),
            nn.Conv2d(3 * s * s, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, 2 * w, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * w, len(cfg.levels), 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(len(cfg.levels), 2 * w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.GELU(),
            nn.ConvTranspose2d(2 * w, w, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(w, 3 * s * s, 3, padding=1),
            nn.PixelShuffle(s),
        )

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _quantise(self, z: torch.Tensor) -> torch.Tensor:
        """FSQ: z [B, C, g, g] -> rounded values in [-1, 1] (straight-through gradient), same shape."""
        z = z.float()  # rounding boundaries must not move with bf16 autocast
        levels = torch.tensor(self.cfg.levels, device=z.device, dtype=z.dtype).view(1, -1, 1, 1)
        half = (levels - 1) / 2
        # An even number of levels has no zero level: shift by half a step so rounding lands on the grid.
        offset = torch.where(levels % 2 == 0, 0.5, 0.0)
        bounded = torch.tanh(z + torch.atanh(offset / (half * (1 + 1e-3)))) * half * (1 + 1e-3) - offset
        q = bounded + (bounded.round() - bounded).detach()
        return (q + offset) / half

    def _index(self, q: torch.Tensor) -> torch.Tensor:
        """Quantised values [B, C, g, g] -> code indices LongTensor[B, g*g] (mixed radix over the levels)."""
        levels = torch.tensor(self.cfg.levels, device=q.device).view(1, -1, 1, 1)
        digits = torch.round((q * (levels - 1) + (levels - 1)) / 2).long()  # 0 .. levels-1
        basis = torch.cumprod(torch.tensor((1, *self.cfg.levels[:-1]), device=q.device), 0).view(1, -1, 1, 1)
        return (digits * basis).sum(1).flatten(1)

    def _values(self, tokens: torch.Tensor) -> torch.Tensor:
        """Code indices LongTensor[B, g*g] -> quantised values [B, C, g, g] in [-1, 1]."""
        levels = torch.tensor(self.cfg.levels, device=tokens.device).view(1, -1, 1)
        basis = torch.cumprod(torch.tensor((1, *self.cfg.levels[:-1]), device=tokens.device), 0).view(
            1, -1, 1
        )
        digits = (tokens.unsqueeze(1) // basis) % levels
        g = self.cfg.grid
        return ((2 * digits.float() - (levels - 1)) / (levels - 1)).view(tokens.shape[0], -1, g, g)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 64, 64] in [-1, 1] -> tokens LongTensor[B, grid*grid]."""
        return self._index(self._quantise(self.encoder(x)))

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens LongTensor[B, grid*grid] -> images [B, 3, 64, 64], roughly in [-1, 1]."""
        return self.decoder(self._values(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training pass: the reconstruction [B, 3, 64, 64] through the quantiser (straight-through)."""
        return self.decoder(self._quantise(self.encoder(x)))


def to_tensor(images: list[Image.Image] | np.ndarray) -> torch.Tensor:
    """PIL images (any size: resized to 64x64) or a uint8 array [B, 64, 64, 3] -> float [B, 3, 64, 64]
    in [-1, 1]."""
    if isinstance(images, np.ndarray):
        arr = images
    else:
        arr = np.stack(
            [
                np.asarray(
                    im.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
                    if im.size != (IMAGE_SIZE, IMAGE_SIZE)
                    else im.convert("RGB")
                )
                for im in images
            ]
        )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_images(x: torch.Tensor) -> list[Image.Image]:
    """Float [B, 3, 64, 64] in [-1, 1] -> PIL RGB images."""
    arr = x.detach().float().clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arr]
