"""The official VILA-U checkpoint layout: reading it into fairgen's modules, and writing a random one.

  config.json        model_type "vila_u_llama"; llm_cfg / vision_tower_cfg / mm_projector_cfg; image_aspect_ratio
  llm/               LlamaForCausalLM (config.json, *.safetensors) and its tokenizer; the tokenizer's last four
                     ids are <im_start>, <im_end>, <vi_start>, <vi_end>
  mm_projector/      config.json (mm_projector_type, e.g. "mlp2x_gelu"), model.safetensors (layers.0, layers.2)
  vision_tower/      config.json {rqvaesiglip: {...}, rqtransformer: {...}, hidden_size}, model.safetensors
                     (rqvaesiglip.siglip_model.*, rqvaesiglip.quantizer.codebooks.*, rqvaesiglip.decoder.*,
                     rqtransformer.*)

write_random() saves a randomly initialised checkpoint of any size in this layout (tests use a tiny one,
benchmarks the 7B-256 shapes), loadable by fairgen and by upstream's own code alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..types import FairgenError
from .hf.checks import first_line
from .vila_u_rq import RQVAE, DepthTransformer

FAMILY = "vila-u"
# The SigLIP towers of the released checkpoints (upstream fetches these configs from the hub).
SIGLIP = {
    "google/siglip-large-patch16-256": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=256, patch_size=16),
    "google/siglip-so400m-patch14-384": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                             num_attention_heads=16, image_size=384, patch_size=14),
}


def safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FairgenError(f"{FAMILY}: {directory} holds no *.safetensors weights")
    return {k: v for f in files for k, v in load_file(f).items()}


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FairgenError(f"{FAMILY}: {path} is missing (not the official VILA-U layout)")
    return json.loads(path.read_text())


def _siglip_config(tower: Path, name: str) -> Any:
    from transformers import SiglipVisionConfig

    if name in SIGLIP:
        return _sdpa(SiglipVisionConfig(**SIGLIP[name]))
    local = tower / name / "config.json"
    if local.is_file():
        cfg = json.loads(local.read_text())
        return _sdpa(SiglipVisionConfig(**cfg.get("vision_config", cfg)))
    raise FairgenError(f"{FAMILY}: unknown SigLIP tower {name!r} (known: {', '.join(SIGLIP)}; or a folder "
                       f"{name}/config.json inside {tower})")


def _sdpa(config: Any) -> Any:
    """SigLIP layers built outside from_pretrained run torch's SDPA attention (else transformers warns)."""
    config._attn_implementation = "sdpa"
    return config


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FairgenError(f"{FAMILY}: {what} does not fit the checkpoint: {first_line(e)}") from None


def build_projector(kind: str, vision_dim: int, lm_dim: int) -> nn.Module:
    """mm_projector: "linear", "identity" or "mlp<N>x_gelu" (N linears with GELUs between)."""
    if kind == "identity":
        return nn.Identity()
    if kind == "linear":
        return nn.Sequential(nn.Linear(vision_dim, lm_dim))
    if kind.startswith("mlp") and kind.endswith("x_gelu") and kind[3:-6].isdigit():
        mods: list[nn.Module] = [nn.Linear(vision_dim, lm_dim)]
        for _ in range(int(kind[3:-6]) - 1):
            mods += [nn.GELU(), nn.Linear(lm_dim, lm_dim)]
        return nn.Sequential(*mods)
    raise FairgenError(f"{FAMILY}: unknown mm_projector_type {kind!r}")


