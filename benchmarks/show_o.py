"""Show-o generation throughput at the released shapes (random weights, bf16, one CUDA GPU).

For 512 px (1024 codes, upstream's 50 steps, w = 5) and 256 px (256 codes, 16 steps, w = 1.75), batch 64:
  fast       fairgen's path: text prefix through the LM once, each step only the image span against its
             cached keys / values, LM head sliced to the 8192 code rows
  reference  upstream's loop: every step the whole 129 + N + 2 token rows through the LM, full-vocabulary
             head, then the code columns (as Showo.t2i_generate)
images/s include MAGVIT-v2 decoding to PIL images. "mfu" is the fast path's LM matrix FLOPs (projections,
MLP, attention products, code head: counted below) per second of the whole unit (codes, decoding, PIL)
over the card's bf16 matmul rate measured here on an 8192^3 GEMM; "mfu_lm" the same FLOPs per second of
the code generation alone (the unit's two parts are timed separately, one after the other).
Run: python benchmarks/show_o.py [--out results.json]; --profile TOP prints the TOP kernels of one fast batch
per resolution by device time instead (not yet run on a GPU).
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import torch

from fairgen.models import magvit2
from fairgen.models import show_o as so
from fairgen.models import show_o_sampling as sampling

PROMPT = "A photo of the face of a nurse, a person"


def word_tokenizer(size: int = 50295):
    """A real tokenizer with Phi-1.5's vocabulary size (whitespace words; ids only matter for shapes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(PROMPT.replace(",", "").split()))
    vocab = {"<|endoftext|>": 0, **{w: i + 1 for i, w in enumerate(words)},
             **{f"w{i}": i for i in range(len(words) + 1, size)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    fast.add_special_tokens({"pad_token": "[PAD]"})
    fast.add_tokens(list(so.SPECIALS))
    return fast


def random_model(n_tokens: int, device: str = "cuda", small: bool = False,
                 dtype: torch.dtype = torch.bfloat16) -> so.ShowoModel:
    """A ShowoModel with Phi-1.5's architecture and MAGVIT-v2's, random weights, bf16 unless told (small: a
    2-layer LM and a narrow tokenizer, to smoke-test this script on a CPU)."""
    from transformers import PhiConfig, PhiForCausalLM

    cfg = {"_class_name": "Showo", "w_clip_vit": False, "vocab_size": 58498, "llm_vocab_size": 50295,
           "llm_model_path": "microsoft/phi-1_5", "codebook_size": 8192, "num_vq_tokens": n_tokens,
           "mask_token_id": 58497}
    phi = PhiConfig(vocab_size=58498)  # PhiConfig's defaults are Phi-1.5's architecture
    if small:
        phi = PhiConfig(vocab_size=58498, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4)
    phi._attn_implementation = "sdpa"
    narrow = magvit2.ConvStack(ch=32, ch_mult=[1, 1, 1, 1, 1], num_res_blocks=[1] * 5)
    with torch.device(device):
        lm = PhiForCausalLM(phi).to(dtype)
        vq = (magvit2.MagvitV2(narrow, narrow) if small else magvit2.MagvitV2()).to(dtype).eval()
    model = so.ShowoModel.__new__(so.ShowoModel)
    model.dtype = dtype
    model._build(cfg, lm, {}, word_tokenizer(), vq, torch.device(device))
    return model


def lm_flops(n_tokens: int, steps: int, batch: int, guided: bool) -> float:
    """Matrix FLOPs of the fast path for one batch: prefix once, then per step the image span."""
    h, ff, layers, codes, text = 2048, 8192, 24, 8192, so.MAX_TEXT + 1
    rows, span = batch * (2 if guided else 1), n_tokens + 2
    per_token = layers * 2 * (4 * h * h + 2 * h * ff)
    prefix = rows * text * per_token + rows * layers * 4 * text * text * h
    step = rows * span * per_token + rows * layers * 4 * span * (text + span) * h + rows * n_tokens * 2 * h * codes
    return prefix + steps * step


def gemm_rate(n: int = 8192) -> float:
    """The card's bf16 matmul rate (FLOP/s): best of 5 n^3 GEMMs after a warm-up."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    a @ a
    return 2 * n ** 3 / min(timed(functools.partial(torch.matmul, a, a)) for _ in range(5))


def images(model: so.ShowoModel, prompts: list[str], seeds: list[int], s: sampling.Settings, cache: bool) -> list:
    """One unit: generate a batch with upstream's settings and decode it to PIL images."""
    return model.decode_tokens(model.generate_tokens(prompts, seeds, cfg=s.cfg, steps=s.steps, cache=cache))


def timed_images(model: so.ShowoModel, prompts: list[str], seeds: list[int], s: sampling.Settings,
                 cache: bool) -> tuple[float, float]:
    """images() timed in its two parts: (seconds generating the codes, seconds decoding them to PIL)."""
    codes = []
    gen = timed(lambda: codes.append(model.generate_tokens(prompts, seeds, cfg=s.cfg, steps=s.steps,
                                                           cache=cache)))
    return gen, timed(lambda: model.decode_tokens(codes[0]))


def agreement(model: so.ShowoModel, batch: int = 8) -> dict[str, float]:
    """One step's code logits, fast path vs whole rows (the reference's forward), for `batch` prompts of
    four lengths and their empty twins (so the fast path's rows are regrouped and put back), half the
    codes masked: the largest |difference|, the largest |logit| and the share of positions whose most
    likely code is the same. bf16 on the card: the two differ by rounding only."""
    g = torch.Generator().manual_seed(0)
    words = PROMPT.split()
    prompts = [" ".join(words[:4 + 2 * (i % 4)]) for i in range(batch)]
    codes = torch.randint(0, model.codebook, (batch, model.n_tokens), generator=g)
    codes = torch.where(torch.rand(codes.shape, generator=g) < 0.5, model.mask_id, codes).to(model.device)
    text = model.guidance_text(prompts, 2.0)
    with torch.no_grad():
        fast = sampling.prefix_logits(model, text)(codes)
        ref = model.full_logits(text, codes.repeat(2, 1), whole_head=True)
    return {"max_abs_diff": float((fast - ref).abs().max()), "max_abs_logit": float(ref.abs().max()),
            "argmax_equal": float((fast.argmax(-1) == ref.argmax(-1)).float().mean())}


def timed(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


def profiled(model: so.ShowoModel, batch: int, s: sampling.Settings, top: int) -> None:
    """Print the kernels of one fast batch (generation and decoding) with the most device time."""
    from torch.profiler import ProfilerActivity, profile

    prompts, seeds = [PROMPT] * batch, list(range(batch))
    images(model, prompts[:2], seeds[:2], s, cache=True)  # warm-up
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        images(model, prompts, seeds, s, cache=True)
        torch.cuda.synchronize()
    events = sorted((e for e in prof.key_averages() if e.self_device_time_total > 0),
                    key=lambda e: e.self_device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events)
    print(f"{model.resolution} px, {s.steps} steps: {total / 1e6:.3f} s of device time", flush=True)
    for e in events[:top]:
        print(f"{e.self_device_time_total / 1e3:10.1f} ms {100 * e.self_device_time_total / total:5.1f} % "
              f"{e.count:7d}x  {e.key[:110]}", flush=True)


def smoke(batch: int) -> None:
    """The small model on the CPU, 2 steps, both paths, in float32 and in bf16. The fast path's codes must
    equal the reference's in float32; in bf16 the two round differently (the span's attention is split by
    padding, a different summation order), and the small random model's nearly flat code distributions turn
    one rounding step into a different draw, so there the share of equal codes is printed, not required."""
    prompts, seeds = [PROMPT] * batch, list(range(batch))
    agree = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = random_model(256, "cpu", small=True, dtype=dtype)
        fast = model.generate_tokens(prompts, seeds, steps=2)
        ref = model.generate_tokens(prompts, seeds, steps=2, cache=False)
        agree[str(dtype).removeprefix("torch.")] = float((fast == ref).float().mean())
        assert len(model.decode_tokens(fast)) == batch
        print(f"smoke: {dtype}, one step's logits, fast vs whole rows: {agreement(model)}", flush=True)
    print(f"smoke: share of codes equal, fast vs reference: {agree}", flush=True)
    if agree["float32"] != 1.0:
        raise SystemExit("smoke: the fast path's codes differ from the reference loop's in float32")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="show_o_bench.json")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 64; --smoke: 8)")
    ap.add_argument("--smoke", action="store_true",
                    help="CPU, small model, 2 steps: checks the script runs and fast == reference in float32")
    ap.add_argument("--profile", type=int, default=0, metavar="TOP",
                    help="instead of timing: the TOP kernels of one fast batch by device time, per resolution")
    args = ap.parse_args()
    if args.smoke:
        smoke(args.batch or 8)
        return
    args.batch = args.batch or 64
    if args.profile:
        for n_tokens, s in ((1024, sampling.DEFAULT_512), (256, sampling.DEFAULT_256)):
            profiled(random_model(n_tokens), args.batch, s, args.profile)
        return
    peak = gemm_rate()
    out = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "bf16_gemm_tflops": peak / 1e12,
           "batch": args.batch, "runs": []}
    print(out, flush=True)
    for n_tokens, s in ((1024, sampling.DEFAULT_512), (256, sampling.DEFAULT_256)):
        model = random_model(n_tokens)
        prompts, seeds = [PROMPT] * args.batch, list(range(args.batch))
        model.generate(prompts[:2], seeds[:2], steps=1)  # warm-up (kernels, allocator)
        model.generate_tokens(prompts[:2], seeds[:2], steps=1, cache=False)
        fast_codes, decode = timed_images(model, prompts, seeds, s, cache=True)
        torch.cuda.reset_peak_memory_stats()
        ref = sum(timed_images(model, prompts, seeds, s, cache=False))
        fast = fast_codes + decode
        flops = lm_flops(n_tokens, s.steps, args.batch, s.cfg != 1.0)
        run = {"px": model.resolution, "codes": n_tokens, "steps": s.steps, "cfg": s.cfg,
               "fast_s": fast, "fast_codes_s": fast_codes, "decode_s": decode, "reference_s": ref,
               "fast_images_per_s": args.batch / fast, "reference_images_per_s": args.batch / ref,
               "speedup": ref / fast, "fast_lm_tflops": flops / fast / 1e12, "mfu": flops / fast / peak,
               "mfu_lm": flops / fast_codes / peak,
               "reference_peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30,
               "fast_vs_whole_rows_logits": agreement(model)}
        out["runs"].append(run)
        print(run, flush=True)
        with open(args.out, "w") as f:  # after each run: a cut-off job keeps what it measured
            json.dump(out, f, indent=2)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
