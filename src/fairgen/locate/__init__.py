"""locate: which component of a unified model carries its bias (docs/locate.md).

    locate(model, suite, out, audit=None, ...) -> findings      every stage, resumable (pipeline.py)
    probe_understanding(model, prompts)                         the blank-image questions (understanding.py)
    partial_alignment(audit_results, understanding)             drawn vs stated skew (alignment.py)
    round_trip(model, labelled, backend) / vision_probes(...)   the vision tokenizer (tokenizer_audit.py)
    measure_prompt / summarise / hidden_probe                   the language model (lm_audit.py)
    verdicts(findings)                                          biased / not biased / inconclusive (verdict.py)
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (PEP 562), so that the CLI's help does not load torch.
_LAZY = {"partial_alignment": ".alignment", "hidden_probe": ".lm_audit", "measure_prompt": ".lm_audit",
         "summarise": ".lm_audit", "locate": ".pipeline", "round_trip": ".tokenizer_audit",
         "vision_probes": ".tokenizer_audit", "probe_understanding": ".understanding", "verdicts": ".verdict"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["hidden_probe", "locate", "measure_prompt", "partial_alignment",
           "probe_understanding", "round_trip", "summarise", "verdicts", "vision_probes"]
