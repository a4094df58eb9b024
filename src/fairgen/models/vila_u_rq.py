"""VILA-U's vision tower, our own port: the RQ-VAE tokenizer (SigLIP encoder -> residual quantiser -> conv
decoder) and the depth transformer that turns one LM hidden state into the residual codes of a position.

Shapes of the released 7B-256 checkpoint (mit-han-lab/vila-u-7b-256), read from the weights at load:

  image [B, 3, 256, 256] in [-1, 1]
    -> SigLIP-large/16 embeddings + its first 23 of 24 encoder layers (no post-LN)   [B, 256, 1024]
    -> residual quantisation, depth D = 4, one shared codebook                      codes [B, 16, 16, 4]
    -> sum of the D code vectors = the quantised feature z_q                        [B, 16, 16, 1024]
  z_q -> 1x1 conv -> VQGAN-style conv decoder (x2 per level)                        [B, 3, 256, 256]

  depth transformer (one image position): LM hidden h [4096], codes c_0..c_{D-1}
    x_0 = in_mlp_2(h);  x_d = in_mlp_1(e(c_0) + ... + e(c_{d-1}))   (d >= 1; e = codebook vector)
    logits of c_d = classifier(blocks(x_0..x_d + pos_emb_d[:d+1]))[d]   (causal pre-LN GPT blocks)
  generation computes depth d's logits from x_d alone with the keys and values of depths < d cached
  (cached_logits); upstream recomputes x_0..x_d at every depth (step_logits, what the reference loop runs).

Parameter names match the official `vision_tower/model.safetensors` once its prefixes are stripped
(`rqvaesiglip.`, `rqtransformer.`), so a checkpoint loads with a plain state dict (see vila_u.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .stacking import stack_in_place


# -- the quantiser ---------------------------------------------------------------------------------------
class ResidualQuantizer(nn.Module):
    """Residual quantisation over `depth` steps. codebook: [n_books, n_codes, dim], n_books 1 (shared, as
    VILA-U) or depth. Each step picks the code nearest (squared L2) to what the earlier steps left."""

    def __init__(self, n_books: int, n_codes: int, dim: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.codebook = nn.Parameter(torch.zeros(n_books, n_codes, dim), requires_grad=False)

    def book(self, d: int) -> torch.Tensor:
        """The codebook of depth d: [n_codes, dim]."""
        return self.codebook[d if self.codebook.shape[0] > 1 else 0]

    @torch.no_grad()
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Features [..., dim] -> codes LongTensor [..., depth]."""
        residual = x.reshape(-1, x.shape[-1]).clone()
        codes = []
        for d in range(self.depth):
            book = self.book(d)
            # |r|^2 + |e|^2 - 2 r.e in one addmm, the arithmetic of the reference, so near-ties resolve alike.
            dist = torch.addmm(residual.pow(2).sum(1, keepdim=True) + book.pow(2).sum(1)[None], residual, book.t(),
                               alpha=-2.0)
            code = dist.argmin(-1)
            residual -= book[code]
            codes.append(code)
        return torch.stack(codes, -1).view(*x.shape[:-1], self.depth)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., depth] -> their code vectors [..., depth, dim] (book d for depth d)."""
        if self.codebook.shape[0] == 1:
            return F.embedding(codes, self.codebook[0])
        return torch.stack([F.embedding(codes[..., d], self.book(d)) for d in range(codes.shape[-1])], -2)


# -- the conv decoder (VQGAN layout: mid block with attention, then up levels) ---------------------------
def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, ch, eps=1e-6)


class ResBlock(nn.Module):
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
    """Single-head self-attention over the pixels of a feature map (1x1 convs for q, k, v, out)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(y)


