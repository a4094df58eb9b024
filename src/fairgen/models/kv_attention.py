"""Attention of new tokens over the engine's static KV cache (models/engine.py), three ways.

The cache of one layer is one tensor [2, N, L, H_kv, head_dim] (keys, values; sequence-major, so that a
layer's keys flatten without a copy to the [N * L, H_kv, head_dim] rows a variable-length kernel reads).
Prompts are left-padded and every row writes its new token at the same column c.

masked   SDPA over the first `span` columns with an additive mask (padding and columns not yet written at
         -inf). Any device, any dtype, any number of new tokens (prefill); the reference. For a decode step
         the span must be a multiple of a bucket past the prompt (engine.LlamaDecoder.span), so a step
         reads on average half a bucket of unwritten columns, and a CUDA graph is captured per bucket.
varlen   flash attention in its variable-length form (`aten::_flash_attention_forward` with `seqused_k`):
         row i's keys start at flat row i * L + pad_i (after its padding) and it reads exactly the
         c + 1 - pad_i columns it has written, a count held on the device. No padding and no unwritten
         column is read, and the shapes no longer change with c: one CUDA graph serves every step of an
         engine call. CUDA, fp16 / bf16, head_dim a multiple of 8 up to 256, one new token per row, and a
         torch whose op takes `seqused_k` (varlen_supported).
triton   the same reads as varlen (each row's written columns only, one graph per call) by a Triton kernel
         of one program per row and head (kv_attention_triton.py says why): CUDA, Triton installed, head_dim
         a power of 2.

choose() resolves what a decoder asks for to what runs: "auto" is the first of AUTO that can run.
"""

from __future__ import annotations

import functools
import logging

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)
# What "auto" runs: the first of these that can run on the decoder's device, dtype and head width. Set by
# the H100 measurement of 2026-12-07 (docs/performance.md, "Attention over the written columns only"):
# triton was the fastest for VILA-U 7B and Janus-Pro-1B at batch 64 and the largest batch; varlen (flash)
# was slower than the buckets, so it runs only when asked for.
AUTO = ("triton", "bucket")


@functools.cache
def _op_takes_seqused_k() -> bool:
    """Whether this torch's aten::_flash_attention_forward has the `seqused_k` argument (torch >= 2.5)."""
    op = getattr(torch.ops.aten, "_flash_attention_forward", None)
    try:
        return op is not None and any(a.name == "seqused_k" for a in op.default._schema.arguments)
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def _say_no_varlen(version: str) -> None:
    log.warning("torch %s: aten::_flash_attention_forward has no seqused_k; the engine's attention reads "
                "length buckets with a mask (one CUDA graph per bucket) instead", version)


def varlen_supported(device: torch.device, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the varlen path can run for a cache on `device` of `dtype` with heads of `head_dim`. Where
    only the torch is missing (a CUDA half-precision cache), says so once in the log."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16) or head_dim % 8 or head_dim > 256:
        return False
    if not _op_takes_seqused_k():
        _say_no_varlen(torch.__version__)
        return False
    return True


def triton_supported(device: torch.device, head_dim: int) -> bool:
    """Whether the triton path can run for a cache on `device` with heads of `head_dim`."""
    from . import kv_attention_triton

    return device.type == "cuda" and head_dim & (head_dim - 1) == 0 and kv_attention_triton.available()


def choose(requested: str, device: torch.device, dtype: torch.dtype, head_dim: int) -> str:
    """The attention a decoder runs ("varlen", "triton" or "bucket") for the one requested ("auto",
    "varlen", "triton" or "bucket"): the one requested where it can run, else bucket; auto: the first of
    AUTO that can run."""
    if requested not in ("auto", "varlen", "triton", "bucket"):
        raise ValueError(f"attention must be auto, varlen, triton or bucket (got {requested!r})")
    can = {"varlen": lambda: varlen_supported(device, dtype, head_dim),
           "triton": lambda: triton_supported(device, head_dim), "bucket": lambda: True}
    return next(a for a in (AUTO if requested == "auto" else (requested, "bucket")) if can[a]())


def masked(q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor, span: int, scale: float) -> torch.Tensor:
    """q [N, n, H, head_dim] (token-major), kv [2, N, L, H_kv, head_dim], additive mask [N, 1, n, span] ->
    attention output [N, n, H * head_dim] over the first `span` columns.

    enable_gqa only where keys have fewer heads than queries: with a mask, CUDA's SDPA runs a GQA call only
    in its math kernel; Janus-Pro's and VILA-U's decoders have as many KV heads as query heads and so may
    use a fused kernel."""
    keys, values = kv[0, :, :span].transpose(1, 2), kv[1, :, :span].transpose(1, 2)  # [N, H_kv, span, hd]
    y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=mask, scale=scale,
                                       enable_gqa=q.shape[2] != kv.shape[3])
    return y.transpose(1, 2).flatten(2)


def varlen(q: torch.Tensor, kv: torch.Tensor, cu_q: torch.Tensor, starts: torch.Tensor, used: torch.Tensor,
           scale: float) -> torch.Tensor:
    """One new token per row: q [N, 1, H, head_dim], kv [2, N, L, H_kv, head_dim] (its column already
    written) -> [N, 1, H * head_dim].

    cu_q: int32 [N + 1], 0..N (one query per row); starts: int32 [N + 1], row i's first key as a flat row
    of kv[0].view(N * L, ...) (i * L + pad_i; the last entry N * L); used: int32 [N], the keys each row
    reads from there (device tensors, so a captured graph reads their values at replay)."""
    n, length = kv.shape[1], kv.shape[2]
    flat = kv.flatten(1, 2)  # [2, N * L, H_kv, head_dim], a view
    return _flash(q.flatten(0, 1), flat[0], flat[1], cu_q, starts, length, used, scale).view(n, 1, -1)


def triton(q: torch.Tensor, kv: torch.Tensor, first: torch.Tensor, used: torch.Tensor, scale: float
           ) -> torch.Tensor:
    """varlen's reads by the Triton kernel: q [N, 1, H, head_dim], kv [2, N, L, H_kv, head_dim]; first: int32
    [N], row i's first written column (its padding); used: int32 [N] -> [N, 1, H * head_dim]."""
    from . import kv_attention_triton

    return kv_attention_triton.decode(q[:, 0], kv[0], kv[1], first, used, scale).view(q.shape[0], 1, -1)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, starts: torch.Tensor,
           max_k: int, used: torch.Tensor, scale: float) -> torch.Tensor:
    """aten's variable-length flash attention, one query per sequence: q [N, H, hd], k and v [rows, H_kv,
    hd]; sequence i's query attends to k[starts[i] : starts[i] + used[i]] -> [N, H, hd]. (The tests check
    the engine's bookkeeping on CPU against a plain implementation of this contract; the kernel itself
    only on a GPU.)"""
    return torch.ops.aten._flash_attention_forward(q, k, v, cu_q, starts, 1, max_k, 0.0, False, False,
                                                   scale=scale, seqused_k=used)[0]


__all__ = ["choose", "masked", "triton", "triton_supported", "varlen", "varlen_supported"]
