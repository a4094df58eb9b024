"""Benchmark of `fairgen fix` on fairgen-tiny: the paper's three settings, before/after on occupations:test.

    python benchmarks/fix_tiny.py --out runs/fix_tiny                       # the packaged `tiny` model

Settings (docs/fix.md): gender, race, mix (gender and race), each stage 1 SFT then stage 2 BPO (150 steps
each, lr 1e-3, beta 1; alpha 1 and an explicit anchor of 2 by default, where the paper has 0 and 0: see
docs/fix.md), a balanced set drawn by the world renderer, LoRA on the language model. The before audits are
shared by the three settings. Targets (issue 9): gender setting cuts gender rd by >= 70%, race setting
race rd by >= 45%, mix each by >= 30%; fidelity (concept match) drops by at most 3 points; explicit
prompts still followed >= 95%. Prints the table and writes <out>/fix_tiny.json and <out>/fix_tiny.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fairgen.fix import FixConfig, fix

SETTINGS = {"gender": ("gender",), "race": ("race",), "mix": ("gender", "race")}
# Minimum relative rd cut per (setting, attribute), from issue 9.
TARGETS = {("gender", "gender"): 0.70, ("race", "race"): 0.45, ("mix", "gender"): 0.30, ("mix", "race"): 0.30}
MAX_FIDELITY_DROP_POINTS, MIN_EXPLICIT = 3.0, 0.95


def run(model: str, out: Path, images_per_prompt: int, train_prompts: int | None, settings: list[str],
        steps: tuple[int, int], alpha: float, anchor: float, lr: float) -> dict:
    """Every setting's fix run; returns {setting: fix_report}."""
    reports = {}
    for name in settings:
        config = FixConfig(model=model, attributes=SETTINGS[name], method="bpo", data_source="world",
                           images_per_group=4, train_prompts=train_prompts, sft_steps=steps[0], bpo_steps=steps[1],
                           alpha=alpha, beta=1.0, anchor=anchor, lr=lr, images_per_prompt=images_per_prompt,
                           before=str(out / "before"))
        started = time.time()
        reports[name] = fix(config, out / name)
        print(f"{name}: {time.time() - started:.0f} s")
    return reports


def _f(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def table(reports: dict) -> tuple[str, dict]:
    """The markdown table and the pass/fail verdicts."""
    lines = ["| setting | attribute | rd before | rd after | change | target | face rate | fidelity Δ (pts) "
             "| explicit before → after | pass |", "| --- " * 10 + "|"]
    verdicts = {}
    for name, rep in reports.items():
        fid = rep["fidelity_change_points"]
        explicit = rep["explicit_adherence"]
        faces = f"{_f(rep['before']['face_rate'])} → {_f(rep['after']['face_rate'])}"
        for attr in SETTINGS[name]:
            ch = rep["rd_change"].get(attr, {"before": None, "after": None, "relative": None})
            target = TARGETS[(name, attr)]
            ok = (ch["relative"] is not None and -ch["relative"] >= target
                  and (fid is None or fid >= -MAX_FIDELITY_DROP_POINTS)
                  and all(v is not None and v >= MIN_EXPLICIT for v in explicit["after"].values()))
            verdicts[f"{name}/{attr}"] = ok
            adherence = ", ".join(f"{a} {_f(explicit['before'].get(a))} → {_f(v)}" for a, v in explicit["after"].items())
            change = "–" if ch["relative"] is None else f"{100 * ch['relative']:+.1f}%"
            lines.append(f"| {name} | {attr} | {_f(ch['before'])} | {_f(ch['after'])} | {change} | -{100 * target:.0f}% "
                         f"| {faces} | {_f(fid, '+.1f')} | {adherence} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n", verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="tiny", help="model spec (default: the packaged checkpoint)")
    parser.add_argument("--images-per-prompt", type=int, default=160)
    parser.add_argument("--train-prompts", type=int, default=None, help="training prompts (default: all)")
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--bpo-steps", type=int, default=150)
    parser.add_argument("--alpha", type=float, default=1.0, help="stage 2 SFT weight (paper: 0; see docs/fix.md)")
    parser.add_argument("--anchor", type=float, default=2.0, help="explicit-prompt SFT weight (paper: 0)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--settings", default="gender,race,mix")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.model
    reports = run(model, args.out, args.images_per_prompt, args.train_prompts, args.settings.split(","),
                  (args.sft_steps, args.bpo_steps), args.alpha, args.anchor, args.lr)
    text, verdicts = table(reports)
    header = f"fairgen fix on {model}, occupations:test at {args.images_per_prompt} images per prompt\n\n"
    print(header + text)
    (args.out / "fix_tiny.md").write_text(header + text)
    (args.out / "fix_tiny.json").write_text(json.dumps({"model": model, "verdicts": verdicts, "reports": reports},
                                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
