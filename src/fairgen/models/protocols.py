"""What a model can do, one runtime-checkable protocol per capability (docs/architecture.md, "Protocols").

Every model is a `Model` (spec, provenance). Each capability is a protocol of its own, and a caller asks
with `isinstance(model, ImageGenerator)` and nothing else: no stage names a family, tests `hasattr` or
reaches into a family's internals. A family implements the methods of the capabilities it has; the
registry entry (registry.py) lists the same capabilities by name (CAPABILITIES), so `fairgen models` can
print them without importing the family, and the conformance suite (tests/models/) checks that the two
agree.

Shapes: B = batch, T = image tokens per image, K = codebook size, D = hidden size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from PIL import Image

from ..types import Prompt

if TYPE_CHECKING:  # annotations only: `fairgen --help` need not load torch
    import torch

# Key of the probability mass that fell outside the offered options in answer_distribution's result.
OTHER = "<other>"


@runtime_checkable
class Model(Protocol):
    """Every model: the spec it was built from and what identifies its weights."""

    spec: str

    def provenance(self) -> dict[str, Any]:
        """What identifies these weights for the run manifest (JSON-serialisable), e.g. {"sha256": {...}}."""
        ...


@runtime_checkable
class ImageGenerator(Protocol):
    """Capability "generate": text -> images."""

    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One image per (prompt, seed). The same prompt, seed and settings give the same image whatever
        else is in the batch (sampling.py's per-image stream). sampling: cfg, temperature, top_p, top_k
        and the family's extra keys; an unknown key is a FairgenError (Sampling.resolve)."""
        ...


@runtime_checkable
class ImageSource(Protocol):
    """Capability "source": images that already exist (on disk), read instead of generated."""

    def bind(self, prompts: Sequence[Prompt]) -> None:
        """Match the source's images to a suite's prompts (once, before reading)."""
        ...

    def available(self, prompt: Prompt) -> int:
        """How many images the source holds for this prompt."""
        ...

    def read(self, prompt: Prompt, sample: int) -> tuple[Image.Image | None, str | None]:
        """(image, None), or (None, why) when the image cannot be decoded."""
        ...

    def source(self, prompt: Prompt, sample: int) -> Any:
        """Where sample `sample` of `prompt` comes from (a path), for the perception records."""
        ...

    def coverage(self, prompts: Sequence[Prompt], asked: int) -> dict[str, Any]:
        """How the source met a plan of `asked` images per prompt (JSON, for the run's records), e.g.
        {"prompts_without_images": [ids], "prompts_short": {id: images found}}."""
        ...


@runtime_checkable
class Understander(Protocol):
    """Capability "understand": answer a multiple-choice question about an image (or none)."""

    def answer_distribution(self, image: Image.Image | None, question: str,
                            options: Sequence[str]) -> dict[str, float]:
        """Exact probability of each option as the whole answer, renormalised over the options, plus the
        mass outside them under OTHER; the values sum to 1."""
        ...


@runtime_checkable
class ImageScorer(Protocol):
    """Capability "image_logprob": how likely the model finds an image's tokens given a prompt."""

    def image_token_logprob(self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image]) -> torch.Tensor:
        """Mean per-token log-probability of each image's tokens given its prompt: float32 [B],
        differentiable with respect to the language model (and LoRA weights on it)."""
        ...


@runtime_checkable
class VisionTokenizer(Protocol):
    """Capability "tokenize": the generation path's image tokenizer, both ways."""

    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Images -> codes LongTensor [B, T]."""
        ...

    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Codes [B, T] -> B images."""
        ...


@runtime_checkable
class LoRATrainable(Protocol):
    """Capability "lora": where a peft LoRA adapter goes (language model only)."""

    lora_root: torch.nn.Module  # the module peft wraps; lora_targets are names inside it
    lora_targets: list[str]  # full names of the linear layers LoRA may adapt, taken before any injection


@runtime_checkable
class LMHooks(Protocol):
    """Capability "lm_hooks": the language model's internals that locate's LM audit reads."""

    def generate_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> torch.Tensor:
        """The codes generate() would decode: LongTensor [B, T]."""
        ...

    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every image position: float32 [B, T, K]; row t is the distribution code
        t is sampled from (no guidance, temperature 1). Differentiable w.r.t. the language model."""
        ...

    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """The LM's last hidden state at the position that predicts the first code: float32 [B, D]."""
        ...


@runtime_checkable
class TokenizerFeatures(Protocol):
    """Capability "tokenizer_features": what the vision decoder reads, for locate's probes."""

    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The quantised code vectors of each image on its code grid: float32 [B, C, h, w]."""
        ...


@runtime_checkable
class UnderstandingFeatures(Protocol):
    """Capability "understanding_features": what the LM reads of an image it is asked about."""

    def understanding_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Float32 [B, N, D] (N image positions); the mean over N is a per-image probe feature."""
        ...


@runtime_checkable
class CaptionScorer(Protocol):
    """Capability "caption": image -> text likelihood, what `fix --method understanding-sft` trains."""

    def caption_logprob(self, images: Sequence[Image.Image], texts: Sequence[str], question: str) -> torch.Tensor:
        """Mean per-token log-probability of texts[i] as the model's answer to `question` about images[i]
        (its tokens and the end of the answer), in the format answer_distribution scores answers in:
        float32 [B], differentiable w.r.t. the language model (and LoRA weights on it)."""
        ...


# Capability name (as a registry entry lists it) -> protocol.
CAPABILITIES: dict[str, type] = {
    "generate": ImageGenerator,
    "source": ImageSource,
    "understand": Understander,
    "image_logprob": ImageScorer,
    "tokenize": VisionTokenizer,
    "lora": LoRATrainable,
    "lm_hooks": LMHooks,
    "tokenizer_features": TokenizerFeatures,
    "understanding_features": UnderstandingFeatures,
    "caption": CaptionScorer,
}


def members(protocol: type) -> tuple[str, ...]:
    """The attribute and method names a protocol asks for."""
    names = [*getattr(protocol, "__annotations__", {}), *(n for n in vars(protocol) if not n.startswith("_"))]
    return tuple(dict.fromkeys(names))


def capabilities_of(model: Any) -> frozenset[str]:
    """The capability names whose protocol `model` implements."""
    return frozenset(name for name, proto in CAPABILITIES.items() if isinstance(model, proto))


__all__ = ["CAPABILITIES", "OTHER", "CaptionScorer", "ImageGenerator", "ImageScorer", "ImageSource", "LMHooks",
           "LoRATrainable", "Model", "TokenizerFeatures", "UnderstandingFeatures", "Understander",
           "VisionTokenizer", "capabilities_of", "members"]
