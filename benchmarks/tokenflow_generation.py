"""TokenFlow text-to-image speed on a GPU: fairgen's per-scale KV cache against a reference loop that follows
upstream (the whole sequence recomputed at each of the 9 scales, no cache), same run, same card.

Random weights at the official T2I shapes (Llama-2-7B body with TokenFlow's additions, vocabulary 65537;
the CLIP-B tokenizer with the enhanced pixel decoder, 256 px), bf16, upstream's sampling: --cfg 7.5 (cfg=8.5
in fairgen's convention), top-k 600, top-p 0.6. Both paths share fairgen's kernels (SDPA attention, the same
sampler), so the ratio is the cache alone; upstream's own loop (eager attention, per-row Python) is slower
still. Rows: batch 64 and the largest batch the engine fits in one call (engine.auto_batch, all of the KV
cache); each reports images/s of generate() (codes and the 256 px decode) and of the codes alone, with the
peak memory. Prints and writes JSON.

    python benchmarks/tokenflow_generation.py --out runs/tokenflow_bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fairgen.models.engine import auto_batch
from fairgen.models.tokenflow import TokenFlowModel, TokenFlowT2I
from fairgen.models.tokenflow_vq import TokenFlowTokenizer

LM = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-5,
    "vocab_size": 65537,
    "max_position_embeddings": 4096,
}
CLIP = {"width": 768, "layers": 12, "patch": 16, "grid": 14}
PIXEL = {
    "enc_channels": [128, 128, 256, 256, 512],
    "enc_blocks": 2,
    "dec_channels": [256, 256, 512, 512, 1024],
    "dec_blocks": 4,
    "z": 256,
}
CODES = 32768
WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "face",
    "nurse",
    "doctor",
    "chef",
    "pilot",
    "teacher",
    "person",
    "lowres",
    "bad",
]


def text_tokenizer():
    """A word-level stand-in with Llama's specials, [PAD] and the 32768 code tokens (ids below 65537)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.add_special_tokens({"pad_token": "[PAD]"})
    fast.add_tokens([f"<vq_token_{i}>" for i in range(CODES)], special_tokens=True)
    return fast


def build(device: str) -> TokenFlowModel:
    from transformers import LlamaConfig

    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        vq = TokenFlowTokenizer(CLIP, PIXEL, CODES)
        lm = TokenFlowT2I(LlamaConfig(**LM), vq)
    torch.set_default_dtype(torch.float32)
    lm.model.reset_rope()
    return TokenFlowModel(
        lm.eval().requires_grad_(False),
        vq.eval().requires_grad_(False),
        text_tokenizer(),
        "tokenflow:random-official-shapes",
    )


def timed(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def row(model: TokenFlowModel, batch: int, engine: bool) -> dict:
    prompts = [f"a photo of the face of a {WORDS[5 + i % 5]}" for i in range(batch)]
    seeds = list(range(batch))
    torch.cuda.reset_peak_memory_stats()
    codes_s, codes = timed(lambda: model.generate_tokens(prompts, seeds, engine=engine))
    decode_s, _ = timed(lambda: model.decode_tokens(codes))
    return {
        "method": "engine (per-scale KV cache)" if engine else "reference (upstream loop, no cache)",
        "batch": batch,
        "codes_s": round(codes_s, 3),
        "decode_s": round(decode_s, 3),
        "images_per_s": round(batch / (codes_s + decode_s), 3),
        "codes_images_per_s": round(batch / codes_s, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batches", default="64", help="comma-separated batches (the largest is added)")
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    model = build("cuda")
    length = len(model.prompt_ids(["a"])[0]) + model.n_image_tokens - 1  # 131 + 816 positions
    largest = auto_batch(model.hf.model, length, twins=2)
    result = {
        "card": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "dtype": "bf16",
        "sampling": {"cfg_upstream": 7.5, "cfg": 8.5, "top_k": 600, "top_p": 0.6},
        "largest_batch": largest,
        "rows": [],
    }
    for engine in (True, False):  # warm-up: kernels, cuBLAS workspaces
        row(model, 2, engine)
    for batch in [*map(int, a.batches.split(",")), largest]:
        for engine in (True, False):
            r = row(model, batch, engine)
            result["rows"].append(r)
            print(json.dumps(r), flush=True)
    for batch in sorted({r["batch"] for r in result["rows"]}):
        e, ref = (
            next(r for r in result["rows"] if r["batch"] == batch and r["method"].startswith(m))
            for m in ("engine", "reference")
        )
        result[f"speedup_batch_{batch}"] = round(e["images_per_s"] / ref["images_per_s"], 2)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))


if __name__ == "__main__":
    main()
