"""`--adapter DIR`: apply a peft LoRA adapter (what `fairgen fix` trains) to any model that implements
protocols.LoRATrainable, which exposes
  lora_root     the torch module its LoRA targets live in (Janus, Emu3: the whole transformers model;
                fairgen-tiny: its language model)
  lora_targets  names of modules of lora_root, language model only
An adapter is a directory saved by peft's `PeftModel.save_pretrained` on that same lora_root
(adapter_config.json + adapter_model.safetensors). It is injected in place, so every method of the model
(generate, answer_distribution, image_token_logprob, ...) runs with it.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from ..store import file_sha256
from ..types import FairgenError
from .protocols import CAPABILITIES, LoRATrainable, Model, members

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdaptedModel:
    """A model with a LoRA adapter applied; behaves as the model, and its provenance names the adapter.
    `peft_model` is peft's wrapper around the model's lora_root (for merging, saving or `unload()`, which
    leaves the base model as it was). Every protocol member of the base model is set on the wrapper
    itself, so `isinstance(adapted, SomeProtocol)` answers as for the base model (a runtime protocol check
    looks at the object's own attributes, not at __getattr__, since Python 3.12)."""

    def __init__(self, base: Model, adapter_dir: Path, peft_model: Any) -> None:
        self.base, self.adapter_dir, self.peft_model = base, adapter_dir, peft_model
        self.spec = base.spec
        for protocol in CAPABILITIES.values():
            for name in members(protocol):
                if name != "provenance" and hasattr(base, name):
                    setattr(self, name, getattr(base, name))

    def __getattr__(self, name: str) -> Any:  # everything else is the base model's
        return getattr(self.base, name)

    def provenance(self) -> dict[str, Any]:
        """The base model's provenance plus the adapter's directory and file hashes."""
        files = {name: file_sha256(self.adapter_dir / name) for name in ADAPTER_FILES}
        return {**self.base.provenance(), "adapter": {"path": str(self.adapter_dir), "sha256": files}}


def apply_adapter(model: Model, adapter_dir: str | Path) -> AdaptedModel:
    """Load the peft adapter in `adapter_dir` into `model`'s language model (in place, inference mode).

    Raises FairgenError when the model has no LoRA support, the directory is not a safetensors peft
    adapter, or the adapter touches a module outside the model's lora_targets (e.g. the vision tower)."""
    from peft import PeftModel

    path = Path(adapter_dir).expanduser()
    if not isinstance(model, LoRATrainable):
        raise FairgenError(f"model {model.spec} does not support adapters (no LoRA capability)")
    missing = [name for name in ADAPTER_FILES if not (path / name).is_file()]
    if missing:
        raise FairgenError(f"adapter {path} is not a peft adapter directory: missing {', '.join(missing)}")
    root = model.lora_root
    try:
        peft_model = PeftModel.from_pretrained(root, path, is_trainable=False)
    except (ValueError, KeyError, RuntimeError) as e:
        raise FairgenError(f"adapter {path} does not fit model {model.spec}: {str(e).splitlines()[0]}") from None
    allowed = set(model.lora_targets)
    wrapped = [name for name, module in root.named_modules() if hasattr(module, "lora_A") and name not in allowed]
    if wrapped:
        peft_model.unload()  # leave the model as it was
        raise FairgenError(f"adapter {path} changes {wrapped[0]}, outside the language model of {model.spec}")
    return AdaptedModel(model, path, peft_model)


@contextmanager
def applied_adapter(model: Model, adapter_dir: str | Path) -> Iterator[AdaptedModel]:
    """apply_adapter for the time of the block; the model is unwrapped again on leaving it. The LoRA
    layers run beside their base projections (two small extra products per projection and step)."""
    adapted = apply_adapter(model, adapter_dir)
    try:
        yield adapted
    finally:
        adapted.peft_model.unload()


@contextmanager
def merged_adapter(model: Model, adapter_dir: str | Path) -> Iterator[AdaptedModel]:
    """The adapter merged into the weights of the layers it changes, for the time of the block: they run
    as plain projections (the engine stacks them again), as fast as the model without it. On leaving, the
    original weights, kept on the CPU meanwhile, are copied back bit for bit (merging and unmerging in
    bf16 would not be exact). The yielded model's provenance names the adapter; its peft_model is None."""
    adapted = apply_adapter(model, adapter_dir)
    root = model.lora_root
    names = [name for name, module in root.named_modules() if hasattr(module, "lora_A")]
    saved = {name: root.get_submodule(name).base_layer.weight.detach().to("cpu", copy=True) for name in names}
    try:
        adapted.peft_model.merge_and_unload()  # the LoRA layers replaced by their base layers, merged
    except BaseException:
        adapted.peft_model.unload()
        raise
    adapted.peft_model = None
    try:
        yield adapted
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                root.get_submodule(name).weight.copy_(weight)