def build_tower(tower: Path, state: dict[str, torch.Tensor] | None) -> tuple[RQVAE, DepthTransformer, int]:
    """(RQ-VAE, depth transformer, image size in pixels) from vision_tower/config.json and its weights
    (random-init shapes when state is None)."""
    cfg = read_json(tower / "config.json")
    rq, rt = cfg.get("rqvaesiglip"), cfg.get("rqtransformer")
    if not rq or not rt:
        raise FairgenError(f"{FAMILY}: {tower}/config.json lacks rqvaesiglip / rqtransformer")
    siglip = _siglip_config(tower, rq.get("pretrained_model", "google/siglip-large-patch16-256"))
    depth = int(rq["code_shape"][-1])
    if list(rq["latent_shape"][:2]) != list(rq["code_shape"][:2]):
        raise FairgenError(f"{FAMILY}: latent_shape {rq['latent_shape']} and code_shape {rq['code_shape']} differ "
                           "in their grid; only one code stack per SigLIP patch is supported")
    n_books = 1 if rq.get("shared_codebook", True) else depth
    vae = RQVAE(siglip, n_books, int(rq["n_embed"]), depth, rq["ddconfig"], rq.get("decoder_latent_shape"))
    head = rt["head"]
    depth_tf = DepthTransformer(int(rt["input_embed_dim_1"]), int(rt["input_embed_dim_2"]), int(rt["embed_dim"]),
                                int(head["block"]["n_head"]), int(head["n_layer"]), int(rt["block_size"][2]),
                                int(rt["vocab_size"]))
    if state is not None:
        _load_strict(vae, _vae_state(state, n_books, len(vae.layers)), "the RQ-VAE")
        _load_strict(depth_tf, {k.removeprefix("rqtransformer."): v for k, v in state.items()
                                if k.startswith("rqtransformer.")}, "the depth transformer")
    return vae, depth_tf, siglip.image_size


def _vae_state(state: dict[str, torch.Tensor], n_books: int, layers: int) -> dict[str, torch.Tensor]:
    """The official rqvaesiglip.* weights renamed to RQVAE's: SigLIP's vision embeddings and the layers the
    tower runs, the codebook(s) without their padding row, the post-quant conv and the decoder. Skipped:
    SigLIP's text tower, last layer, post-LN and pooling head, the quantiser's EMA buffers."""
    out = {}
    vision = "rqvaesiglip.siglip_model.vision_model."
    for k, v in state.items():
        if k.startswith(vision + "embeddings."):
            out[k.removeprefix(vision)] = v
        elif k.startswith(vision + "encoder.layers."):
            i = int(k.removeprefix(vision + "encoder.layers.").split(".")[0])
            if i < layers:
                out[k.removeprefix(vision + "encoder.")] = v
        elif k.startswith(("rqvaesiglip.post_quant_conv.", "rqvaesiglip.decoder.")):
            out[k.removeprefix("rqvaesiglip.")] = v
    # A shared codebook is one module listed once per depth: saved under one or all of its indices.
    books = [state.get(f"rqvaesiglip.quantizer.codebooks.{d}.weight") for d in range(max(n_books, 1))]
    if n_books == 1:
        books = [next((v for k, v in sorted(state.items()) if k.startswith("rqvaesiglip.quantizer.codebooks.")
                       and k.endswith(".weight")), None)]
    if any(b is None for b in books):
        raise FairgenError(f"{FAMILY}: the vision tower's weights lack rqvaesiglip.quantizer.codebooks.*.weight")
    out["quantizer.codebook"] = torch.stack([b[:-1] for b in books])  # the last row is the padding entry
    return out


