"""fix: debias a unified model's image generation (Liu et al. 2025, "balanced preference optimisation").

    fix(FixConfig(model=..., attributes=("gender",), ...), out) -> report dict    the whole pipeline
    data.build(...) / data.BalancedSet                 the balanced set (parquet + images, resumable)
    loss.bpo_loss / loss.pair_loss / loss.sft_loss     the losses
    batches.BatchPlan                                  prompt-major batches (pairs never cross prompts)
    train.train_adapter                                LoRA SFT then BPO (or one stage), checkpoints, resumable,
                                                       data parallel across processes
    caption.caption_logprob                            image -> text log-probabilities (understanding-sft)
    checks                                             prompt suffix, understanding accuracy, check suites
    report                                             fix_report.json / .md, training curves
    table                                              --method all: fix_table.json / .md (the paper's Table 1)
    cli.fix_command                                    `fairgen fix`
docs/fix.md describes the method and its configuration.
"""

from __future__ import annotations

import importlib
from typing import Any

# The check suites measured before and after a fix, by default (checks.py).
DEFAULT_CHECK_SUITES = ("occupations_style_context", "personal_descriptors", "sports")
# Imported on first use (PEP 562), so that the CLI's help does not load torch.
_LAZY = {"FixConfig": ".pipeline", "fix": ".pipeline", "parse_attributes": ".pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_CHECK_SUITES", "FixConfig", "fix", "parse_attributes"]
