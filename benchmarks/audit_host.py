"""Where a fairgen-tiny audit's time goes on the host, and how far the host workers (src/fairgen/hostwork.py)
take it: images per second on this machine, every comparison measured in the same run.

    stages     generating the codes, decoding them to pixels, PNG encoding, world perception (one thread)
    reader     the world reader one image at a time (world.read) against stacks (world.read_batch),
               alternating on the same images, CPU ms per image, and whether every Perception is equal
    threads    PNG + perception in k threads against k processes (does the work release the GIL?)
    host       the audit's host path alone (hostwork.Recorder: save + perceive, one batch in flight) with
               one thread (FAIRGEN_HOST_WORKERS=0, the audit before host workers), one process, N processes
    audit      the whole `fairgen.audit` of tiny (occupations:test, perception world) at 0 and N workers
    balanced   fix's balanced set (world renders, perceived) at 0 and N workers, and the renderer alone

On a GPU the first two stages run on the device and the host path bounds the audit (docs/fix.md, issue 26).

    python benchmarks/audit_host.py [--device cpu|cuda] [--batch 256] [--workers N] [--parts stages,host,...]
    python benchmarks/audit_host.py --device cuda --batch 256 --audit-images 32     # on the GPU machine

Heavy imports live in main(): the worker processes are spawned and import this file again.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time
from pathlib import Path

PARTS = ("stages", "reader", "threads", "host", "audit", "balanced")


def main() -> None:
    import torch

    from fairgen import models
    from fairgen.hostwork import host_workers
    from fairgen.suites import load as load_suite

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=256, help="images per batch (generate call)")
    ap.add_argument("--images", type=int, default=1024, help="images pushed through the host path")
    ap.add_argument("--workers", type=int, default=None, help="N (default: hostwork.host_workers() here)")
    ap.add_argument("--audit-images", type=int, default=32, help="images per prompt of occupations:test")
    ap.add_argument("--balanced-prompts", type=int, default=200, help="training prompts of the balanced set")
    ap.add_argument("--repeats", type=int, default=2, help="timed repeats of each host measurement (best kept)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.pop("FAIRGEN_HOST_WORKERS", None)
    n = args.workers if args.workers is not None else host_workers()
    parts = [p for p in args.parts.split(",") if p]
    report = {"device": args.device, "card": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "cores": len(os.sched_getaffinity(0)), "workers": n, "batch": args.batch,
              "torch_threads": torch.get_num_threads(), "load_before": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    model = models.load("tiny", device=args.device)
    prompts = load_suite("occupations:test")
    batch = [prompts[i % len(prompts)] for i in range(args.batch)]
    with tempfile.TemporaryDirectory(prefix="audit-host-") as tmp:
        images = _images(model, prompts, args.images, args.batch)
        if "stages" in parts:
            report["stages"] = _stages(model, batch, args.device)
        if "reader" in parts:
            report["reader"] = _reader(images, args.repeats)
        if "threads" in parts:
            report["threads"] = _threads(images[: args.batch], max(2, n))
        if "host" in parts:
            report["host"] = _host(images, args.batch, [0, 1, n], args.repeats, Path(tmp) / "host")
        if "audit" in parts:
            report["audit"] = _audit(model, prompts, args, n, Path(tmp) / "audit")
        if "balanced" in parts:
            report["balanced"] = _balanced(args, n, Path(tmp) / "balanced")
    report["load_after"] = os.getloadavg()
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


def _images(model, prompts, count: int, batch: int) -> list:
    """`count` tiny images of the suite's prompts in turn (what an audit hands to its host path)."""
    out = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        out += model.generate([prompts[(start + i) % len(prompts)] for i in range(size)],
                              list(range(start, start + size)))
    return out


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1)


def _stages(model, batch: list, device: str) -> dict:
    """Images per second of each stage of one batch, one thread each."""
    import torch

    from fairgen import perception

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    seeds = list(range(len(batch)))
    model.generate_tokens(batch[:8], seeds[:8])  # warm-up
    sync()
    t = time.perf_counter()
    codes = model.generate_tokens(batch, seeds)
    sync()
    rate = {"generate": _rate(len(batch), time.perf_counter() - t)}
    t = time.perf_counter()
    images = model.decode_tokens(codes)
    sync()
    rate["decode"] = _rate(len(batch), time.perf_counter() - t)
    t = time.perf_counter()
    for image in images:
        image.save(io.BytesIO(), format="PNG")
    rate["png"] = _rate(len(batch), time.perf_counter() - t)
    t = time.perf_counter()
    perception.load("world").perceive(images)
    rate["perceive"] = _rate(len(batch), time.perf_counter() - t)
    rate["host_bound_one_thread"] = round(1 / (1 / rate["png"] + 1 / rate["perceive"]), 1)
    return rate


def _reader(images: list, repeats: int) -> dict:
    """CPU time per image of world.read (one image at a time, as the world backend read before
    read_batch) and of world.read_batch over the same images, alternating, best of `repeats` each."""
    from fairgen.world import read, read_batch

    best = {"read": float("inf"), "read_batch": float("inf")}
    equal = True
    for _ in range(repeats):
        for name in best:
            cpu = time.process_time()
            seen = [read(im) for im in images] if name == "read" else read_batch(images)
            best[name] = min(best[name], 1000 * (time.process_time() - cpu) / len(images))
            if name == "read":
                single = seen
            else:
                equal = equal and seen == single
    return {"images": len(images), "read_cpu_ms_per_image": round(best["read"], 3),
            "read_batch_cpu_ms_per_image": round(best["read_batch"], 3),
            "speedup": round(best["read"] / best["read_batch"], 2), "equal": equal}


