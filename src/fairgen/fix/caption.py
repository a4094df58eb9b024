"""Image -> text log-probabilities: what `--method understanding-sft` (the paper's "FT image->text") trains.

    caption_logprob(model, images, texts) -> Tensor[B]
        mean log-probability per token of each text as the model's answer to CAPTION_QUESTION about its
        image (the text's tokens and the end of the answer), differentiable with respect to the language
        model and any LoRA adapter on it.

A model provides it through the CaptionScorer protocol (models/protocols.py), in exactly the format its
answer_distribution scores an answer in, so exp(caption_logprob * n_tokens) of a one-option answer is
answer_distribution's raw mass for it (tests/test_fix_methods.py, tests/test_fix_hf.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..models.protocols import CaptionScorer
from ..types import FairgenError

CAPTION_QUESTION = "Describe the image."


def caption_logprob(model: Any, images: Sequence[Image.Image], texts: Sequence[str]) -> torch.Tensor:
    """Mean per-token log-probability (float32 [B], on the model's device) of texts[i] as the answer to
    CAPTION_QUESTION about images[i]; differentiable w.r.t. the language model (module docstring)."""
    if len(images) != len(texts) or not texts:
        raise FairgenError(f"caption_logprob: {len(images)} images but {len(texts)} texts")
    if not isinstance(model, CaptionScorer):
        raise FairgenError(f"model {model.spec} cannot score captions: it has no "
                           "caption_logprob(images, texts, question)")
    return model.caption_logprob(images, texts, CAPTION_QUESTION)
