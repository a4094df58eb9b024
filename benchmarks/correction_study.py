"""Correction study: does calibration-based correction recover planted shares through a known noisy reader?

The world's exact reader is wrapped in NoisyPerception with a known, group-dependent confusion (15% of women
read as men, 5% of men as women; some race confusion) and group-dependent miss rates (women, Black and old
faces are found less often). Each repeat
  1. calibrates on N balanced labelled renders (as `fairgen calibrate --labelled world:N`),
  2. audits four prompts of n images each, attributes drawn from a planted spec (as the `world` model does),
  3. corrects the counts with the calibration (as `fairgen audit --calibration`), with bootstrap ci95 over
     both the images and the calibration counts,
and the study compares raw and corrected estimates with the planted truth over the repeats.

Every image of a repeat is a draw of the wrapper's noise under its own key; the underlying reading is that of
one rendered avatar per (gender, race, age) class, read by the exact reader (checked below), which is what
rendering a fresh avatar for every draw would read, minus the rendering time.

    python benchmarks/correction_study.py [--repeats 200] [--images 200] [--calibration 2000]
                                          [--replicates 1000] [--workers 1] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

import numpy as np

from fairgen.calibrate import calibration_from
from fairgen.metrics import MetricFrame, percentile_interval, rd
from fairgen.metrics.correction import corrected_estimates
from fairgen.metrics.intervals import nanmean_rows
from fairgen.perception.noisy import NoisyPerception
from fairgen.perception.world import WorldPerception
from fairgen.types import ATTRIBUTES, JOINT, METRIC_ATTRIBUTES, Perception, Prompt
from fairgen.world import WorldSpec, read, render

NOISE: dict[str, Any] = {
    "confusion": {
        "gender": {"female": {"male": 0.15}, "male": {"female": 0.05}},
        "race": {"indian": {"white": 0.15}, "white": {"indian": 0.05}, "black": {"indian": 0.10},
                 "asian": {"white": 0.05}},
    },
    "miss": {"gender": {"female": 0.10, "male": 0.02}, "race": {"black": 0.06}, "age": {"old": 0.05}},
}
# Gender and age: every share >= 0.2 from balance. Race has two variants. "separated" (default): shares at
# least 0.05 and 0.1 apart, away from rd's kinks (ties) and the simplex boundary. "rule": every race share
# >= 0.2 from 0.25 too, which for 4 classes forces ties (0.05, 0.05, 0.05) or zero shares.
RACES = {
    "separated": {"nurse": (0.55, 0.05, 0.15, 0.25), "engineer": (0.15, 0.05, 0.5, 0.3),
                  "teacher": (0.05, 0.55, 0.15, 0.25), "ceo": (0.5, 0.05, 0.3, 0.15)},
    "rule": {"nurse": (0.85, 0.05, 0.05, 0.05), "engineer": (0.05, 0.0, 0.45, 0.5),
             "teacher": (0.0, 0.5, 0.05, 0.45), "ceo": (0.5, 0.05, 0.45, 0.0)},
}
GENDER_AGE = {"nurse": (0.8, 0.75), "engineer": (0.25, 0.8), "teacher": (0.7, 0.3), "ceo": (0.1, 0.25)}


def world_spec(races: str = "separated") -> WorldSpec:
    """The planted spec: four concepts; female and young shares from GENDER_AGE, race from RACES[races]."""
    concepts = {
        c: {"gender": {"female": f, "male": round(1 - f, 6)}, "age": {"young": y, "old": round(1 - y, 6)},
            "race": dict(zip(ATTRIBUTES["race"], RACES[races][c]))}
        for c, (f, y) in GENDER_AGE.items()
    }
    balanced = {a: dict.fromkeys(classes, 1 / len(classes)) for a, classes in ATTRIBUTES.items()}
    return WorldSpec.from_dict({"default": balanced, "concepts": concepts})


PROMPTS = [Prompt(c, f"A photo of the face of a {c}, a person", c) for c in GENDER_AGE]
CLASSES = list(itertools.product(*ATTRIBUTES.values()))  # 16 (gender, race, age)


def exact_pool() -> dict[tuple[str, str, str], Perception]:
    """One exact reading per (gender, race, age): rendered avatars, checked to read back as drawn."""
    pool = {}
    for cls in CLASSES:
        seen = read(render(*cls, concept="study", seed=len(pool)))
        assert tuple(seen.label()[a] for a in ATTRIBUTES) == cls, (cls, seen.label())
        pool[cls] = seen
    return pool


def planted(spec: WorldSpec) -> dict[str, np.ndarray]:
    """True shares per attribute, (P, K), in PROMPTS order; the joint is the product (attributes are
    independent within a concept)."""
    dist = [spec.distribution(p.concept) for p in PROMPTS]
    out = {a: np.array([[d[a][c] for c in classes] for d in dist]) for a, classes in ATTRIBUTES.items()}
    out[JOINT] = (out["gender"][:, :, None] * out["race"][:, None, :]).reshape(len(PROMPTS), -1)
    return out


def one_repeat(r: int, spec: WorldSpec, pool: dict, images: int, n_calibration: int, replicates: int,
               seed: int) -> dict[str, Any]:
    """Calibrate, audit and correct once; raw and corrected shares and rd, with intervals, per attribute."""
    noisy = NoisyPerception(WorldPerception(), NOISE["confusion"], NOISE["miss"], seed=seed * 100_003 + r,
                            name="world-noisy:study")
    truths = [dict(zip(ATTRIBUTES, CLASSES[i % len(CLASSES)])) for i in range(n_calibration)]
    seen = [noisy.corrupt(pool[CLASSES[i % len(CLASSES)]], b"cal/%d" % i) for i in range(n_calibration)]
    cal = calibration_from(noisy, f"world:{n_calibration}", truths, seen)

    rng = np.random.default_rng([seed, r])
    records = []
    for p in PROMPTS:
        for k in range(images):
            drawn = spec.sample(p.concept, rng)
            got = noisy.corrupt(pool[tuple(drawn[a] for a in ATTRIBUTES)], f"audit/{p.id}/{k}".encode())
            records.append({"prompt_id": p.id, "face": got.face, "label": got.label()})
    frame = MetricFrame.from_records(PROMPTS, records, ATTRIBUTES)
    est = corrected_estimates(frame.counts, cal.blocks, replicates, seed=r)
    out = {}
    for attr, e in est.items():
        out[attr] = {
            "raw_shares": frame.counts[attr] / frame.counts[attr].sum(axis=1, keepdims=True),
            "raw_rd": np.asarray(rd(frame.counts[attr])),
            "shares": e["shares"], "shares_ci": percentile_interval(e["shares_boot"]),
            "rd": e["rd"], "rd_ci": percentile_interval(e["rd_boot"]),
            "suite_rd_ci": percentile_interval(nanmean_rows(e["rd_boot"])),
        }
    return out


def run_study(spec: WorldSpec, repeats: int = 200, images: int = 200, n_calibration: int = 2000,
              replicates: int = 1000, seed: int = 0, workers: int = 1) -> dict[str, dict[str, np.ndarray]]:
    """All repeats, stacked: {attribute: {name: (R, ...) array}} with the names of one_repeat."""
    job = partial(one_repeat, spec=spec, pool=exact_pool(), images=images, n_calibration=n_calibration,
                  replicates=replicates, seed=seed)
    if workers > 1:
        with ProcessPoolExecutor(workers) as ex:
            runs = list(ex.map(job, range(repeats), chunksize=max(1, repeats // (4 * workers))))
    else:
        runs = [job(r) for r in range(repeats)]
    return {a: {k: np.stack([run[a][k] for run in runs]) for k in runs[0][a]} for a in runs[0]}


def evaluate(spec: WorldSpec, results: dict[str, dict[str, np.ndarray]],
             images: int = 200) -> tuple[list[dict], dict[str, Any]]:
    """Per (prompt, attribute) rows and the acceptance figures:
    share_bias: per attribute, max over prompts and classes of |mean corrected share − planted| (and raw);
    rd_error_ratio: per attribute, over its skewed prompts (every share >= 0.2 from balance), the mean of
        |mean corrected rd − true rd| over the mean of |mean raw rd − true rd|;
    coverage: (min, max) over skewed (prompt, attribute) of the share of repeats whose corrected rd ci95
        covers the true rd; suite_coverage: the same for the suite mean (mean over prompts) per attribute;
    share_coverage: per attribute, (min, max) over prompts and classes with an expected count of at least 5
        (planted share × images) of the share of repeats whose corrected share ci95 covers the planted share,
        and the min over all classes with a planted share > 0."""
    truth = planted(spec)
    rows, share_bias, ratios, coverage, suite_cov, share_cov = [], {}, {}, [], {}, {}
    for attr in METRIC_ATTRIBUTES:
        res, true = results[attr], truth[attr]
        share_bias[attr] = (float(np.abs(res["shares"].mean(0) - true).max()),
                            float(np.abs(res["raw_shares"].mean(0) - true).max()))
        ci = res["shares_ci"]  # (R, P, K, 2)
        covered = ((ci[..., 0] <= true) & (true <= ci[..., 1])).mean(axis=0)
        common = covered[true * images >= 5]
        share_cov[attr] = (float(common.min()), float(common.max()), float(covered[true > 0].min()))
        true_rd = np.asarray(rd(true))
        errors = []
        for i, p in enumerate(PROMPTS):
            skewed = attr != JOINT and bool((np.abs(true[i] - 1 / true.shape[1]) >= 0.2 - 1e-9).all())
            ci = res["rd_ci"][:, i]
            row = {
                "prompt": p.id, "attribute": attr, "true_rd": float(true_rd[i]), "skewed": skewed,
                "raw_err": float(res["raw_rd"][:, i].mean() - true_rd[i]),
                "cor_err": float(res["rd"][:, i].mean() - true_rd[i]),
                "raw_rmse": float(np.sqrt(((res["raw_rd"][:, i] - true_rd[i]) ** 2).mean())),
                "cor_rmse": float(np.sqrt(((res["rd"][:, i] - true_rd[i]) ** 2).mean())),
                "coverage": float(((ci[:, 0] <= true_rd[i]) & (true_rd[i] <= ci[:, 1])).mean()),
            }
            rows.append(row)
            if skewed:
                errors.append((abs(row["cor_err"]), abs(row["raw_err"])))
                coverage.append(row["coverage"])
        if errors:
            cor, raw = np.mean(errors, axis=0)
            ratios[attr] = float(cor / raw)
        ci, true_suite = res["suite_rd_ci"], float(true_rd.mean())
        suite_cov[attr] = float(((ci[:, 0] <= true_suite) & (true_suite <= ci[:, 1])).mean())
    accept = {"share_bias": share_bias, "rd_error_ratio": ratios, "coverage": (min(coverage), max(coverage)),
              "suite_coverage": suite_cov, "share_coverage": share_cov}
    return rows, accept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--images", type=int, default=200, help="images per prompt")
    ap.add_argument("--calibration", type=int, default=2000, help="labelled renders per calibration")
    ap.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--races", choices=sorted(RACES), default="separated", help="race shares (see RACES)")
    args = ap.parse_args()
    start = time.perf_counter()
    spec = world_spec(args.races)
    results = run_study(spec, args.repeats, args.images, args.calibration, args.replicates, args.seed,
                        args.workers)
    rows, accept = evaluate(spec, results, args.images)
    print(f"races {args.races} · {args.repeats} repeats · {args.images} images/prompt · calibration "
          f"{args.calibration} renders · {args.replicates} bootstrap replicates · "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| prompt | attribute | true rd | raw rd error | corrected rd error | raw RMSE | corrected RMSE "
          "| corrected ci95 coverage |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        mark = "" if r["skewed"] else " ‡"
        print(f"| {r['prompt']} | {r['attribute']}{mark} | {r['true_rd']:.3f} | {r['raw_err']:+.3f} | "
              f"{r['cor_err']:+.3f} | {r['raw_rmse']:.3f} | {r['cor_rmse']:.3f} | {r['coverage']:.3f} |")
    print("\n‡ not every share >= 0.2 from balance: outside the rd-error and coverage criteria\n")
    for attr, (cor, raw) in accept["share_bias"].items():
        print(f"max |mean share − planted| {attr:14s} corrected {cor:.4f}   raw {raw:.4f}")
    lo, hi = accept["coverage"]
    print("mean |corrected rd error| / mean |raw rd error| over skewed prompts (criterion <= 0.25): " +
          "  ".join(f"{a} {r:.3f}" for a, r in accept["rd_error_ratio"].items()))
    print(f"corrected rd ci95 coverage (skewed) {lo:.3f} – {hi:.3f}   (criterion 0.92 – 0.98)")
    print("suite-mean corrected rd ci95 coverage " +
          "  ".join(f"{a} {c:.3f}" for a, c in accept["suite_coverage"].items()))
    print("corrected share ci95 coverage, expected count >= 5 (all planted > 0: min) " +
          "  ".join(f"{a} {lo:.3f}–{hi:.3f} ({low:.3f})"
                    for a, (lo, hi, low) in accept["share_coverage"].items()))


if __name__ == "__main__":
    main()
