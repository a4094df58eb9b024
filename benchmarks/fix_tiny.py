"""Benchmark of `fairgen fix` on fairgen-tiny: the paper's three settings, each with the command's defaults
and with `--preset paper`, over several seeds, every run the plain CLI command as a user types it.

    python benchmarks/fix_tiny.py --out runs/fix_tiny                                # 3 settings x 3 seeds
    python benchmarks/fix_tiny.py --out runs/fix_tiny --presets default,paper --jobs 12 \
        --extra "--device cuda"                                                      # on a GPU, in parallel

Each run is `python -m fairgen fix --model tiny --attributes A --seed S --out OUT/<preset>/<setting>/seed-S`
plus `--preset paper` for the paper preset and `--extra`'s options (nothing else: the defaults are what
is measured). Runs go `--jobs` at a time, one CPU thread each (OMP_NUM_THREADS=1; `--threads` to change)
and the cores shared for their host workers (FAIRGEN_HOST_WORKERS; `--host-workers` to change).
Targets (issue 26, test suite at 160 images per prompt): the gender setting cuts gender rd by >= 70 %,
race race rd by >= 45 %, mix each by >= 30 %, and every guardrail of the verdict passes. Writes
OUT/fix_tiny.md and OUT/fix_tiny.json: one row per run (rd cut per fixed attribute, each guardrail,
the step kept, wall time, audit speed before and after), then the mean over seeds. A run cut off by
`--timeout` is listed with how far it got.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SETTINGS = {"gender": "gender", "race": "race", "mix": "gender,race"}
# Minimum relative rd cut per (setting, attribute), from issue 26.
TARGETS = {("gender", "gender"): 0.70, ("race", "race"): 0.45, ("mix", "gender"): 0.30, ("mix", "race"): 0.30}


def run_one(out: Path, preset: str, setting: str, seed: int, extra: list[str], threads: int,
            timeout: float | None, host_workers: int) -> dict:
    """One `fairgen fix` command; returns {"preset", "setting", "seed", "out", "seconds", "rc", "report"}."""
    where = out / preset / setting / f"seed-{seed}"
    where.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fairgen", "fix", "--model", "tiny", "--attributes", SETTINGS[setting],
           "--seed", str(seed), "--out", str(where), *(["--preset", preset] if preset != "default" else []), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "FAIRGEN_HOST_WORKERS": str(host_workers)}
    began = time.time()
    with open(str(where) + ".log", "w") as log:
        log.write(" ".join(shlex.quote(c) for c in cmd) + "\n")
        log.flush()
        try:
            rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    report = where / "fix_report.json"
    return {"preset": preset, "setting": setting, "seed": seed, "out": str(where), "rc": rc,
            "seconds": round(time.time() - began, 1),
            "report": json.loads(report.read_text()) if report.is_file() else None, "progress": _progress(where)}


def _progress(where: Path) -> str:
    """How far an unfinished run got (its last training log line and validation step)."""
    parts = []
    log, val = where / "train_log.jsonl", where / "validation.jsonl"
    if log.is_file() and log.read_text().strip():
        last = json.loads(log.read_text().splitlines()[-1])
        parts.append(f"{last['stage']} step {last['step']} at {last['elapsed_s']} s")
    if val.is_file() and val.read_text().strip():
        parts.append(f"validated to step {json.loads(val.read_text().splitlines()[-1])['step']}")
    return "; ".join(parts) or "before training"


def _f(x: float | None, spec: str = ".3f") -> str:
    return "–" if x is None else format(x, spec)


def row(r: dict) -> tuple[str, dict]:
    """A run's markdown row and its verdicts ({attribute: target met}, guardrails passed)."""
    rep = r["report"]
    head = f"| {r['preset']} | {r['setting']} | {r['seed']} |"
    if rep is None:
        return head + f" not finished ({r['rc']}, {r['seconds']:.0f} s; {r['progress']}) |" + " |" * 7, {}
    cuts, met = [], {}
    for attr in SETTINGS[r["setting"]].split(","):
        ch = rep["rd_change"].get(attr)
        rel = ch["relative"] if ch else None
        met[attr] = rel is not None and -rel >= TARGETS[(r["setting"], attr)]
        cuts.append(f"{attr} {_f(ch and ch['before'])} → {_f(ch and ch['after'])} "
                    f"({'–' if rel is None else f'{100 * rel:+.1f} %'}{'' if met[attr] else ' ✗'})")
    guards = {g["name"]: g["passed"] for g in rep["verdict"]["guardrails"]}
    word = {True: "pass", False: "**FAIL**", None: "n/m"}
    by_group = rep["explicit_adherence_by_group"]["after"]
    low = min(((g, v) for gs in by_group.values() for g, v in gs.items()), key=lambda gv: gv[1] or 0, default=None)
    val = rep.get("validation") or {}
    rate = rep.get("audit_rate") or {}
    cells = ["; ".join(cuts), f"{_f(rep['fidelity_change_points'], '+.1f')}",
             f"{low[0]} {_f(low[1])}" if low else "–",
             " / ".join(word[guards.get(k)] for k in ("fidelity", "explicit adherence", "generalisation", "face rate")),
             str(val.get("kept_step", "last")), f"{r['seconds']:.0f}",
             f"{_f(rate.get('before'), '.0f')} → {_f(rate.get('after'), '.0f')}"]
    return head + " " + " | ".join(cells) + " |", {"targets": met, "guardrails": rep["verdict"]["passed"]}


def table(results: list[dict]) -> tuple[str, dict]:
    lines = ["| preset | setting | seed | rd before → after (change; ✗ = target missed) | fidelity Δ (pts) | "
             "explicit, lowest group after | guardrails: fidelity / explicit / generalisation / face rate | "
             "step kept | wall (s) | audit images/s before → after |", "| --- " * 10 + "|"]
    verdicts = {}
    for r in sorted(results, key=lambda r: (r["preset"], list(SETTINGS).index(r["setting"]), r["seed"])):
        line, v = row(r)
        lines.append(line)
        verdicts[f"{r['preset']}/{r['setting']}/seed-{r['seed']}"] = v
    return "\n".join(lines) + "\n", verdicts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--settings", default="gender,race,mix")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--presets", default="default", help="default, paper, or both: default,paper")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--extra", default="", help="more `fairgen fix` options for every run, e.g. '--device cuda'")
    parser.add_argument("--timeout", type=float, default=None, help="seconds a run may take")
    parser.add_argument("--host-workers", type=int, default=None,
                        help="FAIRGEN_HOST_WORKERS of each run (default: the cores shared among the jobs, less one each)")
    args = parser.parse_args()
    if args.host_workers is None:  # the default of one run among `jobs` sharing the cores
        from fairgen.hostwork import shared_workers

        args.host_workers = shared_workers(args.jobs)
    runs = [(p, s, int(seed)) for p in args.presets.split(",") for s in args.settings.split(",")
            for seed in args.seeds.split(",")]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(args.out, *job, shlex.split(args.extra), args.threads,
                                                    args.timeout, args.host_workers), runs))
    text, verdicts = table(results)
    header = (f"fairgen fix on tiny, occupations:test at 160 images per prompt; options beyond the defaults: "
              f"{args.extra or 'none'}; {args.jobs} runs at a time, {args.threads} thread(s) and "
              f"{args.host_workers} host worker(s) each\n\n")
    print(header + text)
    (args.out / "fix_tiny.md").write_text(header + text)
    (args.out / "fix_tiny.json").write_text(json.dumps({"extra": args.extra, "jobs": args.jobs, "verdicts": verdicts,
                                                        "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
