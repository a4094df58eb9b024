"""MAGVIT-v2 image tokenizer as Show-o uses it (`showlab/magvitv2`): a VQGAN-style convolutional encoder and
decoder around lookup-free quantisation (LFQ).

    pixels [B, 3, S, S] in [-1, 1] --encoder--> z [B, C, S/f, S/f] --sign--> codes [B, (S/f)^2]
    codes --(+-1 bits)--> z_q [B, C, S/f, S/f] --decoder--> pixels [B, 3, S, S]

LFQ has no codebook to learn: a latent vector's C channels are quantised to their signs, and its code is
the C sign bits read as a binary number, most significant bit first (channel 0). With C = 13 that is
2^13 = 8192 codes. The released tokenizer downsamples by f = 16 (4 stride-2 convolutions): 256 px -> a
16x16 code grid, 512 px -> 32x32.

Weight names follow upstream's modules (`encoder.down.0.block.0.conv1.weight`, `quantize.embedding`, ...),
so a released `config.json` + safetensors directory loads as is. Upstream's MAGVITv2 takes no
architecture arguments (its config.json names none); the optional keys "encoder", "decoder" and
"codebook_dim" of config.json (fairgen's, for tiny test checkpoints) override the released architecture.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..types import FairgenError


@dataclass
class ConvStack:
    """One side (encoder or decoder) of the tokenizer. ch: base width; ch_mult: width multiple per level
    (len(ch_mult) - 1 resamplings by 2); num_res_blocks: residual blocks per level; attn_resolutions:
    feature-map sizes that get self-attention after each block (none of the released ones occur);
    resolution: the image side the attention resolutions refer to."""

    ch: int = 128
    ch_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 4])
    num_res_blocks: list[int] = field(default_factory=lambda: [4, 3, 4, 3, 4])
    attn_resolutions: list[int] = field(default_factory=lambda: [5])
    resolution: int = 256


RELEASED_ENCODER = ConvStack()
RELEASED_DECODER = ConvStack(ch_mult=[1, 1, 2, 2, 4], num_res_blocks=[4, 4, 3, 4, 3])


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6, affine=True)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with a 1x1 shortcut when the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the feature map's positions (1x1 convolutions as projections)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as upstream
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution after padding one row and column on the bottom and right."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 convolution."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block, level.attn = nn.ModuleList(blocks), nn.ModuleList(attns)
    return level


def _middle(c: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResBlock(c, c), AttnBlock(c), ResBlock(c, c)
    return mid


class Encoder(nn.Module):
    def __init__(self, s: ConvStack, z_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, s.ch, 3, padding=1)
        res, cin, self.down = s.resolution, s.ch, nn.ModuleList()
        for i, mult in enumerate(s.ch_mult):
            blocks, attns = [], []
            for _ in range(s.num_res_blocks[i]):
                blocks.append(ResBlock(cin, s.ch * mult))
                cin = s.ch * mult
                if res in s.attn_resolutions:
                    attns.append(AttnBlock(cin))
            level = _level(blocks, attns)
            if i != len(s.ch_mult) - 1:
                level.downsample, res = Downsample(cin), res // 2
            self.down.append(level)
        self.mid, self.norm_out = _middle(cin), _norm(cin)
        self.conv_out = nn.Conv2d(cin, z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(z_channels, z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.quant_conv(self.conv_out(F.silu(self.norm_out(h))))


class Decoder(nn.Module):
    def __init__(self, s: ConvStack, z_channels: int) -> None:
        super().__init__()
        levels = len(s.ch_mult)
        cin, res = s.ch * s.ch_mult[-1], s.resolution // 2 ** (levels - 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = _middle(cin)
        ups: list[nn.Module] = []
        for i in reversed(range(levels)):
            blocks, attns = [], []
            for _ in range(s.num_res_blocks[i]):
                blocks.append(ResBlock(cin, s.ch * s.ch_mult[i]))
                cin = s.ch * s.ch_mult[i]
                if res in s.attn_resolutions:
                    attns.append(AttnBlock(cin))
            level = _level(blocks, attns)
            if i != 0:
                level.upsample, res = Upsample(cin), res * 2
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LFQ(nn.Module):
    """Lookup-free quantiser: `embedding` [2^C, C] holds every code's +-1 bit vector (bit C-1-j of the code
    in channel j), `power_vals` [C] the bit weights."""

    def __init__(self, codebook_dim: int) -> None:
        super().__init__()
        self.power_vals = nn.Buffer(2 ** torch.arange(codebook_dim - 1, -1, -1))
        bits = (torch.arange(2 ** codebook_dim).unsqueeze(1) >> torch.arange(codebook_dim - 1, -1, -1)) & 1
        self.embedding = nn.Buffer(bits.float() * 2 - 1)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> codes LongTensor [B, h*w] (row-major)."""
        return ((z > 0).long() * self.power_vals.view(1, -1, 1, 1)).sum(1).flatten(1)

    def latents(self, codes: torch.Tensor, side: int) -> torch.Tensor:
        """Codes [B, side*side] -> +-1 latents [B, C, side, side]."""
        return self.embedding[codes].view(codes.shape[0], side, side, -1).permute(0, 3, 1, 2).contiguous()


