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
    config.FixConfig                                   the settings and their defaults
    table                                              --method all: fix_table.json / .md (the paper's Table 1)
    cli.fix_command                                    `fairgen fix`
docs/fix.md describes the method and its configuration.
"""

from typing import Any

from .config import FixConfig, parse_attributes

__all__ = ["FixConfig", "fix", "parse_attributes"]


def __getattr__(name: str) -> Any:
    """`fix` on first use: the pipeline imports torch, which `fairgen --help` should not wait for."""
    if name == "fix":
        from .pipeline import fix

        return fix
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
