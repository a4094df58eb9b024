"""fairgen-tiny: a small but real unified multimodal LLM of the VILA-U / Janus family (docs/tiny.md).

load(dir | None, device="cpu") -> TinyModel     a checkpoint directory, or the packaged default (also the
                                                `tiny` family's constructor in the registry)
TinyModel                                       the model protocols (adapter.py)
train.train(spec, out, recipe, ...)             both training stages (`fairgen tiny train`)
"""

from .adapter import TinyModel, load

__all__ = ["TinyModel", "load"]
