"""Partial alignment: does the model draw a skew it does not state when asked in words?

Per prompt and attribute:
  generation rd (net)  rd of the audit's labels minus its noise floor (the rd a perfectly balanced prompt
                       reads at the same number of faces), so chance skew is not counted as bias
  understanding rd     rd of the renormalised group probabilities of the blank-image probe (exact)
  gap                  generation rd (net) - understanding rd

The gap's 95% interval is a bootstrap that resamples the audit's images within each prompt (the prompt
set is fixed, as everywhere in fairgen); the understanding side is exact, so it adds no uncertainty.
The suite value is the mean over prompts with faces, its interval from the same replicates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..metrics import bootstrap_metrics, noise_floor, percentile_interval, rd
from ..metrics.intervals import nanmean_rows
from ..types import ATTRIBUTES
from .understanding import PROBED

REPLICATES = 1000


def _num(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def audit_counts(audit: Mapping[str, Any], prompt_ids: list[str], attribute: str) -> np.ndarray | None:
    """(P, K) label counts of `attribute` for the given prompts from results.json, or None when the audit's
    perception did not measure it."""
    by_id = {str(p["id"]): p for p in audit["prompts"]}
    if (audit.get("summary") or {}).get(attribute) is None:
        return None
    classes = ATTRIBUTES[attribute]
    return np.array([[by_id[i]["counts"].get(attribute, {}).get(c, 0) for c in classes] for i in prompt_ids],
                    dtype=np.int64)


def partial_alignment(audit: Mapping[str, Any], understanding: Mapping[str, Any], replicates: int = REPLICATES,
                      seed: int = 0) -> dict[str, Any]:
    """Generation rd (net of noise floor) beside understanding rd, with the gap's bootstrap interval.

    audit: results.json of an audit over (at least) the understanding's prompts. Returns {attr: None (not
    measured) | {"prompts": [{"id", "n_faces", "generation_rd", "noise_floor", "generation_rd_net",
    "understanding_rd", "gap", "gap_ci95"}], "summary": {same, means over prompts with faces,
    "gap_ci95"}}}."""
    rows = understanding["prompts"]
    ids = [r["id"] for r in rows]
    out: dict[str, Any] = {}
    for j, attr in enumerate(PROBED):
        counts = audit_counts(audit, ids, attr)
        if counts is None:
            out[attr] = None
            continue
        n = counts.sum(axis=1)
        k = counts.shape[1]
        floor = np.array([noise_floor(int(m), k) if m > 0 else np.nan for m in n])
        gen = np.where(n > 0, np.asarray(rd(counts), dtype=float), np.nan)
        und = np.array([r[attr]["rd"] for r in rows], dtype=float)
        gap = gen - floor - und
        boot, _ = bootstrap_metrics(counts, {"rd": rd}, replicates, seed=seed * 1000 + j)["rd"]
        gap_boot = boot - floor - und  # (B, P)
        per_ci = percentile_interval(gap_boot)
        suite_ci = percentile_interval(nanmean_rows(gap_boot))
        prompts = [{"id": i, "n_faces": int(m), "generation_rd": _num(g), "noise_floor": _num(f),
                    "generation_rd_net": _num(g - f), "understanding_rd": _num(u), "gap": _num(d),
                    "gap_ci95": [_num(ci[0]), _num(ci[1])]}
                   for i, m, g, f, u, d, ci in zip(ids, n, gen, floor, und, gap, per_ci)]
        faces = n > 0
        summary = {"n_prompts": int(faces.sum()),
                   "generation_rd": _num(np.nanmean(gen)) if faces.any() else None,
                   "noise_floor": _num(np.nanmean(floor)) if faces.any() else None,
                   "generation_rd_net": _num(np.nanmean(gen - floor)) if faces.any() else None,
                   "understanding_rd": _num(np.mean(und[faces])) if faces.any() else None,
                   "gap": _num(np.nanmean(gap)) if faces.any() else None,
                   "gap_ci95": [_num(suite_ci[0]), _num(suite_ci[1])]}
        out[attr] = {"prompts": prompts, "summary": summary}
    return out