def _png_and_perceive(images: list) -> int:
    """The host path's work on images, without the files: PNG encoding and world perception."""
    from fairgen import perception

    for image in images:
        image.save(io.BytesIO(), format="PNG")
    return len(perception.load("world").perceive(images))


def _threads(images: list, k: int) -> dict:
    """PNG + perception of the same images in 1 and k threads, and in 1 and k processes (spawned, started
    before timing): if the work held no GIL, k threads would scale as k processes do."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    out = {}
    for kind in ("thread", "process"):
        for workers in (1, k):
            chunks = [images[i::workers] for i in range(workers)]
            if kind == "thread":
                ex = ThreadPoolExecutor(workers)
            else:
                ex = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
            with ex:
                list(ex.map(_png_and_perceive, [images[:2]] * workers))  # start (and import) first
                t = time.perf_counter()
                list(ex.map(_png_and_perceive, chunks))
                out[f"{kind}_{workers}"] = _rate(len(images), time.perf_counter() - t)
    out["thread_scaling"] = round(out[f"thread_{k}"] / out["thread_1"], 2)
    out["process_scaling"] = round(out[f"process_{k}"] / out["process_1"], 2)
    return out


def _host(images: list, batch: int, counts: list[int], repeats: int, root: Path) -> dict:
    """Images per second of hostwork.Recorder (save as PNG + perceive + append records) over the images,
    fed as fast as it takes them, at each worker count; best of `repeats` after one untimed run (which
    starts the worker processes). On a machine whose cores are busy with other work the rates cannot
    show the scaling; the main process's CPU time per image still shows what the workers take off it."""
    from fairgen import perception
    from fairgen.hostwork import Recorder
    from fairgen.store import RunStore

    backend = perception.load("world")
    keys = [(f"p{i % 50}", i // 50, i) for i in range(len(images))]
    loaded = [(im, None, None, True) for im in images]
    out = {}
    for workers in dict.fromkeys(counts):
        best, main_ms, started = 0.0, float("inf"), time.perf_counter()
        for run in range(repeats + 1):
            store = RunStore.open(root / f"w{workers}-{run}", {"benchmark": "audit_host"}, {})
            size = batch if run else min(batch, len(images))
            count = len(images) if run else size
            t, cpu = time.perf_counter(), time.process_time()
            with Recorder(store, backend, workers=workers) as recorder:
                for start in range(0, count, size):
                    recorder.put(keys[start:start + size], loaded[start:start + size])
            if run:
                best = max(best, count / (time.perf_counter() - t))
                main_ms = min(main_ms, 1000 * (time.process_time() - cpu) / count)
            else:
                out[f"start_s_{workers}"] = round(time.perf_counter() - started, 2)
        out[f"workers_{workers}"] = round(best, 1)
        # CPU time of this process (all its threads) per image: with workers, what is left serial here
        # (pickling images to the workers, records back, appending them), so 1000 / it bounds the path
        out[f"main_cpu_ms_per_image_{workers}"] = round(main_ms, 3)
    top = counts[-1]
    out[f"ratio_{top}_over_0"] = round(out[f"workers_{top}"] / out["workers_0"], 2)
    return out


def _audit(model, prompts: list, args, n: int, root: Path) -> dict:
    """The whole audit at 0 and N workers (a short warm-up audit first: CUDA graphs, pool start)."""
    import fairgen

    out = {"images": len(prompts) * args.audit_images}
    for label, workers, per_prompt in (("warmup", n, 2), ("workers_0", 0, args.audit_images),
                                       (f"workers_{n}", n, args.audit_images)):
        os.environ["FAIRGEN_HOST_WORKERS"] = str(workers)
        t = time.perf_counter()
        fairgen.audit(model, suite=prompts, images_per_prompt=per_prompt, batch_size=args.batch,
                      perception_backend="world", seed=1, out=root / label)
        if label != "warmup":
            out[label] = _rate(len(prompts) * per_prompt, time.perf_counter() - t)
    os.environ.pop("FAIRGEN_HOST_WORKERS")
    out[f"ratio_{n}_over_0"] = round(out[f"workers_{n}"] / out["workers_0"], 2)
    return out


def _balanced(args, n: int, root: Path) -> dict:
    """fix's balanced set of gender (world source, perceived, concept checked) at 0 and N workers, and
    the world renderer's own rate (it renders in the main process)."""
    from fairgen import models, perception, suites
    from fairgen.fix.data import build, requests, spread

    prompts = spread(suites.load("occupations:train"), args.balanced_prompts)
    source, backend = models.load("world"), perception.load("world")
    explicit = [r.explicit for r in requests(prompts, ["gender"])] * 4
    t = time.perf_counter()
    source.generate(explicit, list(range(len(explicit))))
    out = {"images": len(explicit), "render_only": _rate(len(explicit), time.perf_counter() - t)}
    for workers in (0, n):
        os.environ["FAIRGEN_HOST_WORKERS"] = str(workers)
        t = time.perf_counter()
        build(prompts, ["gender"], source, backend, root / f"w{workers}", images_per_group=4, seed=1,
              batch_size=args.batch, check_concept=True)
        out[f"workers_{workers}"] = _rate(len(explicit), time.perf_counter() - t)
    os.environ.pop("FAIRGEN_HOST_WORKERS")
    out[f"ratio_{n}_over_0"] = round(out[f"workers_{n}"] / out["workers_0"], 2)
    return out


if __name__ == "__main__":
    main()
