"""VILA-U on a GPU: fairgen's engine (static KV cache, the depth transformer inside the CUDA-graph step)
against a reference loop that follows upstream's algorithm (transformers' forward with its dynamic cache,
one LM step then the depth transformer's 4 guided draws per position), in the same run on the same card;
the engine's fraction of the memory roofline; and the fix's training throughput.

    python benchmarks/vila_u_generation.py --out runs/vila_u            # random init, 7B-256 shapes, bf16
    python benchmarks/vila_u_generation.py --shapes tiny --device cpu   # a smoke run of this script
    python benchmarks/vila_u_generation.py --buckets 64,32,16 --out runs/vila_u   # also batch 64 at buckets 32, 16
    python benchmarks/vila_u_generation.py --attention bucket,varlen,triton --generation-only --out runs/vila_u

Random-init weights at the official 7B-256 shapes (vila_u_checkpoint.SEVEN_B_256: LLaMA-2-7B, SigLIP-large
at 256 px, 16384 codes x depth 4; the depth transformer's and decoder's widths are stated assumptions),
built on the device (nothing read from disk). cfg 3.0 (upstream's), so every image is two rows; upstream's
sampling (temperature 1, top-k 900, top-p 0.96). Rows:
  generation   method (engine | reference), batch, attention (the engine's decode attention,
               models/kv_attention.py: "varlen", flash attention over each row's written columns, one graph
               per call; "triton", the same reads by a Triton kernel; "bucket", SDPA with a mask over
               length buckets; "requested" is what was asked, `attention` what ran), bucket (engine.BUCKET, bucket
               attention only: columns per length bucket, one graph capture each), images/s, ms per
               position (LM step + 4 depth draws),
               roofline = bytes a position must read (LM decoder weights, 4 passes of the depth
               transformer's weights, the projector, the KV cache at its mean fill) / measured copy
               bandwidth / measured time per position, engine_calls (how many engine calls the batch
               ran as: more than one where it exceeds what fits at call time). The largest batch is
               what one engine call takes after the other rows (largest_batch).
  decode       images/s of the RQ-VAE decoder alone (256x256), at the engine's batch of 64
  training     fix's BPO/SFT step: image_token_logprob (teacher-forced 256 x 4 codes) forward + backward
               through rank-8 LoRA on every LM linear, with gradient checkpointing as `fairgen fix`
               trains by default; images/s
Writes <out>/vila_u_generation.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import copy_bandwidth, sync  # noqa: E402

from fairgen.models import vila_u_checkpoint as layout  # noqa: E402
from fairgen.models import engine, kv_attention  # noqa: E402
from fairgen.models.engine import kv_bytes_per_image  # noqa: E402
from fairgen.models.vila_u import VilaUModel  # noqa: E402

PROMPT = "A photo of the face of a nurse, a person"


def param_bytes(*modules: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def position_bytes(model: VilaUModel, batch: int, prompt_len: int) -> float:
    """Bytes one position reads: the LM decoder (not its embedding table), the depth transformer once per
    depth, the projector, and every row's keys and values at the mean fill."""
    lm = model.language_model
    weights = param_bytes(lm) - param_bytes(lm.embed_tokens)
    weights += model.depth_codes * param_bytes(model.depth) + param_bytes(model.projector)
    mean_len = prompt_len + model.positions / 2
    return weights + batch * kv_bytes_per_image(lm, int(mean_len), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", choices=["7b-256", "tiny"], default="7b-256")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batches", default="64", help="comma-separated engine batches (the largest is added)")
    ap.add_argument("--buckets", default=str(engine.BUCKET),
                    help="comma-separated attention buckets (engine.BUCKET): the first for every row, the others "
                         "each for one more row at the first batch")
    ap.add_argument("--attention", default=engine.ATTENTION,
                    help="comma-separated decode attentions (engine.ATTENTION: auto, varlen, triton, bucket), each timed "
                         "at every batch and the largest in this run; the first is the one the reference and "
                         "the other stages compare with")
    ap.add_argument("--generation-only", action="store_true",
                    help="only the engine rows (no reference loop, decoding or training)")
    ap.add_argument("--reference-batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    first, *others = [int(b) for b in args.buckets.split(",")]
    engine.BUCKET = first
    attentions = args.attention.split(",")
    engine.ATTENTION = attentions[0]
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    shapes = layout.SEVEN_B_256 if args.shapes == "7b-256" else layout.TINY
    tokenizer = layout.tiny_tokenizer(layout.TEST_CORPUS)
    t0 = time.perf_counter()
    parts = layout.random_parts(shapes, tokenizer, seed=0, device=args.device, dtype=dtype)
    model = VilaUModel.from_parts(parts, f"vila-u:random-{args.shapes}")
    sync()
    out: dict = {"card": torch.cuda.get_device_name(0) if cuda else "cpu", "shapes": args.shapes,
                 "dtype": str(dtype), "build_s": round(time.perf_counter() - t0, 1), "cfg": 3.0,
                 "sampling": "temperature 1.0, top-k 900, top-p 0.96", "generation": []}
    bandwidth = copy_bandwidth(args.device, 4.0 if cuda else 0.25)
    out["copy_bandwidth_GBps"] = round(bandwidth / 1e9, 1)
    prompt_len = model._generation_rows([PROMPT], 3.0)[0].shape[1]

    def fits() -> int:  # the images one engine call takes now (generate_tokens' own rule, at call time)
        return model._engine_batch(prompt_len + model.positions, 2)[0]

    def used_attention() -> str:  # what a decoder made now runs (each only where it can, else bucket)
        width = engine._head_dim(model.language_model.config)
        return kv_attention.choose(engine.ATTENTION, model.device, model.dtype, width)

    def row(method: str, batch: int, seconds: float, calls: int = 1) -> dict:
        per_position = seconds / model.positions
        kind = used_attention() if method == "engine" else None
        r = {"method": method, "batch": batch, **({"attention": kind, "requested": engine.ATTENTION} if kind else {}),
             **({"bucket": engine.BUCKET} if kind == "bucket" else {}),
             "images_per_s": round(batch / seconds, 2),
             "ms_per_position": round(1e3 * per_position, 3),
             "roofline": round(position_bytes(model, batch, prompt_len) / bandwidth / per_position, 3),
             "engine_calls": calls}  # > 1: the batch did not fit one call; the roofline then counts the weights once
        print(json.dumps(r), flush=True)
        out["generation"].append(r)
        return r

    def save() -> None:  # after every stage: a run cut short keeps what it measured
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "vila_u_generation.json").write_text(json.dumps(out, indent=1))

    seeds = lambda b: list(range(b))  # noqa: E731
    try:
        model.generate_tokens([PROMPT] * 2, seeds(2))  # warm-up: kernels, cuBLAS workspaces, a first capture
    except Exception as e:  # noqa: BLE001  (record why graphs failed, then measure the eager engine)
        out["graphs_error"] = f"{type(e).__name__}: {e}"[:500]
        model.graphs = False
        model.generate_tokens([PROMPT] * 2, seeds(2))
    out["graphs"] = model.graphs

    def engine_row(b: int) -> None:
        calls = -(-b // fits())
        row("engine", b, timed(lambda: model.generate_tokens([PROMPT] * b, seeds(b))), calls)  # graphs captured inside
        save()

    batches = sorted({int(b) for b in args.batches.split(",")})
    for bucket in others:  # one row each at the first batch; a bucket's first call captures its graphs
        engine.BUCKET, engine.ATTENTION = bucket, "bucket"
        engine_row(batches[0])
    engine.BUCKET = first
    for attention in attentions:
        engine.ATTENTION = attention
        model.generate_tokens([PROMPT] * 2, seeds(2))  # this attention's kernels loaded before its rows
        for b in batches:
            engine_row(b)
    # After the rows above, as the timed call will see the memory (on a CPU: a small smoke batch).
    out["largest_batch"] = largest = fits() if cuda else 8
    if largest not in batches:
        for attention in attentions:
            engine.ATTENTION = attention
            engine_row(largest)
    out["attentions"] = {}  # what each requested attention ran as
    for attention in attentions:
        engine.ATTENTION = attention
        out["attentions"][attention] = used_attention()
    engine.ATTENTION = attentions[0]
    if cuda:
        out["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    save()
    if args.generation_only:
        print(json.dumps(out, indent=1))
        return
    b = args.reference_batch
    model.generate_tokens([PROMPT] * 2, seeds(2), engine=False)
    row("reference", b, timed(lambda: model.generate_tokens([PROMPT] * b, seeds(b), engine=False)))
    engine64 = next(r for r in out["generation"] if r["method"] == "engine" and r["batch"] == b
                    and r["attention"] == out["attentions"][attentions[0]] and r.get("bucket", first) == first)
    reference = out["generation"][-1]
    out["engine_over_reference"] = round(engine64["images_per_s"] / reference["images_per_s"], 2)
    save()

    codes = model.generate_tokens([PROMPT] * b, seeds(b))
    model.decode_tokens(codes[:2])
    out["decode_images_per_s"] = round(b / timed(lambda: model.decode_tokens(codes)), 1)

    # -- training throughput: the fix's step on this model -------------------------------------------------
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(target_modules=model.lora_targets, r=8, lora_alpha=16), model.root)
    for name, p in model.root.named_parameters():
        p.requires_grad_("lora_" in name)
    model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.llm.train()
    images = model.decode_tokens(codes[: args.train_batch])
    prompts = [PROMPT] * args.train_batch

    def step() -> None:
        model.image_token_logprob(prompts, images).mean().backward()

    step()
    seconds = min(timed(step) for _ in range(3))
    out["training"] = {"batch": args.train_batch, "images_per_s": round(args.train_batch / seconds, 2),
                       "s_per_step": round(seconds, 3), "lora_rank": 8, "gradient_checkpointing": True}
    if cuda:
        out["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(out, indent=1))
    save()


if __name__ == "__main__":
    main()
