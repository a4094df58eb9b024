"""The unified model protocol (DESIGN.md): what every model family implements, as far as it can.

`capabilities` names what a model supports, so callers can ask before they call:
  "generate"      generate(prompts, seeds, **sampling) -> list[PIL.Image]
  "understand"    answer_distribution(image | None, question, options) -> dict[str, float]
  "image_logprob" image_token_logprob(prompts, images) -> Tensor[B]
  "tokenize"      encode_image(images) / decode_tokens(tokens)
  "lora"          lora_targets: list of module names (language model only)
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from PIL import Image

from ..types import Prompt

# Key of the probability mass that fell outside the offered options in answer_distribution's result.
OTHER = "<other>"


@runtime_checkable
class UnifiedModel(Protocol):
    """A generator / unified model. Only `spec`, `capabilities`, `provenance` and `generate` are required."""

    spec: str
    capabilities: frozenset[str]

    def provenance(self) -> dict[str, Any]:
        """What identifies these weights for the run manifest: e.g. {"sha256": {...file: hash}}."""
        ...

    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One image per (prompt, seed). The same prompt, seed and sampling settings give the same image,
        whatever else is in the batch. Prompts may be Prompt objects (their .text is drawn) or strings."""
        ...
