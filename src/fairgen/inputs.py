"""Checks of a run's inputs, made before anything is written (README "Resuming a run").

One place for the rules every entry point shares (config.AuditConfig.check calls check_run, so
`fairgen audit`, `fairgen.audit(...)`, locate's and fix's audits all pass here): an invalid value raises a
FairgenError naming it, so a run directory is never created or changed for a command that cannot run.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .types import FairgenError

# A plan larger than this is refused rather than allocated (the plan is built in memory before any work,
# a few hundred bytes an image); split larger audits.
MAX_PLANNED_IMAGES = 1_000_000
MAX_SEED = 2**63 - 1


def check_seed(seed: Any, what: str = "seed") -> int:
    """A run seed: an integer in [0, 2**63)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise FairgenError(f"{what} must be an integer (got {seed!r})")
    if not 0 <= seed <= MAX_SEED:
        raise FairgenError(f"{what} must be between 0 and 2**63-1 (got {seed})")
    return seed


def check_sampling(sampling: Mapping[str, Any]) -> dict[str, Any]:
    """Sampling settings: every number finite (NaN or infinity would reach the sampler and the JSON files);
    the common keys' ranges are models.sampling.check_values's, the rest the family's."""
    from .models.sampling import check_values

    out = dict(sampling)
    for key, value in out.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise FairgenError(f"sampling {key} must be a finite number (got {value})")
    check_values(out)
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
