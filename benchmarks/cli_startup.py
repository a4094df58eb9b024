"""Start-up time of `fairgen --help` and `fairgen --version` against a bare `python -c pass` (issue 24:
under 1 s on a quiet machine). Median of --repeats runs each; the ratio to the bare interpreter is what
travels between machines.

    python benchmarks/cli_startup.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def median_seconds(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    bare = median_seconds(["-c", "pass"], args.repeats)
    print(f"python -c pass     {bare:.3f} s")
    for cmd in (["--help"], ["--version"]):
        t = median_seconds(["-m", "fairgen", *cmd], args.repeats)
        print(f"fairgen {cmd[0]:<10} {t:.3f} s  ({t / bare:.1f}x the bare interpreter)")


if __name__ == "__main__":
    main()
