"""The Triton decode-attention kernel's launch configuration (models/kv_attention_triton.py: BLOCK keys per
loop iteration, WARPS per program, STAGES of software pipelining): every combination timed on the engine's
cache layout, as a fraction of the card's copy bandwidth, the module's current configuration first as the
baseline of the same run.

    python benchmarks/triton_decode_sweep.py --out runs/triton_sweep.json        # on a CUDA machine

Shapes: VILA-U 7B-256 at batch 64 (128 rows with the guidance twin), 32 heads of 128, a cache of 320
columns per row; each row reads `fill` columns minus its own padding (0-15), at fills 160 (the mean over an
image's 256 positions after a ~32-token prompt) and 288 (the last position). Bytes = the keys and values
the rows read. Each configuration's output is checked against the baseline's (bf16, atol 2e-2).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import kernel_bench_setup, timed  # noqa: E402

from fairgen.models import kv_attention_triton as kernel  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--columns", type=int, default=320)
    parser.add_argument("--fills", default="160,288")
    parser.add_argument("--repeats", type=int, default=50)
    args, cuda, dtype, bandwidth = kernel_bench_setup(parser)
    if not cuda:
        sys.exit("the Triton kernel runs on CUDA only")
    gen = torch.Generator(device=args.device).manual_seed(0)
    n, h, d, length = args.rows, args.heads, args.head_dim, args.columns
    q = torch.randn(n, h, d, device=args.device, dtype=dtype, generator=gen)
    k = torch.randn(n, length, h, d, device=args.device, dtype=dtype, generator=gen)
    v = torch.randn(n, length, h, d, device=args.device, dtype=dtype, generator=gen)
    baseline = (kernel.BLOCK, kernel.WARPS, kernel.STAGES)
    configs = [baseline] + [c for c in itertools.product((32, 64, 128), (2, 4, 8), (1, 2, 3, 4))
                            if c != baseline]
    rows = []
    for fill in (int(x) for x in args.fills.split(",")):
        first = torch.randint(0, 16, (n,), device=args.device, generator=gen, dtype=torch.int32)
        used = (fill - first).to(torch.int32)
        nbytes = 2 * int(used.sum()) * h * d * q.element_size()
        reference = None
        for block, warps, stages in configs:
            kernel.BLOCK, kernel.WARPS, kernel.STAGES = block, warps, stages
            try:
                out = kernel.decode(q, k, v, first, used, d ** -0.5)
                seconds = timed(lambda: kernel.decode(q, k, v, first, used, d ** -0.5), args.repeats)
            except Exception as error:  # a configuration the compiler or the card refuses (shared memory)
                print(json.dumps({"fill": fill, "block": block, "warps": warps, "stages": stages,
                                  "error": str(error).splitlines()[0][:120]}), flush=True)
                continue
            reference = out if reference is None else reference
            row = {"fill": fill, "block": block, "warps": warps, "stages": stages, "us": round(seconds * 1e6, 1),
                   "bandwidth_fraction": round(nbytes / seconds / bandwidth, 3),
                   "matches_baseline": bool(torch.allclose(out, reference, atol=2e-2, rtol=0))}
            rows.append(row)
            print(json.dumps(row), flush=True)
    kernel.BLOCK, kernel.WARPS, kernel.STAGES = baseline
    # The configuration with the least total time over the fills (only those measured at every fill).
    fills = {r["fill"] for r in rows}
    totals: dict[tuple, list[float]] = {}
    for r in rows:
        totals.setdefault((r["block"], r["warps"], r["stages"]), []).append(r["us"])
    ranked = sorted((sum(t), c) for c, t in totals.items() if len(t) == len(fills))
    summary = {"card": torch.cuda.get_device_name(), "copy_bandwidth_GBps": round(bandwidth / 1e9, 1),
               "baseline": dict(zip(("block", "warps", "stages"), baseline)),
               "best": dict(zip(("block", "warps", "stages"), ranked[0][1])),
               "best_vs_baseline_time": round(ranked[0][0] / sum(totals[baseline]), 3), "rows": rows}
    print(json.dumps({k: summary[k] for k in ("card", "baseline", "best", "best_vs_baseline_time")}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
