"""Model families behind one protocol (models/base.py), addressed by a spec string.

  world                      the synthetic world: samples the planted spec and renders (exact ground truth)
  tiny | tiny:<dir>          fairgen-tiny, a small real unified model (packaged checkpoint, or a directory)
  folder:<dir>               images already on disk (fairgen's layout or Shen et al.'s)
  janus:<hf id or dir>       Janus / Janus-Pro via transformers (janus.py)
  emu3:<hf id or dir>        Emu3 via transformers (emu3.py)
  tokenflow:<dir>            TokenFlow text-to-image, native port (tokenflow.py)
  diffusers:<hf id or dir>   Stable Diffusion-family pipelines, generation only (extra `fairgen[diffusers]`)
  plugin:<module>:<Class>    any class implementing the protocol, built with no arguments
  <name>:<arg>               a class installed under the `fairgen.models` entry point group (plugins.py)

`load(spec, adapter=DIR)` applies a LoRA adapter trained by `fairgen fix` (adapters.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..types import FairgenError
from . import plugins
from .base import OTHER, UnifiedModel

FAMILIES: dict[str, str] = {
    "world": "synthetic ground-truth world; plants the --world-spec distribution (no weights)",
    "tiny": "fairgen-tiny unified model: `tiny` (packaged checkpoint) or `tiny:<dir>`",
    "folder": "images already on disk: `folder:<dir>` (fairgen layout or <dir>/prompt_<i>/img_<j>.png)",
    "janus": "Janus / Janus-Pro (transformers format): `janus:deepseek-community/Janus-Pro-7B` or `janus:<dir>`",
    "emu3": "Emu3 (transformers format): `emu3:BAAI/Emu3-Gen-hf` or `emu3:<dir>`",
    "tokenflow": "TokenFlow text-to-image (native): `tokenflow:<TokenFlow-t2i dir>` + --model-option tokenizer=<.pt>",
    "diffusers": "text-to-image diffusion pipeline, generation only: `diffusers:<hf id or dir>`",
    "plugin": "your own class: `plugin:<module>:<Class>` implementing models/base.py's protocol",
}
# Families that take options (dtype, device_map, ...) through load(**options).
_HF_FAMILIES = ("janus", "emu3", "diffusers", "tokenflow")


def split_spec(spec: str) -> tuple[str, str]:
    """'janus:deepseek-ai/Janus-Pro-1B' -> ('janus', 'deepseek-ai/Janus-Pro-1B'); 'world' -> ('world', '')."""
    family, _, arg = spec.partition(":")
    return family.strip().lower(), arg.strip()


def parse_options(pairs: list[str]) -> dict[str, int | float | str]:
    """--model-option values: ['image_area=65536', 'device_map=auto'] -> {'image_area': 65536,
    'device_map': 'auto'} (numbers parsed; a family parses its own flags, e.g. graphs=false)."""
    out: dict[str, int | float | str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FairgenError(f"--model-option expects KEY=VALUE (got {pair!r})")
        for kind in (int, float):
            try:
                out[key.strip()] = kind(value)
                break
            except ValueError:
                continue
        else:
            out[key.strip()] = value.strip()
    return out


def load(spec: str, *, world_spec: str | Path | None = None, device: str | None = None,
         adapter: str | Path | None = None, **options: Any) -> UnifiedModel:
    """Build the model a spec string names, with a LoRA adapter applied when `adapter` is a directory.

    options go to the transformers / diffusers families: dtype ("bf16" | "fp16" | "fp32"), device_map
    (accelerate placement, e.g. "auto"), and for emu3 image_area and negative_prompt.
    Unknown or malformed specs, and options a family does not take, raise FairgenError."""
    model = _build(spec, world_spec, device, options)
    if adapter is not None:
        from .adapters import apply_adapter

        model = apply_adapter(model, adapter)
    return model


def _build(spec: str, world_spec: str | Path | None, device: str | None, options: dict[str, Any]) -> UnifiedModel:
    family, arg = split_spec(spec)
    if world_spec is not None and family != "world":
        raise FairgenError("--world-spec applies only to --model world")
    if options and family not in _HF_FAMILIES:
        raise FairgenError(f"model family {family!r} takes no options (got {', '.join(sorted(options))})")
    if family == "world":
        from ..world import WorldSpec
        from .world import WorldModel

        if arg:
            raise FairgenError(f"model spec 'world' takes no argument (got {spec!r}); give --world-spec instead")
        ws = WorldSpec.load(world_spec) if world_spec else WorldSpec.default()
        return WorldModel(ws, source=str(world_spec) if world_spec else "default")
    if family == "tiny":
        from . import tiny

        return tiny.load(arg or None, device=device or "cpu")
    if family == "folder":
        from .folder import FolderModel

        if not arg:
            raise FairgenError("model spec folder:<dir> needs a directory")
        return FolderModel(Path(arg))
    if family == "janus":
        from . import janus

        return janus.load(arg, device=device, **options)
    if family == "emu3":
        from . import emu3

        return emu3.load(arg, device=device, **options)
    if family == "tokenflow":
        from . import tokenflow

        return tokenflow.load(arg, device=device, **options)
    if family == "diffusers":
        from . import diffusers_t2i

        return diffusers_t2i.load(arg, device=device, **options)
    if family == "plugin":
        return plugins.load_class(arg, spec)
    entry_point = plugins.installed().get(family)
    if entry_point is not None:
        return plugins.load_entry_point(entry_point, arg, spec)
    known = ", ".join([*FAMILIES, *plugins.installed()])
    raise FairgenError(f"unknown model spec {spec!r}; known families: {known}")


def describe() -> list[dict[str, Any]]:
    """The model families, for `fairgen models`: one dict per family with
    family, spec (syntax), description, needs (what it requires), usable (bool: can it run on this
    machine now) and note (why not, or what to expect here)."""
    from .hf_common import MIN_TRANSFORMERS, transformers_problem

    gpu = _gpu_name()
    hardware = f"GPU: {gpu}" if gpu else "no CUDA GPU: runs on CPU, slow for real checkpoints"
    rows = []
    for family, description in FAMILIES.items():
        needs, problem, note = "nothing extra", None, ""
        if family == "tokenflow":
            needs, note = "the TokenFlow-t2i directory and tokenizer .pt; a CUDA GPU for real checkpoints", hardware
        if family in ("janus", "emu3"):
            needs = f"transformers>={MIN_TRANSFORMERS}; a CUDA GPU for real checkpoints"
            problem, note = transformers_problem(family), hardware
        elif family == "diffusers":
            from .diffusers_t2i import diffusers_problem

            needs = "pip install 'fairgen[diffusers]'; a CUDA GPU for real checkpoints"
            problem, note = diffusers_problem(), hardware
        elif family == "tiny":
            needs = "torch (CPU is enough)"
        spec = {"world": "world", "tiny": "tiny[:<dir>]", "folder": "folder:<dir>",
                "plugin": "plugin:<module>:<Class>"}.get(family, f"{family}:<hf id or dir>")
        rows.append({"family": family, "spec": spec, "description": description, "needs": needs,
                     "usable": problem is None, "note": problem or note})
    for name, ep in plugins.installed().items():
        shadowed = name in FAMILIES
        rows.append({"family": name, "spec": f"{name}[:<arg>]", "description": f"plugin {ep.value}",
                     "needs": f"the package providing entry point {ep.name!r}", "usable": not shadowed,
                     "note": "shadowed by the built-in family of the same name" if shadowed else "loaded on use"})
    return rows


def _gpu_name() -> str | None:
    """Name of the first CUDA device, or None."""
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


__all__ = ["FAMILIES", "OTHER", "UnifiedModel", "describe", "load", "split_spec"]
