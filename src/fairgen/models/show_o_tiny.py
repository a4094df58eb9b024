"""Tiny random Show-o checkpoints in the released layout, for tests, the equivalence fixtures and benchmarks.

write(root) makes three directories, as a user would have them after downloading the real ones:

  root/phi-1_5/    the LM's config.json (a small PhiConfig) and a byte-level BPE tokenizer whose
                   <|endoftext|> is bos, eos and unk, as Phi-1.5's is
  root/show-o/     config.json (`_class_name: Showo`, llm_model_path pointing at root/phi-1_5) and
                   pytorch_model.safetensors with the PhiForCausalLM under `showo.` (+ `mm_projector.`)
  root/magvitv2/   config.json (with the small architecture) and pytorch_model.safetensors

and, with w_clip_vit, root/clip-vit-large-patch14-336/ (a 2-layer CLIP vision tower with CLIP-L/14-336's
geometry). `show-o:root/show-o` loads it as is: the other directories are found beside the checkpoint. The vocabulary has upstream's layout:
text, [PAD], the nine task tokens, the codes, the mask token.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .magvit2 import ConvStack, MagvitV2
from .magvit2 import save as save_vq
from .show_o_lm import SPECIALS

CORPUS = [
    "A photo of the face of a nurse, a person", "A photo of the face of a firefighter, a person",
    "What is the gender of a nurse? Possible answers: male, female, unknown. Answer with a single word.",
    "male female unknown white black asian indian young old",
    ("USER: \n ASSISTANT: a chat between a curious user and an artificial intelligence assistant. The "
     "assistant gives helpful, detailed, and polite answers"),
    "Describe the image. A photo of a doctor, a teacher, a CEO, a cleaner",
] * 3
EOT = "<|endoftext|>"


def _tokenizer(path: Path, vocab_size: int) -> int:
    """Train and save the text tokenizer; returns its length (upstream's llm_vocab_size)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    fast.save_pretrained(path)
    # What transformers 4.x and tokenizers 0.19 (upstream's) read as well as today's: merges as "a b"
    # strings, and a tokenizer class name both know.
    tok_file = path / "tokenizer.json"
    spec = json.loads(tok_file.read_text())
    spec["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    tok_file.write_text(json.dumps(spec))
    cfg_file = path / "tokenizer_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}))
    return len(fast)


def write(root: Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, qk_layernorm: bool = True,
          image_size: int = 32, vq_levels: int = 3, codebook_dim: int = 4, w_clip_vit: bool = False,
          clip_width: int = 32, sharpness: float = 1.0, seed: int = 0) -> Path:
    """Write a tiny random Show-o under root (module docstring); returns root/show-o.

    The code grid is (image_size / 2^(vq_levels - 1))^2 tokens over 2^codebook_dim codes. sharpness scales
    the LM head's code rows (peakier code distributions, for tests that need some to be likelier)."""
    from safetensors.torch import save_file
    from transformers import PhiConfig, PhiForCausalLM

    torch.manual_seed(seed)
    phi_dir, showo_dir, vq_dir = root / "phi-1_5", root / "show-o", root / "magvitv2"
    llm_vocab = _tokenizer(phi_dir, 300)
    # Written by hand with the legacy rope keys, so transformers 4.x (upstream's) and 5.x read the same config.
    (phi_dir / "config.json").write_text(json.dumps({
        "model_type": "phi", "architectures": ["PhiForCausalLM"], "vocab_size": llm_vocab, "hidden_size": hidden,
        "intermediate_size": 2 * hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": heads, "hidden_act": "gelu_new", "max_position_embeddings": 4096,
        "layer_norm_eps": 1e-5, "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "qk_layernorm": qk_layernorm,
        "bos_token_id": 0, "eos_token_id": 0, "tie_word_embeddings": False, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
        "attention_dropout": 0.0}, indent=2))

    codebook = 2 ** codebook_dim
    side = image_size // 2 ** (vq_levels - 1)
    vocab = llm_vocab + 1 + len(SPECIALS) + codebook + 1
    cfg = PhiConfig.from_pretrained(phi_dir)
    cfg.vocab_size = vocab
    lm = PhiForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed)
    _fill(lm, gen)
    with torch.no_grad():
        first = llm_vocab + 1 + len(SPECIALS)
        lm.lm_head.weight[first:first + codebook] *= sharpness
    state = {f"showo.{k}": v.contiguous() for k, v in lm.state_dict().items()}
    if w_clip_vit:
        proj = torch.nn.Sequential(torch.nn.Linear(clip_width, 2 * hidden), torch.nn.GELU(),
                                   torch.nn.Linear(2 * hidden, hidden))
        _fill(proj, gen)
        state.update({f"mm_projector.{k}": v.contiguous() for k, v in proj.state_dict().items()})
        _clip(root / "clip-vit-large-patch14-336", clip_width, gen)
    showo_dir.mkdir(parents=True, exist_ok=True)
    (showo_dir / "config.json").write_text(json.dumps({
        "_class_name": "Showo", "_diffusers_version": "0.30.1", "w_clip_vit": w_clip_vit, "vocab_size": vocab,
        "llm_vocab_size": llm_vocab, "llm_model_path": str(phi_dir.resolve()), "codebook_size": codebook,
        "num_vq_tokens": side * side, "load_from_showo": True, "mask_token_id": vocab - 1}, indent=2))
    save_file(state, showo_dir / "pytorch_model.safetensors")

    mult = [1] + [2] * (vq_levels - 1)
    vq = MagvitV2(ConvStack(ch=32, ch_mult=mult, num_res_blocks=[1] * vq_levels, resolution=image_size),
                  ConvStack(ch=32, ch_mult=mult, num_res_blocks=[1] * vq_levels, resolution=image_size),
                  codebook_dim)
    _fill(vq, gen)
    save_vq(vq, vq_dir)
    return showo_dir


def _clip(path: Path, width: int, gen: torch.Generator) -> None:
    """A 2-layer CLIP vision tower with CLIP-L/14-336's geometry (336 px, 14 px patches: 576 features) and
    its image processor, saved as transformers does (the CLIP variants' understanding path)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=2,
                           num_attention_heads=2, image_size=336, patch_size=14, projection_dim=width)
    tower = CLIPVisionModel(cfg)
    _fill(tower, gen)
    path.mkdir(parents=True, exist_ok=True)
    cfg.save_pretrained(path)
    # Under "vision_model.", as in the released CLIP checkpoints (which transformers 4.x and 5.x both read).
    state = {k if k.startswith("vision_model.") else f"vision_model.{k}": v.contiguous()
             for k, v in tower.state_dict().items()}
    save_file(state, path / "model.safetensors",
              metadata={"format": "pt"})  # transformers 4.x reads only files that say so
    (path / "preprocessor_config.json").write_text(json.dumps({  # what transformers 4.x and 5.x both read
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": 336},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 336, "width": 336}, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))


def _fill(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Every parameter from `gen` (in name order), whatever the library's own init: weights N(0, 1/fan_in),
    biases N(0, 0.02^2), norm scales 1 + N(0, 0.1^2) (off identity, so the fixtures test them). The same
    seed gives the same checkpoint under any transformers version."""
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            z = torch.randn(p.shape, generator=gen)
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * z)
            elif p.dim() == 1:
                p.copy_(0.02 * z)
            else:
                p.copy_(z / p[0].numel() ** 0.5)
