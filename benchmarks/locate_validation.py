"""The locate validation set: planted fairgen-tiny checkpoints of known truth, built by one script, and
locate's verdicts on each against that truth (the table of docs/locate.md "Validation on known truth").

    python benchmarks/locate_validation.py [--root runs/locate-validation] [--device cuda] [--workers 16]
                                           [--budget 5] [--build-only] [--parallel 6] [--threads 2]

Builds (or reuses) plant.validation_set under ROOT/checkpoints, then runs `locate` on each variant over
the six occupations its language model was trained on (64 images per prompt, world:800 labelled renders
as the tokenizer's first look, 16 sequences as the LM's first look, the default budget of looks). Prints
a markdown table (variant, truth, verdicts, effort, wall time) and writes ROOT/validation-<variants>.json with every
verdict, the share of component verdicts that are decisive and the number that are wrong.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fairgen import models, suites
from fairgen.locate import locate
from fairgen.models.tiny.plant import VALIDATION_PLANTS, VALIDATION_TRUTH, validation_set
from fairgen.locate.sequential import DEFAULT_LOOKS
from fairgen.locate.verdict import COMPONENTS, NOT_BIASED

PLANTED = {"lm-biased": "LM trained on the packaged skewed spec",
           "no-bias": "LM trained on a balanced spec; packaged tokenizer",
           "understanding-biased": "no-bias, its blank-image answers taught the skewed spec's stereotypes"}
PLANTED.update({k: f"no-bias, decoder turns {a} {s} into {t} where {o}" for k, (a, s, t, o) in VALIDATION_PLANTS.items()})


def effort(v: dict) -> str:
    parts = []
    for key, unit in (("understanding", "concepts"), ("tokenizer", "images"), ("language_model", "sequences")):
        e = v[key].get("effort") or {}
        if e.get(unit) is not None:
            looks = f", {e['looks']}/{e['of_looks']} looks" if e.get("looks") else ""
            parts.append(f"{e[unit]} {unit}{looks}")
    return "; ".join(parts)


def run_variant(name: str, directory: str, device: str, budget: int, root: str, threads: int | None,
                images: int = 64) -> dict:
    """locate on one variant (a process of its own with --parallel); returns its findings and wall time."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    model = models.load(f"tiny:{directory}", device=device)
    prompts = suites.load("occupations:test")[:6]  # the six concepts the validation LMs are trained on
    findings = locate(model, prompts, Path(root) / "locate" / name, images_per_prompt=images, labelled="world:800",
                      sequences=16, budget=budget)
    return {"findings": findings, "seconds": round(time.time() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("runs/locate-validation"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=1, help="render processes for the decoder plants")
    ap.add_argument("--budget", type=int, default=DEFAULT_LOOKS)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--images", type=int, default=64, help="audit images per prompt (partial alignment only)")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--no-build", action="store_true", help="locate the variants already under ROOT/checkpoints")
    ap.add_argument("--parallel", type=int, default=1, help="variants located at once (processes)")
    ap.add_argument("--variants", default=",".join(VALIDATION_TRUTH), help="comma-separated variants to locate")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    dirs = ({n: args.root / "checkpoints" / n for n in VALIDATION_TRUTH} if args.no_build
            else validation_set(args.root / "checkpoints", device=args.device, workers=args.workers))
    built = time.time() - start
    print(f"validation set ready in {built:.0f} s ({args.device})", flush=True)
    if args.build_only:
        return
    jobs = [(name, str(dirs[name]), args.device, args.budget, str(args.root), args.threads, args.images)
            for name in args.variants.split(",")]
    if args.parallel > 1:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(run_variant, *zip(*jobs)))
    else:
        results = [run_variant(*job) for job in jobs]
    rows, wrong, decisive, total = [], 0, 0, 0
    for (name, *_), result in zip(jobs, results):
        truth, findings = VALIDATION_TRUTH[name], result["findings"]
        v = findings["verdicts"]
        got = {c: v[c]["verdict"] for c in COMPONENTS}
        bad = [c for c in COMPONENTS if got[c] in ("biased", NOT_BIASED) and got[c] != truth[c]]
        wrong += len(bad)
        decisive += sum(got[c] in ("biased", NOT_BIASED) for c in COMPONENTS)
        total += len(COMPONENTS)
        row = {"variant": name, "planted": PLANTED[name], "truth": truth, "verdicts": got, "wrong": bad,
               "effort": {c: v[c].get("effort") for c in COMPONENTS}, "headline": v["headline"],
               "prior": v["understanding"].get("prior"), "seconds": result["seconds"],
               "texts": {c: v[c]["text"] for c in COMPONENTS}}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("variant", "verdicts", "wrong", "seconds")}), flush=True)
        print(f"  {effort(v)}\n  " + "\n  ".join(f"{c}: {v[c]['text']}" for c in COMPONENTS), flush=True)
    report = {"device": args.device, "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
              "build_seconds": round(built, 1), "budget": args.budget, "rows": rows, "wrong": wrong,
              "decisive_share": decisive / total, "date": time.strftime("%Y-%m-%d")}
    (args.root / f"validation-{'-'.join(r['variant'] for r in rows)}.json").write_text(json.dumps(report, indent=1) + "\n")
    print("\n| variant | truth (U / T / LM) | understanding | tokenizer | language model | effort | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        t = " / ".join(r["truth"][c] for c in COMPONENTS)
        got = [f"**{r['verdicts'][c]}**" if c in r["wrong"] else r["verdicts"][c] for c in COMPONENTS]
        e = {c: r["effort"][c] or {} for c in COMPONENTS}
        spent = (f"{e['understanding'].get('concepts')} concepts; {e['tokenizer'].get('images')} images; "
                 f"{e['language_model'].get('sequences')} seq/prompt")
        print(f"| {r['variant']} | {t} | {' | '.join(got)} | {spent} | {r['seconds']:.0f} s |")
    print(f"\nwrong verdicts: {wrong}; decisive: {decisive}/{total} ({100 * decisive / total:.0f}%)")


if __name__ == "__main__":
    main()
