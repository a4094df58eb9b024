"""locate: which component of a unified model carries its bias (docs/locate.md).

    locate(model, suite, out, audit=None, ...) -> findings      every stage, resumable (pipeline.py)
    probe_understanding(model, prompts)                         the blank-image questions (understanding.py)
    partial_alignment(audit_results, understanding)             drawn vs stated skew (alignment.py)
    round_trip(model, labelled, backend) / vision_probes(...)   the vision tokenizer (tokenizer_audit.py)
    measure_prompt / summarise / hidden_probe                   the language model (lm_audit.py)
    verdicts(findings)                                          biased / not biased / inconclusive (verdict.py)
"""

from .alignment import partial_alignment
from .lm_audit import hidden_probe, measure_prompt, summarise
from .pipeline import locate
from .tokenizer_audit import round_trip, vision_probes
from .understanding import probe_understanding
from .verdict import verdicts

__all__ = ["hidden_probe", "locate", "measure_prompt", "partial_alignment",
           "probe_understanding", "round_trip", "summarise", "verdicts", "vision_probes"]