def load_parts(path: Path, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    """Everything a VilaUModel holds, from a checkpoint directory in the official layout: llm, tokenizer,
    projector, vae, depth (the depth transformer), image_size (pixels), aspect ("resize" | "pad")."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    top = read_json(path / "config.json")
    if top.get("model_type") != "vila_u_llama":
        raise FairgenError(f"{FAMILY}: {path} is a {top.get('model_type')!r} checkpoint, not a 'vila_u_llama' one")
    for part in ("llm", "mm_projector", "vision_tower"):
        if not (path / part).is_dir():
            raise FairgenError(f"{FAMILY}: {path} has no {part}/ folder (not the official VILA-U layout)")
    try:
        llm = LlamaForCausalLM.from_pretrained(path / "llm", dtype=dtype, use_safetensors=True)
        tokenizer = AutoTokenizer.from_pretrained(path / "llm")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FairgenError(f"{FAMILY}: cannot load {path / 'llm'}: {first_line(e)}") from None
    vae, depth, size = build_tower(path / "vision_tower", safetensors_dir(path / "vision_tower"))
    kind = read_json(path / "mm_projector" / "config.json").get("mm_projector_type", "mlp2x_gelu")
    projector = build_projector(kind, vae.quantizer.codebook.shape[-1], llm.config.hidden_size)
    _load_strict(projector, {k.removeprefix("layers."): v for k, v in safetensors_dir(path / "mm_projector").items()},
                 "the mm_projector")
    parts = {"llm": llm, "projector": projector, "vae": vae, "depth": depth}
    for name, module in parts.items():
        parts[name] = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return {**parts, "tokenizer": tokenizer, "image_size": size, "aspect": top.get("image_aspect_ratio") or "resize"}


# -- random checkpoints in the official layout -------------------------------------------------------------
SPECIALS = ["<im_start>", "<im_end>", "<vi_start>", "<vi_end>"]
TINY = dict(lm=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4),
            siglip=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                        image_size=32, patch_size=8),
            n_codes=48, depth=4, ddconfig=dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1, attn_resolutions=[8]),
            depth_tf=dict(embed_dim=32, n_head=4, n_layer=2), projector="mlp2x_gelu")
# The 7B-256 shapes (LLaMA-2-7B; SigLIP-large/16 at 256 px; 16384 codes x depth 4). Its depth transformer
# and decoder widths are not in upstream's code and no config was at hand: these are stated assumptions.
SEVEN_B_256 = dict(lm=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=32, vocab_size=32004),
                   siglip=SIGLIP["google/siglip-large-patch16-256"], n_codes=16384, depth=4,
                   ddconfig=dict(ch=128, ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16]),
                   depth_tf=dict(embed_dim=2560, n_head=40, n_layer=3), projector="mlp2x_gelu")


def tiny_tokenizer(corpus: list[str]) -> Any:
    """A byte-level BPE tokenizer that prepends <s>, with VILA-U's four special tokens as its last ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"],
                                                        show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_tokens(SPECIALS, special_tokens=True)
    return tokenizer


def _llama_config(shapes: dict, vocab: int, tokenizer: Any) -> dict[str, Any]:
    """A LlamaForCausalLM config.json readable by old and new transformers alike (rope_theta, not
    rope_parameters)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": False, "vocab_size": vocab, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "torch_dtype": "float32",
            **{k: v for k, v in shapes.items() if k != "vocab_size"}}


def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    """Seeded values for every parameter, independent of any library's init: N(0, 0.02) for matrices and
    biases, 1 + N(0, 0.1) for norm scales (so a test sees them act), in name order."""
    with torch.no_grad():
        for name, p in sorted(module.named_parameters(), key=lambda kv: kv[0]):
            noise = torch.randn(p.shape, generator=generator, dtype=torch.float32, device=generator.device)
            owner = name.split(".")[-2] if "." in name else ""
            is_scale = p.dim() == 1 and name.endswith("weight") and ("norm" in owner or owner.startswith("ln"))
            p.copy_(1.0 + 0.1 * noise if is_scale else 0.02 * noise)


def random_parts(shapes: dict, tokenizer: Any, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The modules of a random VILA-U of the given shapes (TINY, SEVEN_B_256), as load_parts returns them,
    plus `configs` (the JSON of each part) and `siglip_last` (the tower's last layer and post-LN, which the
    official weights hold and the tower never runs)."""
    from transformers import LlamaConfig, LlamaForCausalLM, SiglipVisionConfig
    from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

    g = torch.Generator(device=device).manual_seed(seed)  # on the device: a 7B model fills in seconds
    vocab = shapes["lm"].get("vocab_size", len(tokenizer))
    llm_cfg = _llama_config(shapes["lm"], vocab, tokenizer)
    sig, c, depth = shapes["siglip"], shapes["siglip"]["hidden_size"], shapes["depth"]
    grid = sig["image_size"] // sig["patch_size"]
    dd = {**shapes["ddconfig"], "in_channels": 3, "out_ch": 3, "resolution": sig["image_size"], "z_channels": c,
          "dropout": 0.0, "double_z": False}
    rq = {"model_type": "rqvaesiglip_model", "architectures": ["RQVAESiglipModel"], "embed_dim": c,
          "n_embed": shapes["n_codes"], "latent_shape": [grid, grid, c], "code_shape": [grid, grid, depth],
          "shared_codebook": True, "restart_unused_codes": True, "ddconfig": dd, "decay": 0.99,
          "latent_loss_weight": 0.25, "pretrained_model": "siglip"}
    t = shapes["depth_tf"]
    rt = {"model_type": "rqtransformer_model", "architectures": ["RQTransformer"], "block_size": [grid, grid, depth],
          "input_embed_dim_1": c, "input_embed_dim_2": shapes["lm"]["hidden_size"], "embed_dim": t["embed_dim"],
          "vocab_size": shapes["n_codes"], "head": {"block": {"n_head": t["n_head"]}, "n_layer": t["n_layer"]}}
    siglip_cfg = _sdpa(SiglipVisionConfig(**sig))
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in the target dtype: a 7B model never exists in fp32
    with torch.device(device):
        llm = LlamaForCausalLM(LlamaConfig(**llm_cfg))
        vae = RQVAE(siglip_cfg, 1, shapes["n_codes"], depth, dd)
        depth_tf = DepthTransformer(c, shapes["lm"]["hidden_size"], t["embed_dim"], t["n_head"], t["n_layer"], depth,
                                    shapes["n_codes"])
        projector = build_projector(shapes["projector"], c, shapes["lm"]["hidden_size"])
        last = nn.ModuleDict({"layer": SiglipEncoderLayer(siglip_cfg), "post_layernorm": nn.LayerNorm(c)})
    torch.set_default_dtype(default)
    parts = {"llm": llm, "projector": projector, "vae": vae, "depth": depth_tf, "siglip_last": last}
    for name in sorted(parts):
        _randomize(parts[name], g)
        parts[name] = parts[name].to(dtype).eval().requires_grad_(False)
    siglip_json = {"model_type": "siglip", "vision_config": {**sig, "model_type": "siglip_vision_model"},
                   "text_config": {"vocab_size": 64, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                                   "num_attention_heads": 2, "max_position_embeddings": 16}}
    configs = {"llm": llm_cfg, "rqvaesiglip": rq, "rqtransformer": rt, "siglip": siglip_json,
               "projector": {"model_type": "v2l_projector", "architectures": ["MultimodalProjector"],
                             "mm_projector_type": shapes["projector"]}}
    return {**parts, "tokenizer": tokenizer, "image_size": sig["image_size"], "aspect": "resize", "configs": configs}


def write_random(path: Path, shapes: dict = TINY, corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Save a random VILA-U in the official layout at `path` (created); returns path."""
    from safetensors.torch import save_file

    path = Path(path)
    tokenizer = tiny_tokenizer(corpus or [SYSTEM_TEXT])
    p = random_parts(shapes, tokenizer, seed)
    cfg = p["configs"]
    for part in ("llm", "mm_projector", "vision_tower/siglip"):
        (path / part).mkdir(parents=True, exist_ok=True)
    c, h = cfg["rqvaesiglip"]["embed_dim"], cfg["llm"]["hidden_size"]
    top = {"model_type": "vila_u_llama", "architectures": ["VILAULlamaModel"], "llm_cfg": cfg["llm"],
           "vision_tower_cfg": {"model_type": "rqvaesigliptransformer_model", "hidden_size": c},
           "mm_projector_cfg": cfg["projector"], "hidden_size": h, "mm_hidden_size": c, "image_aspect_ratio": "resize",
           "mm_use_im_start_end": False, "mm_use_vi_start_end": True, "mm_use_im_patch_token": False,
           "model_dtype": "torch.float32", "resume_path": None}
    (path / "config.json").write_text(json.dumps(top, indent=1))
    (path / "llm" / "config.json").write_text(json.dumps(cfg["llm"], indent=1))
    save_file({k: v.contiguous() for k, v in p["llm"].state_dict().items()}, path / "llm" / "model.safetensors",
              metadata={"format": "pt"})
    _save_tokenizer(tokenizer, path / "llm")
    (path / "mm_projector" / "config.json").write_text(json.dumps(cfg["projector"], indent=1))
    save_file({f"layers.{k}": v.contiguous() for k, v in p["projector"].state_dict().items()},
              path / "mm_projector" / "model.safetensors", metadata={"format": "pt"})
    tower = path / "vision_tower"
    (tower / "config.json").write_text(json.dumps(
        {"model_type": "rqvaesigliptransformer_model", "architectures": ["RQVAESIGLIPTransformer"], "hidden_size": c,
         "rqvaesiglip": cfg["rqvaesiglip"], "rqtransformer": cfg["rqtransformer"]}, indent=1))
    (tower / "siglip" / "config.json").write_text(json.dumps(cfg["siglip"], indent=1))
    save_file(_official_tower_state(p), tower / "model.safetensors", metadata={"format": "pt"})
    return path


def _save_tokenizer(tokenizer: Any, directory: Path) -> None:
    """tokenizer.json with merges as "a b" strings and no keys newer than tokenizers 0.15 knows, and a
    plain tokenizer_config.json: readable by the transformers 4.36 that upstream pins, and by today's."""
    data = json.loads(tokenizer.backend_tokenizer.to_str())
    data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    data["model"].pop("ignore_merges", None)
    (directory / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "model_max_length": 4096}, indent=1))


