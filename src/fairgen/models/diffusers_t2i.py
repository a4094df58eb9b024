"""`diffusers:<hf id or dir>`: text-to-image diffusion pipelines (Stable Diffusion and kin) as baselines.

Needs the `fairgen[diffusers]` extra. Generation only: a diffusion model has no image-token likelihood to
debias with BPO and no understanding side to probe. Each image gets its own torch.Generator seeded with its
seed, so its starting noise depends on nothing else in the batch.

Sampling settings: cfg (guidance_scale; default the pipeline's, 7.5 for Stable Diffusion), steps
(num_inference_steps; default the pipeline's, 50), negative_prompt, height / width in pixels. temperature and
top_p are token-sampling settings of autoregressive models; they are accepted (so one `--preset paper` command
runs every model of a comparison) and have no effect here.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from ..types import FairgenError, Prompt, prompt_text
from .hf import checks, loading
from .sampling import Sampling

FAMILY = "diffusers"
_SETTINGS = {"cfg": "guidance_scale", "steps": "num_inference_steps", "negative_prompt": "negative_prompt",
             "height": "height", "width": "width"}


def diffusers_problem(family: str = FAMILY) -> str | None:
    """Why this family cannot run here (one line), or None (the registry entry's check)."""
    if importlib.util.find_spec("diffusers") is None:
        return "diffusers is not installed: pip install 'fairgen[diffusers]'"
    return None


class DiffusersModel:
    """A diffusers text-to-image pipeline behind the ImageGenerator protocol (the `diffusers` family's
    constructor).

    checkpoint: a pipeline directory (model_index.json) or hub id. device / dtype: as for JanusModel
    (default bf16 on GPU, fp32 on CPU). device_map: diffusers' pipeline placement, e.g. "balanced"."""

    def __init__(self, checkpoint: str, device: str | None = None, dtype: str | None = None,
                 device_map: str | None = None) -> None:
        problem = diffusers_problem()
        if problem:
            raise FairgenError(problem)
        from diffusers import DiffusionPipeline

        path, revision = loading.resolve_checkpoint(FAMILY, checkpoint, index_file="model_index.json")
        target = loading.resolve_device(device)
        self.dtype = loading.resolve_dtype(dtype, target)
        try:
            self.pipe = DiffusionPipeline.from_pretrained(path, dtype=self.dtype, use_safetensors=True,
                                                          device_map=device_map)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FairgenError(f"{FAMILY}: cannot load {path}: {str(e).splitlines()[0][:300]}") from None
        if device_map is None:
            self.pipe.to(target)
        self.pipe.set_progress_bar_config(disable=True)
        self.spec = f"{FAMILY}:{checkpoint}"
        self.fingerprint = loading.Fingerprint(path, checkpoint, revision)

    def provenance(self) -> dict[str, Any]:
        """Checkpoint source, hub revision, sha256 of its files, pipeline class and dtype."""
        import diffusers

        return {"family": FAMILY, **self.fingerprint.as_dict(), "diffusers": diffusers.__version__,
                "pipeline": type(self.pipe).__name__, "dtype": str(self.dtype).removeprefix("torch.")}

    @torch.no_grad()
    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One image per (prompt, seed), in one pipeline call. The same prompt, seed and settings give the
        same image (its initial noise comes from its own generator)."""
        checks.check_batch(FAMILY, prompts, seeds, "seeds")
        Sampling().resolve(sampling, FAMILY, extra=set(_SETTINGS) - {"cfg"})  # unknown keys, bad values
        kwargs = {_SETTINGS[k]: v for k, v in sampling.items() if k in _SETTINGS and v is not None}
        if isinstance(kwargs.get("negative_prompt"), str):
            kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * len(prompts)
        # Generators live where the pipeline draws its noise (the execution device), one per image.
        device = self.pipe._execution_device
        generators = [torch.Generator(device).manual_seed(int(s) & 0xFFFF_FFFF_FFFF_FFFF) for s in seeds]
        out = self.pipe(prompt=[prompt_text(p) for p in prompts], generator=generators, **kwargs)
        return [im.convert("RGB") for im in out.images]
