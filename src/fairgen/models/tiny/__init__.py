"""fairgen-tiny: a small but real unified multimodal LLM of the VILA-U / Janus family (docs/tiny.md).

load(dir | None, device="cpu") -> TinyModel     a checkpoint directory, or the packaged default
TinyModel                                       the unified model protocol (adapter.py)
train.train(spec, out, recipe, ...)             both training stages (`fairgen tiny train`)
"""

from .adapter import TinyModel, load

__all__ = ["TinyModel", "load"]
