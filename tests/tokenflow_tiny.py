"""A tiny random TokenFlow text-to-image checkpoint in the official layout, deterministic from a seed.

  <dir>/config.json             model_type llava_llama, TokenFlow-t2i's keys (mm_vision_tower, ...)
  <dir>/model.safetensors       model.* (Llama + qknorm + mm_projector + lvl_embed + pos_1LC), lm_head.weight
  <dir>/tokenizer.json, ...     a Llama-style (Metaspace BPE, BOS prepended) tokenizer + [PAD] + <vq_token_i>
  <dir>/tokenflow_tiny.pt       the tokenizer's state dict under "model" (torch.save), as the released .pt

The real architecture at small sizes: hidden 64, 4 heads, 2 layers; a 64-code dual codebook; CLIP width 128
(2 heads), patch 2, a 14x14 position table interpolated to 16x16 as the released one is; a 2-level VQGAN
(32 px images, a 16x16 latent); the T2I scales 1..16 (817 codes). Run as a script to write one:
    python tests/tokenflow_tiny.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

SEED = 0
CODES = 64
CORPUS = [
    "A photo of the face of a nurse, a person",
    "A photo of the face of a firefighter, a person",
    "a doctor, a chef, a teacher, a pilot <img> </img>",
    (
        "lowres, bad anatomy, bad hands, text, error, "
        "missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, "
        "jpeg artifacts, signature, watermark, username, blurry."
    ),
] * 3
LM = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
}
CLIP = {"width": 128, "layers": 2, "patch": 2, "grid": 14}
PIXEL = {"enc_channels": [32, 64], "enc_blocks": 1, "dec_channels": [32, 64], "dec_blocks": 1, "z": 32}


def text_tokenizer():
    """A Llama-style tokenizer: <unk> <s> </s>, Metaspace BPE with BOS prepended, then [PAD] and the codes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"pad_token": "[PAD]"})
    fast.add_tokens([f"<vq_token_{i}>" for i in range(CODES)], special_tokens=True)
    return fast


def write(path: str | Path, seed: int = SEED) -> Path:
    """Write the checkpoint into `path` (created) and return it; the same seed gives the same weights."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from fairgen.models.tokenflow import TokenFlowT2I
    from fairgen.models.tokenflow_vq import TokenFlowTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    vq = TokenFlowTokenizer(CLIP, PIXEL, CODES)
    for name, p in vq.named_parameters():  # defaults leave CLIP's tables at zero and norms at identity
        if name.startswith(("encoder_vqkd.", "quantize.")) or "norm" in name:
            p.data.copy_(
                torch.randn_like(p) * (0.1 if p.dim() == 1 else 0.5)
                + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )
    sd = {**vq.state_dict(), "quantize.codebook_used": torch.zeros(131072)}
    torch.save({"model": sd}, path / "tokenflow_tiny.pt")

    text = text_tokenizer()
    text.save_pretrained(path)
    # a class name by which transformers 4 (upstream's) and 5 (fairgen's) both load a tokenizer.json
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    spec = json.loads(
        (path / "tokenizer.json").read_text()
    )  # merges as "a b" strings: every tokenizers reads them
    spec["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    (path / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False))
    (path / "tokenizer_config.json").write_text(
        json.dumps({**tok_config, "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    config = {
        "architectures": ["LlavaLlamaForCausalLM"],
        "model_type": "llava_llama",
        **LM,
        "vocab_size": len(text),
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "hidden_act": "silu",
        "mm_hidden_size": 40,
        "mm_projector_type": "linear",
        "mm_vision_tower": "tokenflow_tiny.pt",
        "mm_vision_vq_type": "TOKEN_FLOW",
        "mm_use_vq_token": True,
        "vq_codebook_size": CODES,
        "tokenizer_model_max_length": 1024,
        "tokenizer_padding_side": "right",
        "use_cache": False,
        "torch_dtype": "float32",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "pretraining_tp": 1,
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))
    lm = TokenFlowT2I(LlamaConfig(**LM, vocab_size=len(text)), vq)
    for name, p in lm.named_parameters():
        scale = 0.1 if name.endswith("norm.weight") else 0.05
        p.data.copy_(torch.randn_like(p) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
    save_file(
        {k: v.contiguous() for k, v in lm.state_dict().items()},
        path / "model.safetensors",
        metadata={"format": "pt"},
    )  # what save_pretrained writes (transformers 4.43 requires it)
    return path


if __name__ == "__main__":
    print(write(sys.argv[1]))
