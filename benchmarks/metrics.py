"""Benchmark: aggregate 1M perception records with 1000 bootstrap replicates.

Prints seconds for counting records (MetricFrame.from_records) and for the summary with 1000 bootstrap
replicates (multinomial resampling, vectorised), against a baseline measured in the same run: the
straightforward bootstrap that resamples image indices prompt by prompt, replicate by replicate (timed on
a slice of the prompts and scaled up, since it is far too slow to run whole).

    python benchmarks/metrics.py [--records 1000000] [--replicates 1000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fairgen.metrics import MetricFrame, rd
from fairgen.types import ATTRIBUTES, Prompt


def make_records(n_records: int, n_prompts: int, seed: int = 0) -> tuple[list[Prompt], list[dict]]:
    rng = np.random.default_rng(seed)
    prompts = [Prompt(f"p{i:05d}", f"prompt {i}", f"concept {i}") for i in range(n_prompts)]
    g = rng.integers(0, 2, n_records)
    r = rng.integers(0, 4, n_records)
    a = rng.integers(0, 2, n_records)
    face = rng.random(n_records) < 0.95
    records = [
        {"prompt_id": prompts[i % n_prompts].id, "sample": i // n_prompts, "face": bool(face[i]),
         "label": {"gender": ATTRIBUTES["gender"][g[i]], "race": ATTRIBUTES["race"][r[i]], "age": ATTRIBUTES["age"][a[i]]}
         if face[i] else {}}
        for i in range(n_records)
    ]
    return prompts, records


def naive_bootstrap(labels_per_prompt: list[np.ndarray], k: int, replicates: int, seed: int = 0) -> np.ndarray:
    """Index resampling, one prompt and one replicate at a time: the baseline."""
    rng = np.random.default_rng(seed)
    out = np.empty((replicates, len(labels_per_prompt)))
    for b in range(replicates):
        for j, labels in enumerate(labels_per_prompt):
            sample = labels[rng.integers(0, len(labels), len(labels))]
            out[b, j] = rd(np.bincount(sample, minlength=k))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--prompts", type=int, default=6250)  # 160 images per prompt
    ap.add_argument("--replicates", type=int, default=1000)
    args = ap.parse_args()

    prompts, records = make_records(args.records, args.prompts)
    t0 = time.perf_counter()
    frame = MetricFrame.from_records(prompts, records, ("gender", "race", "age"))
    t_count = time.perf_counter() - t0
    t0 = time.perf_counter()
    frame.summarize(replicates=args.replicates, seed=0)
    t_summary = time.perf_counter() - t0

    # Baseline on a slice of prompts, gender only, scaled to all prompts and the 4 attributes summarised.
    slice_n = 20
    labels = [np.repeat(np.arange(2), c) for c in frame.counts["gender"][:slice_n]]
    t0 = time.perf_counter()
    naive_bootstrap(labels, 2, args.replicates)
    t_naive = (time.perf_counter() - t0) * (args.prompts / slice_n) * 4

    print(f"records: {args.records:,}  prompts: {args.prompts:,}  replicates: {args.replicates}")
    print(f"count records         {t_count:8.2f} s")
    print(f"summary + bootstrap   {t_summary:8.2f} s   (4 attributes x rd, kl, entropy)")
    print(f"naive bootstrap (est) {t_naive:8.2f} s   -> speed-up x{t_naive / t_summary:.0f}")


if __name__ == "__main__":
    main()
