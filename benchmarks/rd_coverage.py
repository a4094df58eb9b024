"""Coverage of rd intervals for the population value, by simulation on random world specs (docs/intervals.md).

Each repeat draws a random world: P prompts, each with true joint gender × race shares and age shares of one
of four kinds (drawn with equal odds), and a face count n per prompt:
  skewed    Dirichlet(1) shares (anything, often far from balance),
  near-tie  balanced shares moved by a few points (N(0, 0.03) per class, renormalised),
  tied      exactly balanced shares (rd = 0: the worst case for rd's upward bias),
  mixed     some classes tied, others apart (two equal shares per pair of classes, the pairs skewed).
Counts are drawn as the audit sees them. "raw": a perfect reader, so the raw rd's population value is the
true rd. "calibrated": a reader with a random confusion (accuracy 0.8–0.97 per class) and detection rates
(0.8–1), calibrated on 250 labelled faces per true class, corrected as `fairgen audit --calibration` does;
the target is the true rd. For each attribute (gender, race, age, gender × race) the script reports how
often the interval holds the population value, per prompt and for the suite mean, for three intervals:
  population  the bias-aware interval (metrics.population),
  percentile  the plain rd's percentile bootstrap interval (what results.json's rd ci95 is),
and the mean estimate minus the truth (bias) of the plain rd and the bias-aware estimate.

    python benchmarks/rd_coverage.py [--repeats 400] [--prompts 20] [--replicates 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fairgen.metrics import percentile_interval, rd
from fairgen.metrics.correction import CalibrationBlock, corrected_estimates
from fairgen.metrics.intervals import nanmean_rows
from fairgen.metrics.population import population_rd, share_replicates
from fairgen.types import JOINT

KINDS = ("skewed", "near-tie", "tied", "mixed")
ATTRS = ("gender", "race", JOINT, "age")


def _shares(rng: np.random.Generator, k: int, kind: str) -> np.ndarray:
    if kind == "skewed":
        return rng.dirichlet(np.ones(k))
    if kind == "near-tie":
        p = np.clip(1 / k + rng.normal(0, 0.03, k), 0.005, None)
        return p / p.sum()
    if kind == "tied":
        return np.full(k, 1 / k)
    pairs = rng.dirichlet(np.ones(k // 2))  # mixed: classes tied two by two, the pairs apart
    return np.repeat(pairs / 2, 2)[rng.permutation(k)]


def draw_world(rng: np.random.Generator, prompts: int, n_range: tuple[int, int]) -> dict[str, np.ndarray]:
    """True shares per prompt: {"joint" (P, 8), "age" (P, 2)} and face counts n (P,)."""
    joint = np.stack([_shares(rng, 8, rng.choice(KINDS)) for _ in range(prompts)])
    age = np.stack([_shares(rng, 2, rng.choice(KINDS)) for _ in range(prompts)])
    return {"joint": joint, "age": age, "n": rng.integers(n_range[0], n_range[1] + 1, prompts)}


def _marginals(joint: np.ndarray) -> dict[str, np.ndarray]:
    view = joint.reshape(joint.shape[:-1] + (2, 4))
    return {"gender": view.sum(-1), "race": view.sum(-2), JOINT: joint}


def _reader(rng: np.random.Generator, k: int, per_class: int) -> tuple[np.ndarray, np.ndarray, CalibrationBlock]:
    """A random confusion (K, K) and detection rates (K,), and a calibration block measured from them."""
    acc = rng.uniform(0.8, 0.97, k)
    m = rng.dirichlet(np.ones(k), size=k) * (1 - acc)[:, None]
    m[np.arange(k), np.arange(k)] = 0
    m = m / m.sum(1, keepdims=True) * (1 - acc)[:, None]
    m[np.arange(k), np.arange(k)] = acc
    det = rng.uniform(0.8, 1.0, k)
    n_lab = np.full(k, per_class)
    found = rng.binomial(n_lab, det)
    conf = np.stack([rng.multinomial(f, row) for f, row in zip(found, m)])
    return m, det, CalibrationBlock(JOINT if k == 8 else "age", n_lab, conf)


def one_repeat(seed: int, prompts: int, replicates: int, n_range: tuple[int, int], calibrated: bool) -> dict:
    """Hits (interval holds the truth) per attribute: {attr: {"population": (P+1,) bool, "percentile": ...,
    "est_error": (P+1,), "plain_error": (P+1,)}}, the last entry being the suite mean."""
    rng = np.random.default_rng(seed)
    world = draw_world(rng, prompts, n_range)
    truth = {**_marginals(world["joint"]), "age": world["age"]}
    counts, blocks = {}, {}
    for name, true in (("joint", world["joint"]), ("age", world["age"])):
        k = true.shape[1]
        if calibrated:
            m, det, block = _reader(rng, k, 250)
            seen = true * det
            seen = (seen / seen.sum(1, keepdims=True)) @ m
            blocks[JOINT if k == 8 else "age"] = block
        else:
            seen = true
        counts[JOINT if k == 8 else "age"] = np.stack([rng.multinomial(n, p) for n, p in zip(world["n"], seen)])
    view = counts[JOINT].reshape(prompts, 2, 4)
    counts["gender"], counts["race"] = view.sum(-1), view.sum(-2)
    if calibrated:
        est = corrected_estimates(counts, blocks, replicates, seed)
        shares = {a: (est[a]["shares"], est[a]["shares_boot"]) for a in ATTRS}
    else:
        boot = share_replicates(counts[JOINT], replicates, seed)
        shares = {a: (_marginals(counts[JOINT] / counts[JOINT].sum(1, keepdims=True))[a], _marginals(boot)[a])
                  for a in (JOINT, "gender", "race")}
        shares["age"] = (counts["age"] / counts["age"].sum(1, keepdims=True),
                         share_replicates(counts["age"], replicates, seed + 1))
    out = {}
    for a in ATTRS:
        point, boot = shares[a]
        true_rd = np.asarray(rd(truth[a]))
        true_all = np.append(true_rd, true_rd.mean())
        pop = population_rd(point, boot)
        lo = np.append(pop["ci95"][:, 0], pop["suite_ci95"][0])
        hi = np.append(pop["ci95"][:, 1], pop["suite_ci95"][1])
        t_boot = np.asarray(rd(boot))
        pct = np.vstack([percentile_interval(t_boot), percentile_interval(nanmean_rows(t_boot))[None]])
        plain = np.append(pop["plain"], pop["plain"].mean())
        est = np.append(pop["estimate"], pop["suite_estimate"])
        out[a] = {"population": (lo <= true_all + 1e-12) & (true_all <= hi + 1e-12),
                  "percentile": (pct[:, 0] <= true_all) & (true_all <= pct[:, 1]),
                  "contains": (lo <= est) & (est <= hi) & (lo <= plain) & (plain <= hi),
                  "est_error": est - true_all, "plain_error": plain - true_all, "width": hi - lo}
    return out


def run(repeats: int, prompts: int, replicates: int, n_range: tuple[int, int], calibrated: bool,
        seed: int = 0) -> dict[str, dict[str, float]]:
    """Coverage and bias summaries per attribute: {attr: {"prompt_population", "suite_population",
    "prompt_percentile", "suite_percentile", "plain_bias_suite", "estimate_bias_suite", "width_suite",
    "always_contains"}}."""
    reps = [one_repeat(seed * 100_003 + r, prompts, replicates, n_range, calibrated) for r in range(repeats)]
    table = {}
    for a in ATTRS:
        stack = {key: np.stack([r[a][key] for r in reps]) for key in reps[0][a]}
        table[a] = {
            "prompt_population": float(stack["population"][:, :-1].mean()),
            "suite_population": float(stack["population"][:, -1].mean()),
            "prompt_percentile": float(stack["percentile"][:, :-1].mean()),
            "suite_percentile": float(stack["percentile"][:, -1].mean()),
            "plain_bias_suite": float(stack["plain_error"][:, -1].mean()),
            "estimate_bias_suite": float(stack["est_error"][:, -1].mean()),
            "width_suite": float(stack["width"][:, -1].mean()),
            "always_contains": bool(stack["contains"].all()),
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=400)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--replicates", type=int, default=500)
    ap.add_argument("--min-faces", type=int, default=40)
    ap.add_argument("--max-faces", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--z-suite", type=float, default=None, help="override metrics.population.Z_SUITE")
    ap.add_argument("--raw-only", action="store_true")
    args = ap.parse_args()
    if args.z_suite is not None:
        from fairgen.metrics import population

        population.Z_SUITE = args.z_suite
    for calibrated in (False,) if args.raw_only else (False, True):
        t0 = time.time()
        table = run(args.repeats, args.prompts, args.replicates, (args.min_faces, args.max_faces), calibrated,
                    args.seed)
        print(f"\n{'calibrated' if calibrated else 'raw'}: {args.repeats} random worlds x {args.prompts} prompts, "
              f"{args.min_faces}-{args.max_faces} faces/prompt, {args.replicates} replicates "
              f"({time.time() - t0:.0f} s)")
        print("| attribute | per prompt: population | suite: population | per prompt: percentile | "
              "suite: percentile | suite bias plain / estimate | suite width |")
        print("|---|---|---|---|---|---|---|")
        for a, r in table.items():
            print(f"| {a} | {r['prompt_population']:.3f} | {r['suite_population']:.3f} | "
                  f"{r['prompt_percentile']:.3f} | {r['suite_percentile']:.3f} | "
                  f"{r['plain_bias_suite']:+.4f} / {r['estimate_bias_suite']:+.4f} | {r['width_suite']:.3f} |"
                  + ("" if r["always_contains"] else "  (an interval missed its estimate!)"))


if __name__ == "__main__":
    main()
