"""Benchmark of `fairgen locate` on the packaged fairgen-tiny over the 50 test occupations (the numbers of
docs/locate.md): 64 images per prompt, world:800 labelled renders as the tokenizer's first look, 16
sequences per prompt as the LM audit's first look, the default budget of looks. The validation set of
planted variants has its own script, benchmarks/locate_validation.py.

Prints the verdicts, the evidence, the effort and the wall time, and writes <out>/summary.json.

    python benchmarks/locate_tiny.py [--out runs/locate-bench] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fairgen.locate import locate


def summarise(name: str, findings: dict, seconds: float) -> dict:
    v = findings["verdicts"]
    lm = (findings.get("language_model") or {}).get("controlled") or {}
    rt = (findings.get("tokenizer") or {}).get("round_trip") or {}
    al = findings.get("alignment") or {}
    row = {"run": name, "seconds": round(seconds, 1), "headline": v["headline"],
           **{c: v[c]["verdict"] for c in ("understanding", "tokenizer", "language_model")},
           "partial_alignment": v["partial_alignment"]["attributes"],
           "effort": {c: v[c].get("effort") for c in ("understanding", "tokenizer", "language_model")}}
    for attr in ("gender", "race"):
        row[f"{attr}_hit_rate"] = lm.get(attr, {}).get("summary", {}).get("hit_rate")
        row[f"{attr}_lm_skew"] = lm.get(attr, {}).get("summary", {}).get("skew_ci")
        row[f"{attr}_skewed_prompts"] = lm.get(attr, {}).get("summary", {}).get("skewed_prompts")
        row[f"{attr}_survival_gap"] = (rt.get(attr) or {}).get("gap_ci")
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
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start = time.time()
    findings = locate("tiny", "occupations:test", args.out / "tiny", images_per_prompt=64, labelled="world:800",
                      sequences=16)
    rows = [summarise("tiny (packaged), 50 occupations", findings, time.time() - start)]
    (args.out / "summary.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"\nsummary: {args.out / 'summary.json'}")


if __name__ == "__main__":
    main()
