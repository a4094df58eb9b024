"""Benchmark and validation of `fairgen locate` on fairgen-tiny (the numbers of docs/locate.md).

    packaged   locate on the packaged `tiny` checkpoint over the 50 occupations (64 images per prompt,
               world:800 labelled renders, 16 sequences per prompt and variant)
    validation trains (or reuses) the CPU validation pair of plant.validation_pair: one checkpoint whose
               bias is in its language model, one whose bias is only in its tokenizer's decoder; then
               locate on each over the six concepts they were trained on

Prints the verdicts, the evidence and the wall time of each run, and writes <out>/summary.json.

    python benchmarks/locate_tiny.py [--out runs/locate-bench] [--threads 2] [--skip-packaged]
                                     [--skip-validation] [--validation-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fairgen import suites
from fairgen.locate import locate
from fairgen.models.tiny.plant import validation_pair


def summarise(name: str, findings: dict, seconds: float) -> dict:
    v = findings["verdicts"]
    lm = (findings.get("language_model") or {}).get("controlled") or {}
    rt = (findings.get("tokenizer") or {}).get("round_trip") or {}
    al = findings.get("alignment") or {}
    row = {"run": name, "seconds": round(seconds, 1), "headline": v["headline"],
           **{c: v[c]["verdict"] for c in ("understanding", "tokenizer", "language_model")},
           "partial_alignment": v["partial_alignment"]["attributes"]}
    for attr in ("gender", "race"):
        row[f"{attr}_hit_rate"] = lm.get(attr, {}).get("summary", {}).get("hit_rate")
        row[f"{attr}_contrast"] = lm.get(attr, {}).get("summary", {}).get("contrast_ci95")
        row[f"{attr}_survival_gap"] = (rt.get(attr) or {}).get("gap_ci95")
        row[f"{attr}_alignment_gap"] = ((al.get(attr) or {}).get("summary") or {}).get("gap_ci95")
        row[f"{attr}_understanding_gap"] = ((findings.get("understanding") or {}).get("summary", {})
                                            .get(attr, {}).get("gap"))
    print(f"\n== {name} ({seconds:.0f} s)\n{v['headline']}")
    for c in ("understanding", "tokenizer", "language_model", "partial_alignment"):
        print(f"- {c}: {v[c].get('verdict', '')} | {v[c]['text']}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/locate-bench"))
    ap.add_argument("--validation-dir", type=Path, default=None, help="Where the validation pair lives / is trained.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-packaged", action="store_true")
    ap.add_argument("--skip-validation", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    if not args.skip_packaged:
        start = time.time()
        findings = locate("tiny", "occupations:test", args.out / "tiny", images_per_prompt=64, labelled="world:800",
                          sequences=16)
        rows.append(summarise("tiny (packaged), 50 occupations", findings, time.time() - start))
    if not args.skip_validation:
        start = time.time()
        pair = validation_pair(args.validation_dir or args.out / "validation")
        print(f"validation pair ready in {time.time() - start:.0f} s: {pair[0]}, {pair[1]}")
        prompts = suites.load("occupations:test")[:6]
        for name, checkpoint in zip(("lm-biased", "tokenizer-biased"), pair):
            start = time.time()
            findings = locate(f"tiny:{checkpoint}", prompts, args.out / name, images_per_prompt=64,
                              labelled="world:400", sequences=16)
            rows.append(summarise(f"{name}, 6 occupations", findings, time.time() - start))
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nsummary: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
