"""Kept for code written against the single helper module of earlier releases: the helpers now live in
models/hf/, one module per concern (loading, decoding, chat, images, checks). Import from there."""

from .hf.chat import ChatFormat, answer_distribution, caption_logprob, pad_continuations, option_logprobs, option_distribution
from .hf.checks import check_options, check_batch, first_line
from .hf.decoding import positions, CachedDecoder
from .hf.images import to_pil
from .hf.loading import (MIN_TRANSFORMERS, CHECKPOINT_PATTERNS, transformers_problem, require_transformers, resolve_checkpoint, check_model_type, resolve_device, resolve_dtype, load_pretrained, Fingerprint, generation_defaults, linear_names)

__all__ = ["CHECKPOINT_PATTERNS", "CachedDecoder", "ChatFormat", "Fingerprint", "MIN_TRANSFORMERS", "answer_distribution", "caption_logprob", "check_batch", "check_model_type", "check_options", "first_line", "generation_defaults", "linear_names", "load_pretrained", "option_distribution", "option_logprobs", "pad_continuations", "positions", "require_transformers", "resolve_checkpoint", "resolve_device", "resolve_dtype", "to_pil", "transformers_problem"]
