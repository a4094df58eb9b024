"""Image generation speed on a GPU: transformers' `generate(generation_mode="image")` vs fairgen's engine
(models/engine.py), on random-init Janus-Pro-1B and -7B shapes (benchmarks/configs/), in the same run on
the same card, and how close each gets to the memory-bandwidth roofline.

    python benchmarks/generation.py --config benchmarks/configs/janus_pro_1b.json --out runs/gen1b
    python benchmarks/generation.py --config benchmarks/configs/janus_pro_7b.json --out runs/gen7b --audit

Per method and batch (1, 16, 64 and the engine's largest, auto_batch): images/s, ms per token step, and
roofline = (bytes a step must read: the weights + the filled KV cache, at the mean fill) / the card's
measured copy bandwidth, divided by the measured step time. transformers' baseline runs batches 1, 16
and 64 only (at its speed a larger batch adds nothing). Guidance 5 (Janus-Pro's default): every image
is two rows. --audit also times `fairgen audit` of 5 prompts x 160 images through the engine (the mode,
eager or graphs, that was faster at the audit's batch: 800 images cut in near-equal batches of at most
160, or of the largest if smaller), with perception `world` (random weights draw no faces: the timing is
the point), against the bare engine at that batch. Each engine row notes how many engine calls it ran
as (more than one where the batch exceeds what fits at call time); the largest batch is taken after the
other rows, as what fits then. checkpoint_hash_wait_s: how long the model's provenance (the checkpoint's
sha256, hashed in the background from load on) still took right after the load, i.e. what an audit of a
new checkpoint waits before its first image; the audit timed here finds the digest done (and a later
audit of the same files finds it in the user's cache).
Needs transformers >= 5.23 (5.17's Janus image generation crashes). Writes <out>/generation.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from janus_smoke import build_checkpoint  # noqa: E402  (the random-init checkpoint builder)

from fairgen import models  # noqa: E402
from fairgen.models.engine import even_chunk, kv_bytes_per_image  # noqa: E402

PROMPT = "A photo of the face of a nurse, a person"
CFG = 5.0


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def copy_bandwidth(device: str, gib: float = 4.0) -> float:
    """The device's copy bandwidth, bytes/s: (read + written) / time of a device-to-device copy, best of 5."""
    src = torch.empty(int(gib * 2**30), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        sync()
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        best = min(best, time.perf_counter() - start)
    del src, dst
    return 2 * gib * 2**30 / best


def kernel_bench_setup(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, bool, torch.dtype, float]:
    """The shared tail of the single-kernel benchmarks: --device and --out, then (args, on CUDA?, bf16 on
    CUDA else fp32, the device's copy bandwidth in bytes/s)."""
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    return args, cuda, torch.bfloat16 if cuda else torch.float32, copy_bandwidth(args.device, 4.0 if cuda else 0.25)


def step_bytes(model, batch: int, prompt_len: int) -> float:
    """Bytes one token step reads at the mean cache fill: the LM weights, the generation head and
    embeddings, and every row's keys and values (prompt + half the image tokens)."""
    parts = (model.language_model, model.hf.model.generation_head, model.hf.model.generation_embeddings,
             model.hf.model.generation_aligner)
    weights = sum(p.numel() * p.element_size() for part in parts for p in part.parameters())
    fill = prompt_len + model.n_image_tokens / 2
    return weights + batch * kv_bytes_per_image(model.language_model, int(fill), 2)


def timed(fn, repeats: int, warm_up: bool = True) -> float:
    """Mean seconds of `repeats` calls of fn, after one untimed call (warm-up and, for graphs, capture)."""
    if warm_up:
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path(__file__).parent / "configs" / "janus_pro_1b.json")
    parser.add_argument("--out", type=Path, default=Path("runs/generation"))
    parser.add_argument("--batches", default="1,16,64", help="batches of both methods (then the largest)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--audit", action="store_true", help="also time an audit of 5 prompts x 160 images")
    parser.add_argument("--modes", default="transformers,eager,graphs",
                        help="methods to time: transformers' generate and the engine's modes (graphs: CUDA only)")
    parser.add_argument("--device", default="cuda", help="cuda; cpu only to smoke-test this script (fp32, no graphs)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cuda = args.device == "cuda"
    dtype = "bf16" if cuda else "fp32"
    report: dict = {"config": args.config.name, "gpu": torch.cuda.get_device_name(0) if cuda else None,
                    "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    import transformers

    report["transformers"] = transformers.__version__
    report["copy_bandwidth_gb_s"] = copy_bandwidth(args.device, 4.0 if cuda else 0.25) / 1e9
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_checkpoint(args.config, Path(tmp) / "janus", getattr(torch, {"bf16": "bfloat16"}.get(
            dtype, "float32")), args.device)
        model = models.load(f"janus:{checkpoint}", device=args.device, dtype=dtype)
        report["checkpoint_hash_wait_s"] = timed(model.provenance, 1, warm_up=False)  # see the docstring
        ids, mask = model._generation_inputs([PROMPT])
        prompt_len = ids.shape[1]

        def fits() -> int:  # the batch generate_tokens runs in one engine call now (at most 4 on a CPU)
            batch = model._engine_batch(prompt_len + model.n_image_tokens, 2)[0]
            return batch if cuda else min(batch, 4)

        batches = [int(b) for b in args.batches.split(",")]
        rows = []
        report["rows"] = rows

        def save() -> None:
            (args.out / "generation.json").write_text(json.dumps(report, indent=1) + "\n")

        def record(method: str, batch: int, seconds: float, fits: int | None = None) -> None:
            ms_step = 1000 * seconds / model.n_image_tokens
            ideal = step_bytes(model, batch, prompt_len) / (report["copy_bandwidth_gb_s"] * 1e9)
            row = {"method": method, "batch": batch, "images_per_s": batch / seconds, "ms_per_step": ms_step,
                   "roofline": 1000 * ideal / ms_step}
            if fits is not None:  # a batch over what fits at call time runs as several engine calls
                row["engine_calls"] = -(-batch // fits)
            rows.append(row)
            print(json.dumps(row), flush=True)
            save()  # after every row: a later crash or timeout keeps what was measured

        model.hf.generation_config.generation_kwargs = {"boi_token_id": model.boi_id}
        methods = args.modes.split(",")
        for n, batch in enumerate(batches if "transformers" in methods else []):  # one warm-up: nothing to capture
            i, m = model._generation_inputs([PROMPT] * batch)
            record("transformers", batch, timed(lambda: model.hf.generate(
                input_ids=i, attention_mask=m, generation_mode="image", do_sample=True, guidance_scale=CFG),
                1, warm_up=n == 0))
        engine_modes = [m for m in methods if m == "eager" or (cuda and m == "graphs")]

        def engine_row(batch: int, graphs: bool) -> None:
            def run() -> torch.Tensor:
                return model.generate_tokens([PROMPT] * batch, list(range(batch)), cfg=CFG, graphs=graphs)

            run()  # warm-up (kernel loading, autotuning): `fits` after it is what the timed calls see
            record("engine+graphs" if graphs else "engine", batch, timed(run, args.repeats, warm_up=False), fits())

        audit_batch = None
        for graphs in (m == "graphs" for m in engine_modes):
            for batch in sorted(set(batches)):
                engine_row(batch, graphs)
            report["largest_batch"] = largest = fits()  # measured after the rows above: nothing left to load
            engine_row(largest, graphs)
            audit_batch = even_chunk(800, min(largest, 160))  # the audit's batch: 800 images in near-equal batches
            if args.audit and audit_batch not in {*batches, largest}:
                engine_row(audit_batch, graphs)
        if args.audit:  # through the faster engine mode, against the bare engine at the audit's batch
            from fairgen import audit, suites

            best = max((r for r in rows if r["batch"] == audit_batch and r["method"] != "transformers"),
                       key=lambda r: r["images_per_s"])
            model.graphs = best["method"] == "engine+graphs"
            report["audit_engine"] = best
            shutil.rmtree(args.out / "audit", ignore_errors=True)  # a new random checkpoint: never a resume
            start = time.perf_counter()
            audit(model, suite=suites.load("occupations:test")[:5], images_per_prompt=160, perception_backend="world",
                  sampling={"cfg": CFG}, out=args.out / "audit", batch_size=audit_batch)
            report["audit_images_per_s"] = 800 / (time.perf_counter() - start)
            report["audit_vs_engine"] = report["audit_images_per_s"] / best["images_per_s"]
            save()
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
