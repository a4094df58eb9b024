"""The built-in model families' registry entries (registry.Family). Constructors are imported on first use,
so listing the families imports no model code. A plugin package declares an entry of the same shape under
the `fairgen.models` entry point group (registry.py); docs/architecture.md says how to add either.
"""

from __future__ import annotations

from .registry import DEVICE_MAP, DTYPE, Family, Option, flag, integer, text

# What a unified model of the transformers families can do (protocols.CAPABILITIES).
UNIFIED = frozenset({"generate", "understand", "image_logprob", "tokenize", "lora", "lm_hooks",
                     "tokenizer_features", "understanding_features", "caption"})
_TRANSFORMERS = ("transformers>=5.23 (installed with fairgen); a CUDA GPU for real checkpoints")

BUILTIN: tuple[Family, ...] = (
    Family(
        name="world", constructor="fairgen.models.world:build", spec="world", arg="none",
        description="synthetic ground-truth world: draws and renders the planted world spec (no weights)",
        capabilities=frozenset({"generate"}), world_images=True,
        options={"world_spec": Option("planted-bias YAML file (default: the packaged spec)", text)},
    ),
    Family(
        name="tiny", constructor="fairgen.models.tiny:load", spec="tiny[:<dir>]", arg="optional",
        description="fairgen-tiny, a small real unified model: the packaged checkpoint, or a directory",
        capabilities=UNIFIED, world_images=True, requirements="torch (CPU is enough)",
        commands="fairgen.models.tiny.cli:tiny_app",
    ),
    Family(
        name="folder", constructor="fairgen.models.folder:FolderModel", spec="folder:<dir>",
        description="images already on disk: fairgen's run layout or <dir>/prompt_<i>/img_<j>.png",
        capabilities=frozenset({"source"}),
    ),
    Family(
        name="janus", constructor="fairgen.models.janus:JanusModel", spec="janus:<hf id or dir>",
        description="Janus / Janus-Pro in transformers format, e.g. janus:deepseek-community/Janus-Pro-7B",
        capabilities=UNIFIED, requirements=_TRANSFORMERS, check="fairgen.models.hf.loading:transformers_problem",
        options={"dtype": DTYPE, "device_map": DEVICE_MAP,
                 "graphs": Option("replay token steps as CUDA graphs: true or false (default: true on one "
                                  "CUDA device)", flag)},
    ),
    Family(
        name="emu3", constructor="fairgen.models.emu3:Emu3Model", spec="emu3:<hf id or dir>",
        description="Emu3 in transformers format, e.g. emu3:BAAI/Emu3-Gen-hf",
        capabilities=UNIFIED, requirements=_TRANSFORMERS, check="fairgen.models.hf.loading:transformers_problem",
        options={"dtype": DTYPE, "device_map": DEVICE_MAP,
                 "image_area": Option("pixels of a generated (square) image (default: the processor's, "
                                      "720x720)", integer),
                 "negative_prompt": Option("the unconditional prompt of guidance (default: BAAI's)", text)},
    ),
    Family(
        name="diffusers", constructor="fairgen.models.diffusers_t2i:DiffusersModel", spec="diffusers:<hf id or dir>",
        description="text-to-image diffusion pipeline (Stable Diffusion and kin), generation only",
        capabilities=frozenset({"generate"}), check="fairgen.models.diffusers_t2i:diffusers_problem",
        requirements="pip install 'fairgen[diffusers]'; a CUDA GPU for real checkpoints",
        options={"dtype": DTYPE, "device_map": Option("diffusers' pipeline placement, e.g. balanced")},
    ),
    Family(
        name="plugin", constructor="fairgen.models.registry:from_reference", spec="plugin:<module>:<Class>",
        description="your own class or Family from an importable module (no packaging needed)",
        capabilities=frozenset(), options=None,
    ),
)
