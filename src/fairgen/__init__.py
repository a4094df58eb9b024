"""fairgen: audit and debias image generation in unified multimodal LLMs."""

from .audit import AuditResult, audit
from .types import ATTRIBUTES, FairgenError, Perception, Prompt

__version__ = "0.1.0"
__all__ = ["ATTRIBUTES", "AuditResult", "FairgenError", "Perception", "Prompt", "audit", "__version__"]