class Decoder(nn.Module):
    """z [B, z_channels, h, w] -> image [B, out_ch, h * 2^(levels-1), ...]; the ddconfig of the checkpoint
    (ch, ch_mult, num_res_blocks, attn_resolutions, resolution, z_channels, out_ch)."""

    def __init__(self, ch: int, out_ch: int, ch_mult: Sequence[int], num_res_blocks: int,
                 attn_resolutions: Sequence[int], resolution: int, z_channels: int, **_: object) -> None:
        super().__init__()
        levels = len(ch_mult)
        cin = ch * ch_mult[-1]
        res = resolution // 2 ** (levels - 1)
        self.conv_in = nn.Conv2d(z_channels, cin, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = ResBlock(cin, cin), AttnBlock(cin), ResBlock(cin, cin)
        ups: list[nn.Module] = []
        for level in reversed(range(levels)):  # built coarse to fine, stored fine to coarse (the weights' order)
            up = nn.Module()
            cout = ch * ch_mult[level]
            up.block = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout) for i in range(num_res_blocks + 1)])
            up.attn = nn.ModuleList([AttnBlock(cout) for _ in range(num_res_blocks + 1)] if res in attn_resolutions else [])
            cin = cout
            if level != 0:
                up.upsample = nn.Module()
                up.upsample.conv = nn.Conv2d(cout, cout, 3, padding=1)
                res *= 2
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out, self.conv_out = _norm(cin), nn.Conv2d(cin, out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            up = self.up[level]
            for i, block in enumerate(up.block):
                h = block(h)
                if len(up.attn):
                    h = up.attn[i](h)
            if hasattr(up, "upsample"):
                h = up.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class RQVAE(nn.Module):
    """SigLIP encoder (all layers but the last) -> residual quantiser -> conv decoder.

    siglip: a transformers SiglipVisionConfig. ddconfig: the decoder's settings. decoder_latent_shape: the
    grid the decoder reads (the 384 variant resizes its 27x27 codes to it), or None."""

    def __init__(self, siglip: object, n_books: int, n_codes: int, depth: int, ddconfig: dict,
                 decoder_latent_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer, SiglipVisionEmbeddings

        self.embeddings = SiglipVisionEmbeddings(siglip)
        # The tower quantises the output of layer L-2 (0-based) of L: the last layer's weights are never used.
        self.layers = nn.ModuleList([SiglipEncoderLayer(siglip) for _ in range(siglip.num_hidden_layers - 1)])
        self.quantizer = ResidualQuantizer(n_books, n_codes, siglip.hidden_size, depth)
        self.post_quant_conv = nn.Conv2d(siglip.hidden_size, ddconfig["z_channels"], 1)
        self.decoder = Decoder(**ddconfig)
        self.decoder_latent_shape = tuple(decoder_latent_shape) if decoder_latent_shape else None

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, S, S] in [-1, 1] -> codes LongTensor [B, g, g, depth] (g = S / patch)."""
        x = self.embeddings(pixels)
        for layer in self.layers:
            x = layer(x, None)
        g = int(x.shape[1] ** 0.5)
        return self.quantizer.quantize(x.view(x.shape[0], g, g, -1))  # in the weights' dtype, as upstream

    def features(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [..., depth] -> quantised features [..., dim]: the sum of the code vectors."""
        return self.quantizer.embed(codes).sum(-2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, g, g, depth] -> pixels [B, 3, S, S], about [-1, 1]."""
        z = self.features(codes).permute(0, 3, 1, 2)
        if self.decoder_latent_shape is not None:
            z = F.interpolate(z.float(), size=self.decoder_latent_shape, mode="bilinear").to(z.dtype)
        z = self.post_quant_conv(z.to(self.post_quant_conv.weight.dtype))
        return self.decoder(z)


# -- the depth transformer -------------------------------------------------------------------------------
class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.key, self.query, self.value, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, c = x.shape
        q, k, v = (m(x).view(n, t, self.heads, -1).transpose(1, 2) for m in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(n, t, c))

    def step(self, x: torch.Tensor, kv: torch.Tensor, d: int, qkv: tuple | None = None) -> torch.Tensor:
        """The newest depth only: x [N, 1, C] at depth d; kv [2, N, heads, depth, C / heads] holds the keys
        and values of depths 0..d-1 and gets depth d's written. qkv: (weight, bias) of query|key|value
        stacked (one GEMM, and one copy writes key and value), or None to call the three modules (a LoRA
        layer). d is a Python int, so every shape is static (CUDA-graph safe).

        Causal attention of the newest query is attention over every key so far, so no mask, and over at
        most `depth` (4) keys: as plain products and a softmax, a few small kernels, where a fused SDPA
        kernel tiles for long sequences (about 30-115 us a call on an H100 at 128 rows, docs/performance.md).
        At depth 0 the one key has weight exactly 1, so the output is the value."""
        n, _, c = x.shape
        if qkv is not None:
            t = F.linear(x[:, 0], *qkv).view(n, 3, self.heads, -1)  # query, key, value [N, 3, heads, C / heads]
            q, _, v = t.unbind(1)
            kv[:, :, :, d].copy_(t[:, 1:].transpose(0, 1))
        else:
            q, k, v = (m(x[:, 0]).view(n, self.heads, -1) for m in (self.query, self.key, self.value))
            kv[0, :, :, d].copy_(k)
            kv[1, :, :, d].copy_(v)
        if d == 0:
            y = v
        else:  # q scaled first: a contiguous query for the product, and a power of 2 (exact) at head width 64
            keys, values = kv[0, :, :, : d + 1], kv[1, :, :, : d + 1]  # [N, heads, d + 1, C / heads]
            weights = torch.softmax((q * q.shape[-1] ** -0.5).unsqueeze(2) @ keys.transpose(-1, -2), -1)
            y = weights @ values  # [N, heads, 1, C / heads]
        return self.proj(y.reshape(n, 1, c))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x)) (MLP 4x, exact GELU)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def step(self, x: torch.Tensor, kv: torch.Tensor, d: int, qkv: tuple | None = None) -> torch.Tensor:
        """forward() of the newest depth d only, x [N, 1, C], over the cached keys and values (SelfAttention.step)."""
        x = x + self.attn.step(self.ln1(x), kv, d, qkv)
        return x + self.mlp(self.ln2(x))


class DepthTransformer(nn.Module):
    """Predicts the `depth` residual codes of one image position from the LM's hidden state there.

    code_dim: the codebook's vector size; lm_dim: the LM's hidden size; dim, heads, layers: its own."""

    def __init__(self, code_dim: int, lm_dim: int, dim: int, heads: int, layers: int, depth: int, n_codes: int) -> None:
        super().__init__()
        self.in_mlp_1 = nn.Linear(code_dim, dim)  # the running sum of code vectors
        self.in_mlp_2 = nn.Linear(lm_dim, dim)  # the LM hidden state
        self.head_transformer = nn.Module()
        self.head_transformer.blocks = nn.ModuleList([Block(dim, heads) for _ in range(layers)])
        self.pos_emb_d = nn.Parameter(torch.zeros(1, depth, dim))
        self.classifier_mlp = nn.Sequential(OrderedDict(layer_norm=nn.LayerNorm(dim), linear=nn.Linear(dim, n_codes)))

    def _hidden(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_emb_d[:, : x.shape[1]]
        for block in self.head_transformer.blocks:
            x = block(x)
        return x

    def forward(self, hidden: torch.Tensor, code_vectors: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits. hidden [B, T, lm_dim]: the LM state before each position; code_vectors
        [B, T, depth, code_dim]: the true codes' vectors. -> logits [B, T, depth, n_codes] (row d: code d
        given the hidden state and codes 0..d-1)."""
        b, t, depth, _ = code_vectors.shape
        running = self.in_mlp_1(code_vectors.cumsum(-2)[:, :, :-1])  # [B, T, depth-1, dim]
        x = torch.cat([self.in_mlp_2(hidden).unsqueeze(2), running], 2).reshape(b * t, depth, -1)
        return self.classifier_mlp(self._hidden(x)).view(b, t, depth, -1)

    def step_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, n_codes] of the next code of N positions, recomputing every depth so far (upstream's
        algorithm). x: the inputs of depths 0..d [N, d + 1, dim] (in_mlp_2 of the hidden state, then in_mlp_1
        of the running code sums)."""
        return self.classifier_mlp(self._hidden(x)[:, -1])  # only the newest depth's logits

    def new_cache(self, rows: int) -> DepthCache:
        """An empty DepthCache for `rows` rows, in the weights' dtype and device. A position writes depth d
        before it reads it, so a cache serves every position of a batch without being cleared."""
        weight = self.pos_emb_d
        heads = self.head_transformer.blocks[0].attn.heads
        shape = (2, rows, heads, weight.shape[1], weight.shape[2] // heads)
        blocks = self.head_transformer.blocks
        return DepthCache([weight.new_empty(shape) for _ in blocks],
                          [stack_in_place([b.attn.query, b.attn.key, b.attn.value]) for b in blocks])

    def cached_logits(self, x: torch.Tensor, cache: DepthCache, d: int) -> torch.Tensor:
        """step_logits with a KV cache: x [N, 1, dim] is the input of depth d alone, and the keys and values
        of depths 0..d-1 of the same positions are in `cache` (new_cache), written by the calls for depths
        0..d-1. One token per block instead of d + 1; the same logits up to float rounding."""
        x = x + self.pos_emb_d[:, d : d + 1]
        for block, kv, qkv in zip(self.head_transformer.blocks, cache.kv, cache.qkv):
            x = block.step(x, kv, d, qkv)
        return self.classifier_mlp(x[:, 0])


@dataclass
class DepthCache:
    """What generation's depth passes keep per engine call. kv: per block, the keys (kv[0]) and values
    (kv[1]) of every depth, [2, rows, heads, depth, dim / heads], in one tensor so one copy writes both.
    qkv: per block, its query|key|value weights and biases stacked in place (engine.stack_in_place: no
    copy) so the three projections are one GEMM, or None where they are not plain Linear layers (LoRA on
    the depth transformer)."""

    kv: list[torch.Tensor]
    qkv: list[tuple[torch.Tensor, torch.Tensor | None] | None]


__all__ = ["RQVAE", "DepthCache", "DepthTransformer", "Decoder", "ResidualQuantizer"]
