"""Decode-step projections (a few hundred rows times a weight matrix): how close each way of calling the
GEMM gets to the card's copy bandwidth.

An engine token step multiplies N = 2B rows (B images and their guidance twins) by every weight matrix
of the decoder, once. At N = 128-256 these GEMMs are skinny: the weights are the bytes that matter, so
each should run at the card's bandwidth. This times one layer's projections of a Llama shape (q, k, v,
o, gate, up, down; and fused q|k|v and gate|up) as F.linear calls them, and as the transposed product
W @ x^T, and split-K (the inner dimension in 2, 4 or 8 slices, one batched GEMM, then a sum), with
cuBLAS and with cuBLASLt, each call replayed 50 times inside one CUDA graph (no launch
gaps), and reports weight bytes / time / copy bandwidth.

    python benchmarks/gemm_decode.py --hidden 2048 --intermediate 5632 --rows 128,388   # Janus-Pro-1B
    python benchmarks/gemm_decode.py --hidden 4096 --intermediate 11008 --rows 128,112  # Janus-Pro-7B
    python benchmarks/gemm_decode.py --device cpu --hidden 64 --intermediate 128 --rows 4  # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import kernel_bench_setup, sync  # noqa: E402

REPLAYS = 50


def seconds_per_call(fn: Callable[[], torch.Tensor], cuda: bool) -> float:
    """Mean seconds of one fn() call: on CUDA, REPLAYS calls captured in one graph, best of 5 replays."""
    fn()
    if not cuda:
        start = time.perf_counter()
        for _ in range(5):
            fn()
        return (time.perf_counter() - start) / 5
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPLAYS):
            fn()
    best = float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        graph.replay()
        sync()
        best = min(best, time.perf_counter() - start)
    return best / REPLAYS


def split_k(x: torch.Tensor, w: torch.Tensor, parts: int) -> torch.Tensor:
    """F.linear(x, w) as `parts` products over slices of the inner dimension, one batched GEMM (parts times
    as many thread blocks for a skinny product), then their sum. x [M, K], w [N, K] -> [M, N]; no copies."""
    m, k = x.shape
    xs = x.view(m, parts, k // parts).transpose(0, 1)  # [parts, M, K/parts]
    ws = w.view(w.shape[0], parts, k // parts).permute(1, 2, 0)  # [parts, K/parts, N]
    return torch.bmm(xs, ws).sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--rows", default="128,388", help="rows per call: 2 x images (the guidance twin)")
    args, cuda, dtype, bandwidth = kernel_bench_setup(parser)
    d, i = args.hidden, args.intermediate
    shapes = {"q/k/v/o": (d, d), "q|k|v": (3 * d, d), "gate/up": (i, d), "gate|up": (2 * i, d), "down": (d, i)}
    libraries = ["cublas", "cublaslt"] if cuda else ["default"]
    report = {"gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
              "copy_bandwidth_gb_s": bandwidth / 1e9, "hidden": d, "intermediate": i, "rows": []}
    gen = torch.Generator(args.device).manual_seed(0)
    for rows in (int(r) for r in args.rows.split(",")):
        for name, (n_out, n_in) in shapes.items():
            w = torch.randn(n_out, n_in, device=args.device, dtype=dtype, generator=gen) / n_in**0.5
            x = torch.randn(rows, n_in, device=args.device, dtype=dtype, generator=gen)
            reference = F.linear(x.float(), w.float())
            calls = {"F.linear": lambda: F.linear(x, w), "W @ x^T": lambda: (w @ x.T).T}
            for parts in (2, 4, 8):
                if n_in % parts == 0:
                    calls[f"split-K {parts}"] = lambda parts=parts: split_k(x, w, parts)
            for library in libraries:
                if cuda:
                    torch.backends.cuda.preferred_blas_library(library)
                for call, fn in calls.items():
                    err = (fn().float() - reference).abs().max().item()
                    s = seconds_per_call(fn, cuda)
                    row = {"rows": rows, "weight": name, "shape": [n_out, n_in], "library": library, "call": call,
                           "us": s * 1e6, "fraction_of_copy_bandwidth": w.numel() * w.element_size() / s / bandwidth,
                           "max_abs_error": err}
                    print(json.dumps(row), flush=True)
                    report["rows"].append(row)
    if cuda:
        torch.backends.cuda.preferred_blas_library("cublas")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
