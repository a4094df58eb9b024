"""A Triton kernel for the engine's decode attention (kv_attention.py's "triton" path): one new token per
row over the columns that row has written, as the varlen path reads them, in one program per (row, query
head) that streams the row's keys and values once with an online softmax.

Why beside aten's flash attention: flash runs a decode query in a tile of 64-128 query rows of which one
is real, so its tensor-core work is that many times the useful work; on an H200 it read decode keys at
0.55-0.60 of the copy bandwidth where cuDNN read them at 0.82-1.04 (docs/performance.md, "Decode
attention"). This kernel does the one row's dot products on the CUDA cores (~0.2 ms per 7B step at batch
64, against ~4 ms of reading) and is bound by reading the cache: on an H100 it read the keys and values at
0.88-0.93 of the copy bandwidth at VILA-U 7B's batch-64 shapes (benchmarks/triton_decode_sweep.py). Its
grid is rows x heads (4096 programs there). The head width must be a power of 2.
"""

from __future__ import annotations

import functools

import torch

# Launch configuration: keys per loop iteration, warps per program, software-pipelining stages. The fastest
# of 36 in the H100 sweep of benchmarks/triton_decode_sweep.py, 0.86 of the time of (64, 4, 3)
# (docs/performance.md, "Attention over the written columns only").
BLOCK, WARPS, STAGES = 128, 2, 3


@functools.cache
def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def decode(q_ptr, k_ptr, v_ptr, o_ptr, start_ptr, used_ptr, scale, stride_qn, stride_qh, stride_kn,
               stride_kl, stride_kh, stride_on, stride_oh, HEADS: tl.constexpr, GROUP: tl.constexpr,
               D: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        n, h = pid // HEADS, pid % HEADS
        start, used = tl.load(start_ptr + n), tl.load(used_ptr + n)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + n * stride_qn + h * stride_qh + d).to(tl.float32) * scale
        base = n * stride_kn + (h // GROUP) * stride_kh
        best, total = -float("inf"), 0.0
        acc = tl.zeros([D], dtype=tl.float32)
        for j in range(0, used, BLOCK):
            cols = j + tl.arange(0, BLOCK)
            valid = cols < used
            offs = base + (start + cols)[:, None] * stride_kl + d[None, :]
            k = tl.load(k_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
            s = tl.where(valid, tl.sum(k * q[None, :], axis=1), -float("inf"))
            new = tl.maximum(best, tl.max(s, axis=0))
            alpha = tl.exp(best - new)
            p = tl.exp(s - new)
            total = total * alpha + tl.sum(p, axis=0)
            v = tl.load(v_ptr + offs, mask=valid[:, None], other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
            best = new
        tl.store(o_ptr + n * stride_on + h * stride_oh + d, (acc / total).to(o_ptr.dtype.element_ty))

    return decode


def decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, start: torch.Tensor, used: torch.Tensor,
           scale: float) -> torch.Tensor:
    """q [N, H, hd] (last dim contiguous); k, v [N, L, H_kv, hd] (one layer's cache, last dim contiguous);
    start, used int32 [N]: row i's query attends to columns start[i] .. start[i] + used[i] - 1 (used >= 1)
    -> [N, H, hd] in q's dtype."""
    n, heads, width = q.shape
    out = torch.empty((n, heads, width), dtype=q.dtype, device=q.device)
    _kernel()[(n * heads,)](q, k, v, out, start, used, scale, q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                            k.stride(2), out.stride(0), out.stride(1), HEADS=heads, GROUP=heads // k.shape[2],
                            D=width, BLOCK=BLOCK, num_warps=WARPS, num_stages=STAGES)
    return out


__all__ = ["available", "decode"]
