"""Single-query (decode) attention over the engine's KV cache: which kernel reads the cache fastest.

At large batches an engine step is bound by attention over the KV cache (docs/performance.md: at batch
194 on an H100 a 1B-shape step reads ~26 GB, ~23 GB of it cache, at 0.44 of the copy bandwidth). This
times one layer's attention exactly as the engine calls it (bool mask [rows, 1, 1, columns] hiding left
padding; bf16) through each SDPA backend and through plain matmul-softmax-matmul, checks they agree, and
reports each as a fraction of the card's copy bandwidth (K and V bytes read / time / bandwidth).

    python benchmarks/attention_decode.py --batch 64,194 --columns 320,600           # on a CUDA machine
    python benchmarks/attention_decode.py --device cpu --batch 2 --columns 64 --heads 2  # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import kernel_bench_setup, timed  # noqa: E402


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """q [N, H, 1, d], k and v [N, H, L, d], mask [N, 1, 1, L] (True: attend) -> [N, H, 1, d]; softmax in fp32."""
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    weights = scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype)
    return torch.matmul(weights, v)


def methods() -> dict[str, Callable[..., torch.Tensor]]:
    """Name -> attention(q, k, v, mask, scale): SDPA as the engine calls it, each backend forced, matmul."""
    def sdpa(backend: SDPBackend | None) -> Callable[..., torch.Tensor]:
        def run(q, k, v, mask, scale):
            with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
                return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return run

    return {"sdpa (engine)": sdpa(None), "sdpa efficient": sdpa(SDPBackend.EFFICIENT_ATTENTION),
            "sdpa cudnn": sdpa(SDPBackend.CUDNN_ATTENTION), "sdpa math": sdpa(SDPBackend.MATH),
            "matmul": matmul_attention}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="64,194", help="images (each two rows: the guidance twin)")
    parser.add_argument("--columns", default="320,600", help="filled cache columns the query reads")
    parser.add_argument("--heads", type=int, default=16, help="Janus-Pro-1B: 16, 7B: 32")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    args, cuda, dtype, bandwidth = kernel_bench_setup(parser)
    report = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
              "copy_bandwidth_gb_s": bandwidth / 1e9, "rows": []}
    gen = torch.Generator(args.device).manual_seed(0)
    attentions = methods()
    for batch in (int(b) for b in args.batch.split(",")):
        for columns in (int(c) for c in args.columns.split(",")):
            n, h, d = 2 * batch, args.heads, args.head_dim
            q = torch.randn(n, h, 1, d, device=args.device, dtype=dtype, generator=gen)
            k, v = (torch.randn(n, h, columns, d, device=args.device, dtype=dtype, generator=gen) for _ in "kv")
            pad = torch.randint(0, 8, (n, 1), device=args.device, generator=gen)  # left padding per row
            mask = (torch.arange(columns, device=args.device) >= pad)[:, None, None, :]
            scale = 1 / math.sqrt(d)
            reference = matmul_attention(q.float(), k.float(), v.float(), mask, scale)
            kv_bytes = 2 * k.numel() * k.element_size()
            for name, fn in attentions.items():
                try:
                    y = fn(q, k, v, mask, scale)
                    seconds = timed(lambda: fn(q, k, v, mask, scale), args.repeats)  # mean of back-to-back calls
                except RuntimeError as e:  # a backend that does not take this input (e.g. cuDNN with a mask)
                    row = {"batch": batch, "columns": columns, "method": name, "error": str(e).splitlines()[0]}
                else:
                    err = (y.float() - reference).abs().max().item()
                    row = {"batch": batch, "columns": columns, "method": name, "us": seconds * 1e6,
                           "fraction_of_copy_bandwidth": kv_bytes / seconds / bandwidth, "max_abs_error": err}
                print(json.dumps(row), flush=True)
                report["rows"].append(row)
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
