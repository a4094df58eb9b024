"""Time `fairgen locate` on a random-init Janus-Pro shape (benchmarks/configs/) on one GPU, over the 50
test occupations.

    python benchmarks/locate_janus.py [--config benchmarks/configs/janus_pro_7b.json] [--out runs/locate-janus]
                                      [-n 4] [--sequences 4] [--budget 1] [--labelled world:64]

Random weights draw no faces, so the perception-based components cannot be decided and spend the
effort the flags fix (one look by default); the LM statistic needs no faces and may decide at once. The
numbers are the cost of that effort at this shape: audit (n images per prompt), understanding probe,
tokenizer round trip and probes on the labelled renders, LM audit (sequences per prompt, each scored
under the neutral prompt and the six explicit variants), hidden-state probe. Writes OUT/locate_janus.json (card, versions,
checkpoint build / load seconds, locate seconds and per-stage seconds from the progress reports).
Needs transformers >= 5.23 (5.17's Janus image generation crashes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from janus_smoke import build_checkpoint  # noqa: E402  (the random-init checkpoint builder)

from fairgen import models, suites  # noqa: E402
from fairgen.locate import locate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "janus_pro_7b.json")
    ap.add_argument("--out", type=Path, default=Path("runs/locate-janus"))
    ap.add_argument("-n", "--images-per-prompt", type=int, default=4)
    ap.add_argument("--sequences", type=int, default=4)
    ap.add_argument("--budget", type=int, default=1)
    ap.add_argument("--labelled", default="world:64")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script (fp32)")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    import transformers

    report: dict = {"config": args.config.name, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "settings": {k: getattr(args, k) for k in ("images_per_prompt", "sequences", "budget",
                                                               "labelled", "prompts")},
                    "date": time.strftime("%Y-%m-%d")}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / "locate_janus.json").write_text(json.dumps(report, indent=1) + "\n")

    stages: dict[str, list[float]] = {}

    saved, began = [0.0], [time.perf_counter()]

    def spans() -> dict[str, float]:
        """Each stage's seconds: from the previous stage's last report (locate's start for the first) to
        its own last, so work done before a stage's first report counts (stages report in turn)."""
        out, last = {}, began[0]
        for k, (_, end) in stages.items():
            out[k], last = round(end - last, 2), end
        return out

    def progress(stage: str, done: int, total: int) -> None:  # first and last report of each stage
        now = time.perf_counter()
        if stage not in stages:
            print(f"{stage} starts", flush=True)
        stages.setdefault(stage, [now, now])[1] = now
        report["stage_spans_s"] = spans()
        report["stage_progress"] = {**report.get("stage_progress", {}), stage: [done, total]}
        if now - saved[0] > 5:  # a run cut off still says where its time went
            saved[0] = now
            save()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        checkpoint = build_checkpoint(args.config, Path(tmp) / "janus", torch.bfloat16 if cuda else torch.float32,
                                      args.device)
        report["build_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        model = models.load(f"janus:{checkpoint}", device=args.device, dtype="bf16" if cuda else "fp32")
        report["load_s"] = time.perf_counter() - t0
        save()
        shutil.rmtree(args.out / "run", ignore_errors=True)  # a new random checkpoint: never a resume
        prompts = suites.load("occupations:test")[:args.prompts]
        t0 = began[0] = time.perf_counter()
        findings = locate(model, prompts, args.out / "run", images_per_prompt=args.images_per_prompt,
                          labelled=args.labelled, sequences=args.sequences, budget=args.budget,
                          perception_backend="world", progress=progress)
        report["locate_s"] = time.perf_counter() - t0
        report["stage_spans_s"] = {**spans(), "after the last report (probes, verdicts)":
                                   round(time.perf_counter() - max([began[0], *(v[1] for v in stages.values())]), 2)}
        report["verdicts"] = {k: findings["verdicts"][k]["verdict"] for k in ("understanding", "tokenizer",
                                                                             "language_model")}
        if cuda:
            report["max_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        save()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