class MagvitV2(nn.Module):
    """The tokenizer: encode(pixels) -> codes, decode(codes) -> pixels. `factor` is the downsampling."""

    def __init__(self, encoder: ConvStack = RELEASED_ENCODER, decoder: ConvStack = RELEASED_DECODER,
                 codebook_dim: int = 13) -> None:
        super().__init__()
        if len(encoder.ch_mult) != len(decoder.ch_mult):
            raise FairgenError("magvitv2: encoder and decoder must have the same number of levels")
        self.settings = {"encoder": asdict(encoder), "decoder": asdict(decoder), "codebook_dim": codebook_dim}
        self.encoder, self.decoder = Encoder(encoder, codebook_dim), Decoder(decoder, codebook_dim)
        self.quantize = LFQ(codebook_dim)
        self.factor = 2 ** (len(encoder.ch_mult) - 1)
        self.codebook_size = 2 ** codebook_dim

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, S, S] in [-1, 1] (S a multiple of `factor`) -> codes LongTensor [B, (S/factor)^2]."""
        dtype = next(self.parameters()).dtype
        return self.quantize.codes(self.encoder(pixels.to(dtype)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, T] (T a square) -> pixels [B, 3, factor*sqrt(T), ...] in about [-1, 1]."""
        side = math.isqrt(codes.shape[-1])
        if side * side != codes.shape[-1]:
            raise FairgenError(f"magvitv2: {codes.shape[-1]} codes do not make a square grid")
        dtype = next(self.parameters()).dtype
        return self.decoder(self.quantize.latents(codes.long(), side).to(dtype))


def load(path: Path, device: torch.device, dtype: torch.dtype) -> MagvitV2:
    """A MagvitV2 from a checkpoint directory (config.json + *.safetensors), in eval mode."""
    from safetensors.torch import load_file

    cfg = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        raise FairgenError(f"magvitv2: {path} holds no *.safetensors weights (fairgen loads safetensors only)")
    model = MagvitV2(ConvStack(**cfg["encoder"]) if "encoder" in cfg else RELEASED_ENCODER,
                     ConvStack(**cfg["decoder"]) if "decoder" in cfg else RELEASED_DECODER,
                     int(cfg.get("codebook_dim", 13)))
    state: dict[str, torch.Tensor] = {}
    for f in weights:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("quantize.")]  # the bit tables are rebuilt, not read
    if missing or unexpected:
        raise FairgenError(f"magvitv2: {path} does not match the MAGVIT-v2 architecture "
                           f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device, dtype).eval()


def save(model: MagvitV2, path: Path) -> None:
    """Write `model` in the released layout (config.json, pytorch_model.safetensors) plus its architecture."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "MAGVITv2", **model.settings}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "pytorch_model.safetensors")
