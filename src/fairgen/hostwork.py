"""Host workers: saving and perceiving generated images in worker processes, one batch behind generation.

An audit (and fix's balanced set) generates a batch, then saves every new image as a PNG and perceives
it. On a GPU the generation leaves the host, and what is left there, PNG encoding and perception, is pure
Python and numpy on 64 x 64 images: it holds the GIL (two threads perceive slower than one), so one
thread caps an audit at a few hundred images per second (docs/fix.md, issue 26; benchmarks/audit_host.py). Here the
batch is cut into contiguous chunks, one per worker process; each process saves its chunk's images and,
where the backend allows it (`process_safe`), perceives them and returns their records. A backend that
is not process safe (a GPU one: CLIP, a judge, a plugin) perceives the whole batch in this process's
coordinating thread while the processes save.

The guarantees of one worker thread hold: a batch's records are appended in one write after every image
they name is on disk; an error in a worker stops the loop after the work in flight has finished (the
chunks that did finish are recorded); batches are recorded in the order they were made, and each chunk's
records in its order, so the records file is the one a single thread writes, byte for byte.

    FAIRGEN_HOST_WORKERS=N   worker processes (0: everything in one thread of the main process, as before);
                             unset: one per core but one, up to MAX_WORKERS (host_workers)
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import warnings
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from .distributed import local_world_size
from .perception.base import PerceptionBackend
from .store import RunStore, perception_record
from .types import FairgenError, Perception

ENV = "FAIRGEN_HOST_WORKERS"
MAX_WORKERS = 16  # beyond this the coordinating thread and the pipes, not the workers, set the pace
MIN_POOL_IMAGES = 512  # less work than this is done in one thread unless the pool is running (host_workers)

# (image or None, error or None, source file or None, generated now and not yet saved)
Loaded = tuple[Image.Image | None, str | None, str | None, bool]
# (prompt id, sample, image seed) of one planned image: its record's key and seed
Key = tuple[str, int, int]


def host_workers(images: int | None = None) -> int:
    """How many worker processes save and perceive: $FAIRGEN_HOST_WORKERS when set, else one per core this
    process may use (its CPU affinity) less one for the generating process, with the cores shared among
    the processes of a launch on this host (distributed.local_world_size), at most MAX_WORKERS. 0 runs the
    host work in one thread of the main process: the default on a single core, and for work of fewer
    than MIN_POOL_IMAGES `images` unless the pool is already running (starting it costs about a second,
    what one thread does with a few hundred images; once started it serves every later audit)."""
    given = os.environ.get(ENV)
    if given is not None and given.strip():
        try:
            workers = int(given)
        except ValueError:
            workers = -1
        if workers < 0:
            raise FairgenError(f"{ENV} must be a whole number >= 0 (got {given!r})")
        return workers
    workers = shared_workers(local_world_size())
    if images is not None and images < MIN_POOL_IMAGES and (_POOL is None or _POOL[0] != workers):
        return 0
    return workers


def shared_workers(sharing: int) -> int:
    """The default number of host workers of one of `sharing` processes on this host: its share of the cores
    this process may use (its CPU affinity), less one for its generating process, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(MAX_WORKERS, cores // max(1, sharing) - 1))


class Recorder:
    """Saves and perceives batches one behind the caller, appending their records to `store`.

    with Recorder(store, backend, on_recorded) as rec:
        for batch in ...:
            rec.put(keys, loaded)   # waits for the batch before, then hands this one over

    on_recorded(records): called (in the coordinating thread) after each batch's records are appended.
    before_save(): called before a batch's first file is written (a new run's provenance). shard: append
    to that process's shard file (store.append_records). workers: host_workers(images) when None, images
    being how many the caller will put.
    """

    def __init__(self, store: RunStore, backend: PerceptionBackend,
                 on_recorded: Callable[[list[dict[str, Any]]], None] | None = None,
                 before_save: Callable[[], None] | None = None, shard: int | None = None,
                 workers: int | None = None, images: int | None = None) -> None:
        self.store, self.backend, self.shard = store, backend, shard
        self.on_recorded, self.before_save = on_recorded, before_save
        self.workers = host_workers(images) if workers is None else workers
        if self.workers:
            try:
                _pool(self.workers)
            except (NotImplementedError, OSError, ImportError) as e:  # no working sem_open (some containers)
                warnings.warn(f"fairgen: no host worker processes here ({e}); saving and perceiving in one thread",
                              RuntimeWarning, stacklevel=2)
                self.workers = 0
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fairgen-host")
        self._pending: Future | None = None

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: Any) -> None:
        """Wait for the batch in flight. Raise its error unless another one is already on its way (the
        loop's own error then goes up, the batch having been recorded as far as it could be)."""
        try:
            if self._pending is not None:
                if exc[0] is None:
                    self._pending.result()
                else:
                    wait([self._pending])
        finally:
            self._thread.shutdown(wait=True)

    def put(self, keys: Sequence[Key], loaded: Sequence[Loaded]) -> None:
        """Record a batch: wait for the one before (its error is raised here), then save and perceive this
        one in the background."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()
        self._pending = self._thread.submit(self._finish, list(keys), list(loaded))

    def _finish(self, keys: list[Key], loaded: list[Loaded]) -> None:
        if self.before_save is not None:
            self.before_save()
        if self.workers == 0:
            records = _save_and_perceive(str(self.store.root), self.backend, keys, loaded)
            self._append(records)
            return
        safe = bool(getattr(self.backend, "process_safe", False))
        pool = _pool(self.workers)
        bounds = _chunks(len(keys), self.workers)
        try:
            futures = [pool.submit(_save_and_perceive, str(self.store.root), self.backend if safe else None,
                                   keys[a:b], loaded[a:b]) for a, b in bounds]
        except BrokenProcessPool:
            _discard(pool)
            raise
        error: BaseException | None = None
        seen: list[Perception] | None = None
        if not safe:  # perceived here, beside the workers' saving
            try:
                seen = self.backend.perceive([_rgb(im, fresh) for im, _, _, fresh in loaded if im is not None])
            except BaseException as e:  # raised once the saves in flight have finished
                error = e
        wait(futures)
        records: list[dict[str, Any]] = []
        for future in futures:
            e = future.exception()
            if e is not None:
                if isinstance(e, BrokenProcessPool):
                    _discard(pool)
                error = error or e
                continue
            records += future.result() if safe else []
        if not safe and error is None:
            records = _records(keys, loaded, seen)
        self._append(records)
        if error is not None:
            raise error

    def _append(self, records: list[dict[str, Any]]) -> None:
        self.store.append_records(records, shard=self.shard)
        if records and self.on_recorded is not None:
            self.on_recorded(records)


def _chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) of at most `parts` contiguous chunks of near-equal length covering range(n)."""
    parts = max(1, min(parts, n))
    edges = [n * i // parts for i in range(parts + 1)]
    return [(a, b) for a, b in zip(edges, edges[1:]) if b > a]


def _rgb(image: Image.Image, fresh: bool) -> Image.Image:
    """What perception reads: a new image as RGB (images read back from disk already are)."""
    return image.convert("RGB") if fresh else image


def _records(keys: Sequence[Key], loaded: Sequence[Loaded], seen: Sequence[Perception]) -> list[dict[str, Any]]:
    """One record per key, in order; an image that could not be read is a face=False record with its error."""
    found = iter(seen)
    return [perception_record(pid, k, s, next(found) if im is not None else Perception(face=False, error=err), src)
            for (pid, k, s), (im, err, src, _) in zip(keys, loaded)]


def _save_and_perceive(root: str, backend: PerceptionBackend | None, keys: Sequence[Key],
                       loaded: Sequence[Loaded]) -> list[dict[str, Any]] | None:
    """Save the new images of a chunk under the run directory `root`, then (with a backend) perceive them
    and return their records. Runs in a worker process, or inline with no workers."""
    store = RunStore(Path(root))
    for (pid, k, _), (im, _, _, fresh) in zip(keys, loaded):
        if fresh:
            store.save_image(im, pid, k)
    if backend is None:
        return None
    return _records(keys, loaded, backend.perceive([_rgb(im, fresh) for im, _, _, fresh in loaded if im is not None]))


# --- the worker processes -----------------------------------------------------------------------------
# One pool per process, kept between audits (a fix runs dozens; starting 15 interpreters costs a second or
# two each time). Started with `spawn`: a forked child of a process holding CUDA, OpenMP or threads may
# hang, and a spawned one imports only what its tasks need (PIL, numpy, scipy; no torch for `world`).
_POOL: tuple[int, ProcessPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ProcessPoolExecutor:
    """The process pool of `workers` processes, started on first use."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL[0] != workers:
            _POOL[1].shutdown(wait=False, cancel_futures=True)
            _POOL = None
        if _POOL is None:
            _POOL = (workers, ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=_start_worker))
        return _POOL[1]


def _discard(pool: ProcessPoolExecutor) -> None:
    """Forget a broken pool (a worker died: killed, out of memory); the next batch starts a new one."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is not None and _POOL[1] is pool:
            _POOL = None
    pool.shutdown(wait=False, cancel_futures=True)


def _start_worker() -> None:
    """A worker's set-up: one BLAS/OpenMP thread (the workers are the parallelism: numpy is not imported
    yet, so this holds), Ctrl-C left to the main process (which lets the work in flight finish), and an
    exit when the main process dies (a killed audit leaves no idle workers behind)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), name="fairgen-parent-watch", daemon=True).start()


def _exit_with(parent: Any) -> None:
    parent.join()
    os._exit(0)


__all__ = ["ENV", "MAX_WORKERS", "MIN_POOL_IMAGES", "Key", "Loaded", "Recorder", "host_workers", "shared_workers"]
