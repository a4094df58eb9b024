"""Checks of a run's inputs, made before anything is written (README "Resuming a run").

One place for the rules every entry point (the CLI, `fairgen.audit(...)`) shares: an invalid value raises a
FairgenError naming it, so a run directory is never created or changed for a command that cannot run.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .types import FairgenError

# The default model of `fairgen audit` and of the README's demo: the shipped fairgen-tiny checkpoint, a real
# (small) unified model trained on the planted-bias world, so no download is needed (docs/tiny.md).
DEFAULT_MODEL = "tiny"
# The paper's sampling (Liu et al.): cfg 3.0, temperature 0.9, top-p 0.6.
PAPER_PRESET = {"cfg": 3.0, "temperature": 0.9, "top_p": 0.6}
# A plan larger than this is refused rather than allocated (each planned image costs ~200 bytes of plan
# before any work). 1,000,000 images is ~100 days of a 7B model on one H100; split larger audits.
MAX_PLANNED_IMAGES = 1_000_000
MAX_SEED = 2**63 - 1
# Sampling settings every family reads the same way: (lowest, highest, lowest allowed itself).
SAMPLING_RANGES: dict[str, tuple[float, float, bool]] = {
    "cfg": (0.0, 1000.0, True),
    "temperature": (0.0, 100.0, True),
    "top_p": (0.0, 1.0, False),
}


def check_seed(seed: Any, what: str = "seed") -> int:
    """A run seed: an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FairgenError(f"{what} must be an integer (got {seed!r})")
    if not 0 <= seed <= MAX_SEED:
        raise FairgenError(f"{what} must be between 0 and 2**63-1 (got {seed})")
    return seed


def check_sampling(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling settings: finite numbers in range (cfg >= 0, temperature >= 0, 0 < top_p <= 1, top_k >= 1
    an integer); other keys (a plugin's) must at least not be NaN or infinite."""
    out = dict(sampling)
    for key, value in out.items():
        if value is None or isinstance(value, bool):  # None: the model's default
            continue
        if isinstance(value, (int, float)) and not math.isfinite(value):
            raise FairgenError(f"sampling {key} must be a finite number (got {value})")
        if key in SAMPLING_RANGES:
            lo, hi, lo_ok = SAMPLING_RANGES[key]
            if not isinstance(value, (int, float)) or not (lo <= value <= hi) or (value == lo and not lo_ok):
                bound = f"{'[' if lo_ok else '('}{lo:g}, {hi:g}]"
                raise FairgenError(f"sampling {key} must be in {bound} (got {value!r})")
        if key == "top_k" and (not isinstance(value, int) or value < 1):
            raise FairgenError(f"sampling top_k must be an integer >= 1 (got {value!r})")
    return out


def check_run(images_per_prompt: Any, n_prompts: int | None, seed: Any, batch_size: Any,
              sampling: Mapping[str, Any]) -> dict[str, Any]:
    """An audit's numbers: positive images per prompt and batch size, a plan within MAX_PLANNED_IMAGES
    (when the suite's size is known), a valid seed and sampling. Returns the checked sampling."""
    for name, value in (("images per prompt", images_per_prompt), ("batch size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FairgenError(f"{name} must be a positive integer (got {value!r})")
    if images_per_prompt > MAX_PLANNED_IMAGES or (n_prompts and images_per_prompt * n_prompts > MAX_PLANNED_IMAGES):
        total = images_per_prompt * (n_prompts or 1)
        raise FairgenError(f"the audit would plan {total:,} images, more than the limit of "
                           f"{MAX_PLANNED_IMAGES:,}; lower --images-per-prompt or split the suite")
    check_seed(seed)
    return check_sampling(sampling)
