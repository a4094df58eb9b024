"""Where an engine token step spends its GPU time: torch.profiler over a window of token steps (--steps,
from the middle of the image, at the mean cache fill) of one eager engine call.

The engine's CUDA-graph replay runs the same kernels as the eager step, so the eager kernels' device
times show what bounds a replayed step (docs/performance.md). Prints the kernels with the most device time,
in microseconds per token step, and writes them as JSON.

    python benchmarks/profile_step.py --config benchmarks/configs/janus_pro_1b.json --batch 64
    python benchmarks/profile_step.py --config benchmarks/configs/janus_tiny.json --device cpu --batch 2  # smoke test
    python benchmarks/profile_step.py --family vila-u --batch 64    # VILA-U at the 7B-256 shapes: LM step + 4 depth draws
    python benchmarks/profile_step.py --family vila-u --shapes tiny --device cpu --batch 2 --steps 8  # smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import CFG, PROMPT  # noqa: E402
from janus_smoke import build_checkpoint  # noqa: E402

from fairgen import models  # noqa: E402
from fairgen.models import engine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=["janus", "vila-u"], default="janus")
    parser.add_argument("--shapes", choices=["7b-256", "tiny"], default="7b-256", help="vila-u: random-init shapes")
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "janus_pro_1b.json")
    parser.add_argument("--batch", type=int, default=64, help="images (each two rows: the guidance twin)")
    parser.add_argument("--top", type=int, default=25, help="kernels to print")
    parser.add_argument("--steps", type=int, default=32, help="token steps profiled, centred on the middle one")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    with tempfile.TemporaryDirectory() as tmp:
        dtype = torch.bfloat16 if cuda else torch.float32
        if args.family == "janus":
            checkpoint = build_checkpoint(args.config, Path(tmp) / "janus", dtype, args.device)
            model = models.load(f"janus:{checkpoint}", device=args.device, dtype="bf16" if cuda else "fp32")
            positions, cfg = model.n_image_tokens, {"cfg": CFG}
        else:  # upstream's cfg 3.0 and sampling, as benchmarks/vila_u_generation.py
            from fairgen.models import vila_u_checkpoint as layout
            from fairgen.models.vila_u import VilaUModel

            shapes = layout.SEVEN_B_256 if args.shapes == "7b-256" else layout.TINY
            parts = layout.random_parts(shapes, layout.tiny_tokenizer(layout.TEST_CORPUS), seed=0,
                                        device=args.device, dtype=dtype)
            model = VilaUModel.from_parts(parts, f"vila-u:random-{args.shapes}")
            positions, cfg = model.positions, {}
        prompts, seeds = [PROMPT] * args.batch, list(range(args.batch))
        model.generate_tokens(prompts, seeds, graphs=False, **cfg)  # warm-up
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        steps = min(args.steps, positions - 2)
        wait = (positions - steps) // 2 - 1
        token = engine.ImageEngine._token
        with profile(activities=activities, schedule=schedule(wait=wait, warmup=1, active=steps, repeat=1)) as prof:
            def stepped(self, span: int) -> None:  # the profiler's clock: one tick per token step
                token(self, span)
                prof.step()

            engine.ImageEngine._token = stepped
            try:
                model.generate_tokens(prompts, seeds, graphs=False, **cfg)
            finally:
                engine.ImageEngine._token = token
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0] if cuda else list(prof.key_averages())
    key = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events.sort(key=key, reverse=True)
    total = sum(key(e) for e in events)
    rows = [{"kernel": e.key[:120], "us_per_step": key(e) / steps, "share": key(e) / total, "calls_per_step":
             e.count / steps} for e in events[: args.top]]
    for r in rows:
        print(f"{r['us_per_step']:9.1f} us  {100 * r['share']:5.1f} %  {r['calls_per_step']:6.1f}/step  {r['kernel']}")
    print(f"total {total / steps / 1000:.2f} ms of {'device' if cuda else 'CPU'} time per step")
    if args.out:
        args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(0) if cuda else None, "batch": args.batch,
                                        "model": args.config.name if args.family == "janus" else f"vila-u {args.shapes}", "ms_per_step": total / steps / 1000,
                                        "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
