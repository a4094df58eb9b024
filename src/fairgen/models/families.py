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
        name="vila-u", constructor="fairgen.models.vila_u:VilaUModel", spec="vila-u:<hf id or dir>",
        description="VILA-U (MIT Han Lab), native port of the official layout, e.g. vila-u:mit-han-lab/vila-u-7b-256",
        capabilities=UNIFIED, requirements=_TRANSFORMERS, check="fairgen.models.hf.loading:transformers_problem",
        options={"dtype": DTYPE,
                 "graphs": Option("replay token steps as CUDA graphs: true or false (default: true on a CUDA "
                                  "device)", flag),
                 "lora_depth": Option("fix also trains LoRA on the depth transformer: true or false (default: "
                                      "false, the LM only)", flag)},
    ),
    Family(
        name="show-o", constructor="fairgen.models.show_o:ShowoModel", spec="show-o:<hf id or dir>",
        description="Show-o (showlab), discrete-diffusion unified model, e.g. show-o:showlab/show-o-512x512",
        capabilities=UNIFIED, requirements="torch and transformers (installed with fairgen); a CUDA GPU for "
        "real checkpoints; showlab/magvitv2 and microsoft/phi-1_5's tokenizer beside the checkpoint",
        options={"dtype": DTYPE,
                 "vq": Option("MAGVIT-v2 directory or hub id (default: magvitv2/ in or beside the "
                              "checkpoint's directory, else showlab/magvitv2)", text),
                 "llm": Option("Phi-1.5 config and tokenizer directory or hub id (default: the checkpoint's "
                               "llm_model_path, or a directory of that name beside it)", text),
                 "clip": Option("CLIP vision tower of the -w-clip-vit variants (default: "
                                "openai/clip-vit-large-patch14-336, or a directory of that name beside the "
                                "checkpoint's)", text)},
    ),
    Family(
        name="tokenflow", constructor="fairgen.models.tokenflow:load",
        spec="tokenflow:<TokenFlow-t2i dir or hf id>",
        description="TokenFlow text-to-image (ByteFlow-AI), native port; the CLIP tokenizer .pt: `tokenizer`",
        capabilities=frozenset({"generate", "image_logprob", "tokenize", "lora", "lm_hooks",
                                "tokenizer_features"}),
        requirements="the TokenFlow-t2i directory and tokenflow_clipb_32k_enhanced.pt; a CUDA GPU for real "
                     "checkpoints",
        options={"dtype": DTYPE,
                 "tokenizer": Option("the vision tokenizer checkpoint (.pt; default: config.json's "
                                     "mm_vision_tower, else the one *.pt in the directory)", text),
                 "understanding": Option("the understanding model (not supported yet: refused with a message)",
                                         text)},
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
