"""Where a fairgen-tiny audit's time goes, per stage, in images per second on this machine: generating the
codes, decoding them to pixels, PNG encoding (what the run directory stores) and world perception. On a
GPU the first two run on the device; the last two run on the host in the audit's worker thread, so their
combined rate bounds an audit's speed there (docs/fix.md, issue 26's results).

    python benchmarks/audit_host.py [--device cpu|cuda] [--batch 256] [--threads 1]
"""

from __future__ import annotations

import argparse
import io
import json
import time

import torch

from fairgen import models, perception
from fairgen.suites import load as load_suite


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = models.load("tiny", device=args.device)
    prompts = load_suite("occupations:test")
    batch = [prompts[i % len(prompts)] for i in range(args.batch)]
    seeds = list(range(args.batch))

    def sync() -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    model.generate_tokens(batch[:8], seeds[:8])  # warm-up
    sync()
    rate = {}
    t = time.perf_counter()
    codes = model.generate_tokens(batch, seeds)
    sync()
    rate["generate"] = args.batch / (time.perf_counter() - t)
    t = time.perf_counter()
    images = model.decode_tokens(codes)
    sync()
    rate["decode"] = args.batch / (time.perf_counter() - t)
    t = time.perf_counter()
    for image in images:
        image.save(io.BytesIO(), format="PNG")
    rate["png"] = args.batch / (time.perf_counter() - t)
    backend = perception.load("world")
    t = time.perf_counter()
    backend.perceive(images)
    rate["perceive"] = args.batch / (time.perf_counter() - t)
    rate["host_bound"] = 1 / (1 / rate["png"] + 1 / rate["perceive"])
    print(json.dumps({"device": args.device, "batch": args.batch, "threads": args.threads,
                      "images_per_s": {k: round(v, 1) for k, v in rate.items()}}))


if __name__ == "__main__":
    main()
