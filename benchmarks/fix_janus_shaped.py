"""Throughput of `fairgen fix` on a Janus-shaped model: random weights of Janus-Pro-1B's (or -7B's) shape,
built offline, through the whole pipeline (balanced set from the world renderer, audits, LoRA SFT + BPO,
after audits). Random weights draw no faces, so the rd numbers mean nothing; the timings are the point.

    python benchmarks/fix_janus_shaped.py --shape 1b --out runs/janus1b --device cuda
    accelerate launch --multi_gpu --num_processes 2 benchmarks/fix_janus_shaped.py --shape 7b --out runs/j7b

Prints (rank 0) and writes <out>/throughput.json: seconds per training step, training images per second,
audit images per second, peak GPU memory. The tokenizer is the small byte-level BPE of the tests
(tests/test_models_checkpoints.py); the language model keeps the real vocabulary size (102 400).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' checkpoint builders

# (hidden, layers, intermediate, heads) of the Llama language model: Janus-Pro-1B and -7B; `test` is tiny.
SHAPES = {"1b": (2048, 24, 5632, 16), "7b": (4096, 30, 11008, 32), "test": (32, 2, 64, 4)}


def build(path: Path, shape: str, device: str) -> Path:
    """A Janus checkpoint of the shape, random weights in bf16 (initialised on `device`), with the tests'
    tokenizer and processor."""
    from transformers import (JanusConfig, JanusForConditionalGeneration, JanusImageProcessorPil, JanusProcessor,
                              JanusVisionConfig, JanusVQVAEConfig, LlamaConfig, PreTrainedTokenizerFast)

    from test_models_checkpoints import JANUS_CHAT_TEMPLATE, JANUS_SPECIALS, byte_level_bpe

    if (path / "config.json").is_file():
        return path
    tmp = path.with_name(path.name + ".tmp")  # written whole, then renamed: other processes wait for it
    s = JANUS_SPECIALS
    specials = [s["bos"], s["eos"], s["pad"], s["image"], s["boi"], s["eoi"], "<|User|>", "<|Assistant|>"]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=byte_level_bpe(specials, bos=s["bos"]), bos_token=s["bos"], eos_token=s["eos"],
        pad_token=s["pad"], extra_special_tokens={"image_token": s["image"], "boi_token": s["boi"], "eoi_token": s["eoi"]})
    hidden, layers, inter, heads = SHAPES[shape]
    small = shape == "test"
    text = LlamaConfig(vocab_size=len(tokenizer) if small else 102400, hidden_size=hidden, intermediate_size=inter,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                       max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if small:
        vision = JanusVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                   patch_size=8, projection_dim=hidden, num_image_tokens=16, mlp_ratio=2.0)
        vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=64, latent_channels=32, base_channels=32,
                              channel_multiplier=[1, 1, 2, 2], num_res_blocks=1, projection_dim=hidden,
                              image_token_embed_dim=hidden)
        size, tokens = 32, 16
    else:  # SigLIP-L/16 at 384 px (576 patches), VQ-16 with 16 384 codes (24 x 24 codes)
        vision = JanusVisionConfig(projection_dim=hidden)
        vq = JanusVQVAEConfig(projection_dim=hidden, image_token_embed_dim=hidden)
        size, tokens = 384, 576
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids(s["image"]))
    torch.manual_seed(0)
    with torch.device(device):  # initialise where it runs: a CPU init of 2B parameters takes minutes
        model = JanusForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config.guidance_scale, model.generation_config.temperature = 5.0, 1.0
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    processor = JanusProcessor(JanusImageProcessorPil(size={"height": size, "width": size}), tokenizer,
                               chat_template=JANUS_CHAT_TEMPLATE, use_default_system_prompt=True,
                               num_image_tokens=tokens)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--device", default=None, help="default: cuda when present")
    parser.add_argument("--dtype", default=None, help="default: bf16 on GPU")
    parser.add_argument("--train-prompts", type=int, default=16)
    parser.add_argument("--sft-steps", type=int, default=10)
    parser.add_argument("--bpo-steps", type=int, default=20)
    parser.add_argument("--units-per-batch", type=int, default=8)
    parser.add_argument("--images-per-prompt", type=int, default=8, help="test-suite audit images per prompt")
    parser.add_argument("--batch-size", type=int, default=16, help="images per generation batch")
    parser.add_argument("--no-gradient-checkpointing", action="store_true")
    args = parser.parse_args()

    from fairgen.distributed import launch_rank
    from fairgen.fix import FixConfig, fix

    checkpoint = args.out / "checkpoint"
    if launch_rank() == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        build(checkpoint, args.shape, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    while not (checkpoint / "config.json").is_file():
        time.sleep(2)  # the other processes wait for rank 0's checkpoint
    spans: dict[str, list[float]] = {}

    def clock(task: str, done: int, total: int) -> None:
        now = time.time()
        span = spans.setdefault(task, [now, now, 0])
        span[1], span[2] = now, done

    config = FixConfig(model=f"janus:{checkpoint}", train_suite="occupations:train", test_suite="occupations:test",
                       attributes=("gender",), method="bpo", data_source="world", perception="world",
                       images_per_group=2, train_prompts=args.train_prompts, sft_steps=args.sft_steps,
                       bpo_steps=args.bpo_steps, lr=1e-4, units_per_batch=args.units_per_batch,
                       images_per_prompt=args.images_per_prompt, explicit_concepts=1, explicit_images=4,
                       check_suites=(), understanding_images=8, batch_size=args.batch_size, device=args.device,
                       dtype=args.dtype, gradient_checkpointing=not args.no_gradient_checkpointing)
    started = time.time()
    fix(config, args.out / "fix", progress=clock)
    if launch_rank() != 0:
        return
    log = [json.loads(line) for line in (args.out / "fix" / "train_log.jsonl").read_text().splitlines()]
    steps = args.sft_steps + args.bpo_steps
    train_s = log[-1]["elapsed_s"]
    result = {
        "shape": args.shape, "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "processes": int(os.environ.get("WORLD_SIZE", "1")),
        "train_steps": steps, "train_s": train_s, "s_per_step": train_s / steps,
        "train_images_per_s": steps * args.units_per_batch * 2 / train_s,  # units x 2 gender groups per step
        "audit_images_per_s": {task: span[2] / max(span[1] - span[0], 1e-9) for task, span in spans.items()
                               if "test suite" in task},
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "wall_s": time.time() - started,
    }
    print(json.dumps(result, indent=1))
    (args.out / "throughput.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
