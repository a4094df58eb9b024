"""TokenFlow's text-to-image language model (ByteFlow-AI/TokenFlow, `t2i/llava_t2i`), one file, nanoGPT style.

A Llama-2 decoder with these changes, all in the released checkpoint (`ByteFlow-AI/TokenFlow-t2i`):
  res-post-norm  each layer's two RMSNorms are applied to the attention and MLP *outputs* before the
            residual adds (x + norm(attn(x)), then x + norm(mlp(x))), not to their inputs as in Llama
  qknorm    per layer, an RMSNorm (eps 1e-6, over the head dimension) on queries and keys, after the
            head split and *before* RoPE
  mm_projector  Linear 40 -> hidden (config.json's mm_projector_type; LLaVA's mlpNx_gelu also read)
  lvl_embed     10 x hidden: row 0 is added to every text position, row k+1 to the inputs of scale k
                (k >= 1; row 1 is never read: scale 0's only input is the last prompt token)
  pos_1LC       817 x hidden: one row per image position, added from the last prompt token on
The LM head covers the text vocabulary, [PAD] and the image codes; image logits are its code rows.

The sequence (all rows the same length): P prompt tokens, then 816 image inputs (scales 2..9, each the
running sum of the earlier scales' code vectors carried up to that scale), scored at the last prompt
token and the 816 inputs: 817 positions predict the 817 codes. Attention is causal over the prompt with
[PAD] keys masked and *block-causal over scales* inside the image: a position sees every position of its
own scale and of the scales before. RoPE positions count every token, [PAD] included (as upstream does).

Generation here keeps a KV cache and runs one forward per scale over that scale's positions only
(upstream recomputes the whole sequence at every scale); block causality makes the two the same
computation. `forward` without a cache is the one teacher-forced pass over the whole sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..types import FairgenError

QK_EPS = 1e-6  # upstream's QKNorm eps, fixed (the layer norms use the config's rms_norm_eps)


class RMSNorm(nn.Module):
    """Llama's RMSNorm: computed in float32, cast back, then scaled (the order matters in bf16)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class QKNorm(nn.Module):
    def __init__(self, head_dim: int) -> None:
        super().__init__()
        self.query_norm, self.key_norm = RMSNorm(head_dim, QK_EPS), RMSNorm(head_dim, QK_EPS)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama RoPE on [N, H, L, d] with cos, sin [L, d] (halves rotated, not interleaved pairs)."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = cfg.hidden_size // self.heads
        bias = bool(getattr(cfg, "attention_bias", False))
        self.q_proj = nn.Linear(cfg.hidden_size, self.heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.qknorm = QKNorm(self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor,
        cache: KVCache | None,
        layer: int,
    ) -> torch.Tensor:
        n, length, _ = x.shape
        q = self.q_proj(x).view(n, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(n, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(n, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q = self.qknorm.query_norm(q).to(v.dtype)
        k = self.qknorm.key_norm(k).to(v.dtype)
        q, k = rotate(q, *rope), rotate(k, *rope)
        if cache is not None:
            k, v = cache.write(layer, k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        return self.o_proj(out.transpose(1, 2).reshape(n, length, -1))


class MLP(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, cfg) -> None:
        super().__init__()
        self.self_attn, self.mlp = Attention(cfg), MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, rope, mask, cache, layer):
        # Res-post-norm: TokenFlow's layers normalise each sublayer's *output* before the residual add (the
        # checkpoint's input_layernorm / post_attention_layernorm names are Llama's, the placement is not).
        x = x + self.input_layernorm(self.self_attn(x, rope, mask, cache, layer))
        return x + self.post_attention_layernorm(self.mlp(x))


class KVCache:
    """Keys and values of every layer, [N, kv_heads, length, head_dim], filled left to right."""

    def __init__(self, cfg, rows: int, length: int, dtype: torch.dtype, device: torch.device) -> None:
        shape = (rows, cfg.num_key_value_heads, length, cfg.hidden_size // cfg.num_attention_heads)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.start = self.stop = 0

    def advance(self, n: int) -> None:
        self.start, self.stop = self.stop, self.stop + n

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k[layer][:, :, self.start : self.stop] = k
        self.v[layer][:, :, self.start : self.stop] = v
        return self.k[layer][:, :, : self.stop], self.v[layer][:, :, : self.stop]


class Decoder(nn.Module):
    """The Llama body (checkpoint prefix `model.`) with TokenFlow's projector, level and position tables."""

    def __init__(self, cfg, n_image: int, n_levels: int, feature_dim: int) -> None:
        super().__init__()
        self.config = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        kind = getattr(cfg, "mm_projector_type", None) or "linear"
        self.mm_projector = projector(kind, feature_dim, cfg.hidden_size)
        self.lvl_embed = nn.Embedding(n_levels, cfg.hidden_size)
        self.pos_1LC = nn.Parameter(torch.zeros(n_image, cfg.hidden_size))
        self.register_buffer("inv_freq", self._inv_freq(), persistent=False)
        self.checkpointing = False  # gradient checkpointing of the layers (TokenFlowT2I switches it)

    def _inv_freq(self) -> torch.Tensor:
        cfg = self.config
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        theta = float(getattr(cfg, "rope_theta", None) or 10000.0)
        return 1.0 / theta ** (
            torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim
        )

    def reset_rope(self) -> None:
        """Recompute RoPE's frequencies (after building on the meta device and loading weights)."""
        self.inv_freq = self._inv_freq().to(self.embed_tokens.weight.device)

    def rope(self, start: int, stop: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, stop, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.float())
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, start: int = 0, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Input embeddings [N, L, D] at positions start..start+L-1 -> final-norm hidden states [N, L, D].
        mask: bool [N, 1, L, keys] (True = may attend); keys = start + L with a cache, else L."""
        if cache is not None:
            cache.advance(x.shape[1])
        rope = self.rope(start, start + x.shape[1], x.dtype)
        recompute = self.checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if recompute:  # keep each layer's input only; its activations are recomputed in backward
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, mask, cache, i, use_reentrant=False)
            else:
                x = layer(x, rope, mask, cache, i)
        return self.norm(x)


def projector(kind: str, features: int, hidden: int) -> nn.Module:
    """LLaVA's projector by its config name: "linear", or "mlp<N>x_gelu" (N linears with GELU between)."""
    if kind == "linear":
        return nn.Linear(features, hidden)
    depth = kind.removeprefix("mlp").removesuffix("x_gelu")
    if not (kind.startswith("mlp") and kind.endswith("x_gelu") and depth.isdigit() and int(depth) >= 1):
        raise FairgenError(f"tokenflow: unknown mm_projector_type {kind!r} (known: linear, mlp<N>x_gelu)")
    layers: list[nn.Module] = [nn.Linear(features, hidden)]
    for _ in range(int(depth) - 1):
        layers += [nn.GELU(), nn.Linear(hidden, hidden)]
    return nn.Sequential(*layers)


def scale_levels(scales: tuple[int, ...]) -> list[int]:
    """Index of the scale each of the 817 image positions predicts (0 for the last prompt token)."""
    return [k for k, s in enumerate(scales) for _ in range(s * s)]


def full_mask(key_valid: torch.Tensor, prompt: int, scales: tuple[int, ...]) -> torch.Tensor:
    """The teacher-forced pass's attention: bool [N, 1, L, L], L = prompt + 816. Causal over the prompt with
    invalid ([PAD]) keys masked; block-causal by scale from the last prompt token on. Every position may
    see itself, so a [PAD] query never has an empty row (its output is read by nobody)."""
    length = prompt + sum(s * s for s in scales) - 1
    idx = torch.arange(length, device=key_valid.device)
    level = torch.full((length,), -1, dtype=torch.long, device=key_valid.device)
    level[prompt - 1 :] = torch.tensor(scale_levels(scales), device=key_valid.device)
    causal = idx[None, :] <= idx[:, None]
    block = (level[None, :] <= level[:, None]) & (level[:, None] >= 0) & (level[None, :] >= 0)
    allowed = (causal | block)[None] & key_valid[:, None, :]
    return (allowed | torch.eye(length, dtype=torch.bool, device=key_valid.device)[None]).unsqueeze(1)


__all__ = ["Decoder", "KVCache", "full_mask", "scale_levels"]
