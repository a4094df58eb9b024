"""TokenFlow's vision tokenizer (ByteFlow-AI/TokenFlow, `tokenflow/tokenizer/vq_model.py`), T2I variant.

Two branches read the same image and share one code index:
  semantic  CLIP ViT-B/16 (its patch tokens after ln_post, position table interpolated from 14x14 to 16x16
            for 256 px input) -> Linear, Tanh, Linear -> 32-d features
  pixel     VQGAN encoder (GroupNorm/Swish ResNet, 16x downsampling) -> 1x1 conv -> 8-d features
Quantisation is VAR's multi-scale residual scheme over a *dual* codebook: each of K codes owns a 32-d
semantic vector and an 8-d pixel vector, both L2-normalised; a feature's code is the one with the smallest
*sum* of the two squared distances (to the L2-normalised feature halves). At each scale s of
1,2,4,6,8,10,12,14,16 the residual is area-downsampled to s x s, quantised, upsampled (bicubic) to 16 x 16
and subtracted: 1+4+16+...+256 = 817 codes per image, scale by scale, each scale row-major.
Decoding sums every scale's code vectors upsampled (bicubic) to 16 x 16, and the pixel half goes through
a 1x1 conv and the VQGAN decoder (the "enhanced" one of the released checkpoints) to [-1, 1] RGB.

The released tokenizer checkpoints are pickled `.pt` files holding a state dict under "ema", "model" or
"state_dict"; they are read with torch.load(weights_only=True). Upstream's constructor downloads CLIP from
OpenAI before loading; here the CLIP weights come from the checkpoint itself (they are in it), so nothing
is fetched. The semantic *decoder* (decoder_vqkd, decode_task_layer) rebuilds CLIP features, never pixels:
its weights are skipped. Sizes are read from the state dict, so tiny test checkpoints load the same way.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..types import FairgenError

T2I_SCALES = (1, 2, 4, 6, 8, 10, 12, 14, 16)
SEMANTIC_DIM, PIXEL_DIM = 32, 8
# State-dict prefixes the pixel path never reads (the semantic reconstruction head).
SKIPPED = ("decoder_vqkd.", "decode_task_layer.", "quantize.codebook_used")


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = group_norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map (1x1 conv projections)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = group_norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))  # [B, HW, C]
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Level(nn.Module):
    """One resolution of the VQGAN encoder or decoder: ResNet blocks, attention after each at the lowest
    resolution, and a 2x resampling conv (padding (0,1,0,1) stride 2 down; nearest 2x then conv up)."""

    def __init__(self, cin: int, cout: int, blocks: int, attn: bool, resample: str | None) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(cin if i == 0 else cout, cout) for i in range(blocks))
        self.attn = nn.ModuleList(AttnBlock(cout) for _ in range(blocks if attn else 0))
        if resample == "down":
            self.downsample = nn.Module()
            self.downsample.conv = nn.Conv2d(cout, cout, 3, stride=2)
        elif resample == "up":
            self.upsample = nn.Module()
            self.upsample.conv = nn.Conv2d(cout, cout, 3, padding=1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.res):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        if hasattr(self, "downsample"):
            h = self.downsample.conv(F.pad(h, (0, 1, 0, 1)))
        if hasattr(self, "upsample"):
            h = self.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return h


def _mid(c: int) -> nn.ModuleList:
    return nn.ModuleList([ResBlock(c, c), AttnBlock(c), ResBlock(c, c)])


class PixelEncoder(nn.Module):
    """VQGAN encoder: RGB [B, 3, H, W] -> [B, z, H/2^(L-1), W/2^(L-1)]; channels[i] per level."""

    def __init__(self, channels: list[int], blocks: int, z: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        last = len(channels) - 1
        self.conv_blocks = nn.ModuleList(
            Level(channels[max(i - 1, 0)], c, blocks, i == last, "down" if i < last else None)
            for i, c in enumerate(channels)
        )
        self.mid = _mid(channels[-1])
        self.norm_out, self.conv_out = group_norm(channels[-1]), nn.Conv2d(channels[-1], z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for m in [*self.conv_blocks, *self.mid]:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class PixelDecoder(nn.Module):
    """VQGAN decoder: [B, z, h, w] -> RGB [B, 3, h*2^(L-1), w*2^(L-1)]; channels[i] per level (level 0 is
    the full resolution), blocks + 1 ResNet blocks per level."""

    def __init__(self, channels: list[int], blocks: int, z: int) -> None:
        super().__init__()
        top = len(channels) - 1
        self.conv_in = nn.Conv2d(z, channels[top], 3, padding=1)
        self.mid = _mid(channels[top])
        levels, cin = [], channels[top]
        for i in reversed(range(len(channels))):
            levels.append(Level(cin, channels[i], blocks + 1, i == top, "up" if i > 0 else None))
            cin = channels[i]
        self.conv_blocks = nn.ModuleList(levels)
        self.norm_out, self.conv_out = group_norm(channels[0]), nn.Conv2d(channels[0], 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for m in [*self.mid, *self.conv_blocks]:
            h = m(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class ClipBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        h = self.mlp.c_fc(self.ln_2(x))
        return x + self.mlp.c_proj(h * torch.sigmoid(1.702 * h))  # QuickGELU, as CLIP was trained


class ClipVision(nn.Module):
    """CLIP's ViT image tower without its projection: RGB -> patch tokens [B, N, width] after ln_post."""

    def __init__(self, width: int, layers: int, patch: int, grid: int) -> None:
        super().__init__()
        self.patch = patch
        self.conv1 = nn.Conv2d(3, width, patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre, self.ln_post = nn.LayerNorm(width), nn.LayerNorm(width)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.Sequential(*(ClipBlock(width, width // 64) for _ in range(layers)))

    def positions(self, side: int) -> torch.Tensor:
        """The position table for a side x side patch grid. A different grid is reached as DINO/TokenFlow
        do: bicubic resampling by the factor (side + 0.1) / trained side (the 0.1 keeps the output size
        from rounding down), which is *not* the same as resampling to side x side."""
        table = self.positional_embedding
        trained = math.isqrt(table.shape[0] - 1)
        if trained == side:
            return table
        grid = table[1:].reshape(1, trained, trained, -1).permute(0, 3, 1, 2)
        f = (side + 0.1) / trained
        grid = F.interpolate(grid, scale_factor=(f, f), mode="bicubic")
        return torch.cat([table[:1], grid.permute(0, 2, 3, 1).reshape(side * side, -1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x).flatten(2).transpose(1, 2)  # [B, N, W]
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positions(math.isqrt(x.shape[1])).to(x.dtype)
        x = self.transformer.resblocks(self.ln_pre(x))
        return self.ln_post(x)[:, 1:]


class DualQuantizer(nn.Module):
    """K codes, each a (semantic, pixel) pair of vectors; one shared index chosen by the summed distance."""

    def __init__(self, codes: int, semantic: int = SEMANTIC_DIM, pixel: int = PIXEL_DIM) -> None:
        super().__init__()
        self.split = (semantic, pixel)
        self.embedding_vqkd = nn.Embedding(codes, semantic)
        self.embedding_vqgan = nn.Embedding(codes, pixel)

    def codebook(self) -> torch.Tensor:
        """[K, 40]: the L2-normalised semantic and pixel vectors of every code, concatenated."""
        return torch.cat(
            [
                F.normalize(self.embedding_vqkd.weight, dim=-1),
                F.normalize(self.embedding_vqgan.weight, dim=-1),
            ],
            dim=-1,
        )

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features [B, 40, h, w] -> (quantised [B, 40, h, w], codes [B, h*w] row-major)."""
        b, _, h, w = z.shape
        z = z.permute(0, 2, 3, 1).reshape(-1, sum(self.split))
        parts = [F.normalize(p, dim=-1) for p in z.split(self.split, dim=-1)]
        books = self.codebook().split(self.split, dim=-1)
        # squared distances, expanded as upstream computes them (same float rounding, same argmin on ties)
        d = sum((p**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * p @ e.t() for p, e in zip(parts, books))
        codes = d.argmin(dim=1)
        zn = torch.cat(parts, dim=-1)
        # z + (z_q - z): upstream's straight-through form, kept because it rounds differently from z_q
        q = zn + (self.codebook()[codes] - zn)
        return q.view(b, h, w, -1).permute(0, 3, 1, 2), codes.view(b, h * w)


class TokenFlowTokenizer(nn.Module):
    """The T2I tokenizer: images [B, 3, S, S] in [-1, 1] <-> codes [B, 817] (scale by scale, row-major)."""

    def __init__(self, clip: dict, pixel: dict, codes: int, scales: tuple[int, ...] = T2I_SCALES) -> None:
        super().__init__()
        self.scales = tuple(scales)
        self.encoder_vqkd = ClipVision(**clip)
        w = clip["width"]
        self.encode_task_layer = nn.Sequential(nn.Linear(w, w), nn.Tanh(), nn.Linear(w, SEMANTIC_DIM))
        self.encoder = PixelEncoder(pixel["enc_channels"], pixel["enc_blocks"], pixel["z"])
        self.decoder = PixelDecoder(pixel["dec_channels"], pixel["dec_blocks"], pixel["z"])
        self.quant_conv = nn.Conv2d(pixel["z"], PIXEL_DIM, 1)
        self.post_quant_conv = nn.Conv2d(PIXEL_DIM, pixel["z"], 1)
        self.quantize = DualQuantizer(codes)
        self.image_size = scales[-1] * 2 ** (len(pixel["enc_channels"]) - 1)
        if self.image_size != scales[-1] * clip["patch"]:
            raise FairgenError(
                f"tokenflow tokenizer: CLIP patches ({clip['patch']} px) and the VQGAN's "
                f"{self.image_size} px input do not give the same {scales[-1]}x{scales[-1]} grid"
            )

    @property
    def n_codes(self) -> int:
        return self.quantize.embedding_vqkd.num_embeddings

    @property
    def n_tokens(self) -> int:
        return sum(s * s for s in self.scales)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] (no CLIP normalisation: the T2I tokenizer reads [-1, 1]) ->
        the 40-d features [B, 40, 16, 16] quantisation starts from."""
        sem = self.encode_task_layer(self.encoder_vqkd(x))
        side = math.isqrt(sem.shape[1])
        sem = sem.transpose(1, 2).reshape(x.shape[0], SEMANTIC_DIM, side, side)
        return torch.cat([sem, self.quant_conv(self.encoder(x))], dim=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, S, S] in [-1, 1] -> codes LongTensor [B, 817]."""
        residual, top, codes = self.features(x), self.scales[-1], []
        for s in self.scales:
            q, c = self.quantize(F.interpolate(residual, size=(s, s), mode="area"))
            residual = residual - F.interpolate(q, size=(top, top), mode="bicubic")
            codes.append(c)
        return torch.cat(codes, dim=1)

    def split(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """Codes [B, 817] -> each scale's code vectors [B, 40, s, s]."""
        vecs = self.quantize.codebook()[codes]  # [B, T, 40]
        out, start = [], 0
        for s in self.scales:
            out.append(vecs[:, start : start + s * s].transpose(1, 2).reshape(codes.shape[0], -1, s, s))
            start += s * s
        return out

    def summed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, 817] -> the decoder's input [B, 40, 16, 16]: each scale upsampled (bicubic), summed."""
        top = self.scales[-1]
        return sum(F.interpolate(v, size=(top, top), mode="bicubic") for v in self.split(codes))

    def next_scale_inputs(self, codes: torch.Tensor) -> torch.Tensor:
        """What the LM reads for scales 2..n, from the codes of the scales before: [B, 816, 40]. The running
        sum is kept at the current scale and carried up one scale at a time (bicubic), as upstream's LM
        tower does (unlike `summed`, which upsamples each scale straight to 16 x 16)."""
        f, out = 0.0, []
        for v, nxt in zip(self.split(codes), self.scales[1:]):
            f = F.interpolate(f + v, size=(nxt, nxt), mode="bicubic")
            out.append(f.flatten(2).transpose(1, 2))
        return torch.cat(out, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, 817] -> RGB [B, 3, S, S] in about [-1, 1]."""
        pixel = self.summed(codes)[:, SEMANTIC_DIM:]
        return self.decoder(self.post_quant_conv(pixel))


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tokenizer's state dict from a released `.pt` (under "ema", "model" or "state_dict", the order
    upstream tries). weights_only=True; argparse.Namespace (training arguments some checkpoints carry) is
    the one extra type allowed, as plain data."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (a pickle with other objects, a truncated file: one answer)
        raise FairgenError(
            f"tokenflow: cannot read the tokenizer {path} with weights_only=True "
            f"({str(e).splitlines()[0][:200]})"
        ) from None
    for key in ("ema", "model", "state_dict"):
        if isinstance(ckpt, dict) and key in ckpt:
            return ckpt[key]
    raise FairgenError(f"tokenflow: {path} holds no 'ema', 'model' or 'state_dict' entry")


def _count(sd: dict, prefix: str) -> int:
    return len({k[len(prefix) :].split(".")[0] for k in sd if k.startswith(prefix)})


def load_tokenizer(path: Path, scales: tuple[int, ...] = T2I_SCALES) -> TokenFlowTokenizer:
    """A TokenFlowTokenizer with the sizes and weights of a released (or tiny) tokenizer checkpoint."""
    sd = read_state_dict(path)
    if any(k.startswith("encoder_vqkd.vision_model.") for k in sd):
        raise FairgenError(
            "tokenflow: this is a SigLIP tokenizer (the understanding model's); text-to-image "
            "generation needs the CLIP one (tokenflow_clipb_32k_enhanced.pt)"
        )
    if "encoder_vqkd.conv1.weight" not in sd:
        raise FairgenError(f"tokenflow: {path} is not a TokenFlow tokenizer (no CLIP tower)")
    conv1, pos = sd["encoder_vqkd.conv1.weight"], sd["encoder_vqkd.positional_embedding"]
    clip = {
        "width": conv1.shape[0],
        "layers": _count(sd, "encoder_vqkd.transformer.resblocks."),
        "patch": conv1.shape[-1],
        "grid": math.isqrt(pos.shape[0] - 1),
    }
    enc_levels, dec_levels = _count(sd, "encoder.conv_blocks."), _count(sd, "decoder.conv_blocks.")
    pixel = {
        "z": sd["encoder.conv_out.weight"].shape[0],
        "enc_blocks": _count(sd, "encoder.conv_blocks.0.res."),
        "dec_blocks": _count(sd, "decoder.conv_blocks.0.res.") - 1,
        "enc_channels": [
            sd[f"encoder.conv_blocks.{i}.res.0.conv1.weight"].shape[0] for i in range(enc_levels)
        ],
        # the decoder lists its levels from the lowest resolution up
        "dec_channels": [
            sd[f"decoder.conv_blocks.{dec_levels - 1 - i}.res.0.conv1.weight"].shape[0]
            for i in range(dec_levels)
        ],
    }
    model = TokenFlowTokenizer(clip, pixel, sd["quantize.embedding_vqkd.weight"].shape[0], scales)
    kept = {k: v for k, v in sd.items() if not k.startswith(SKIPPED) and k != "encoder_vqkd.proj"}
    missing, unexpected = model.load_state_dict(kept, strict=False)
    if missing or unexpected:
        raise FairgenError(
            f"tokenflow: {path} does not fit TokenFlow's tokenizer (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval().requires_grad_(False)


__all__ = ["T2I_SCALES", "TokenFlowTokenizer", "load_tokenizer", "read_state_dict"]