def _official_tower_state(p: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The vision tower's weights under the official names (the inverse of _vae_state), every codebook
    index holding the shared codebook with its padding row (zeros) appended."""
    vision = "rqvaesiglip.siglip_model.vision_model."
    out: dict[str, torch.Tensor] = {}
    for k, v in p["vae"].state_dict().items():
        if k.startswith("embeddings."):
            out[vision + k] = v
        elif k.startswith("layers."):
            out[vision + "encoder." + k] = v
        elif k != "quantizer.codebook":
            out["rqvaesiglip." + k] = v
    last = len(p["vae"].layers)
    for k, v in p["siglip_last"].state_dict().items():
        name = k.replace("layer.", f"encoder.layers.{last}.", 1) if k.startswith("layer.") else k
        out[vision + name] = v
    book = p["vae"].quantizer.codebook[0]
    padded = torch.cat([book, book.new_zeros(1, book.shape[1])])
    for d in range(p["vae"].quantizer.depth):
        out[f"rqvaesiglip.quantizer.codebooks.{d}.weight"] = padded
    out.update({"rqtransformer." + k: v for k, v in p["depth"].state_dict().items()})
    return {k: v.contiguous().clone() for k, v in out.items()}


SYSTEM_TEXT = ("A chat between a curious user and an artificial intelligence assistant. "
               "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# What the test checkpoint's tokenizer is trained on (tests/fixtures/vila_u_upstream.py uses the same).
TEST_CORPUS = [SYSTEM_TEXT, "USER: ASSISTANT: A photo of the face of a nurse, a person", "a firefighter",
               "What is the gender of the person? Answer with a single word.", "male female unknown"] * 2
