"""audit: plan → generate → perceive → measure, resumable (docs/architecture.md, "Stages and data flow").

Every image has a seed derived from (run seed, prompt id, sample index), is written atomically, and is
perceived once; a re-run of the same command skips what is on disk, so a run killed at any moment loses
nothing and finishes with the same results as an uninterrupted one.

Started as several processes (`accelerate launch`, `torchrun`; docs/distributed.md), each takes every
world-th image of what is left and writes its own records; the main process (rank 0) then merges them and
measures, so the run directory is the one a single process writes.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from . import models, perception, suites
from .config import AuditConfig
from .distributed import launch_rank, processes
from .hostwork import Loaded, Recorder, host_workers
from .inputs import check_run
from .models.protocols import ImageGenerator, ImageSource, Model as UnifiedModel
from .perception.base import PerceptionBackend
from .store import MANIFEST, RunStore, derive_seed, in_background
from .types import FairgenError, Prompt

if TYPE_CHECKING:
    import pandas as pd

    from .calibrate import Calibration
# numpy / scipy / pandas / matplotlib are imported where used, so `import fairgen` stays light.

BOOTSTRAP_REPLICATES = 1000


@dataclass
class AuditResult:
    """What an audit measured. `results` is results.json's content; `run_dir` where it lies."""

    results: dict[str, Any]
    run_dir: Path | None = None

    @property
    def summary(self) -> dict[str, Any]:
        return self.results["summary"]

    def to_frame(self) -> pd.DataFrame:
        """One row per prompt: counts, shares, rd with ci95 and noise floor, kl, entropy, fidelity."""
        from .metrics import results_frame

        return results_frame(self.results)

    @classmethod
    def load(cls, run_dir: str | Path) -> "AuditResult":
        path = Path(run_dir) / "results.json"
        if not path.exists():
            raise FairgenError(f"{run_dir} holds no results.json (not a finished fairgen run)")
        return cls(json.loads(path.read_text()), Path(run_dir))


def audit(
    model: str | UnifiedModel = AuditConfig.model,
    suite: str | Sequence[Prompt] = AuditConfig.suite,
    images_per_prompt: int = AuditConfig.images_per_prompt,
    seed: int = AuditConfig.seed,
    out: str | Path = "runs/audit",
    perception_backend: str | PerceptionBackend | None = AuditConfig.perception,
    world_spec: str | Path | None = AuditConfig.world_spec,
    sampling: Mapping[str, Any] | None = None,
    batch_size: int = AuditConfig.batch_size,
    progress: Callable[[int, int], None] | None = None,
    calibration: str | Path | None = AuditConfig.calibration,
    adapter: str | Path | None = AuditConfig.adapter,
    model_options: Mapping[str, Any] | None = None,
    device: str | None = AuditConfig.device,
    target: str | Path = AuditConfig.target,
    quality: str | Path | None = AuditConfig.quality,
) -> AuditResult:
    """Audit a model's skew over a suite; writes the run directory `out` and returns its results.

    The settings are config.AuditConfig's (defaults and meaning there); a loaded model, a list of prompts
    and a perception backend object are accepted from Python. progress: called as progress(done, total)
    after each batch. A loaded model with an adapter applied (models.load(..., adapter=DIR)) records its own
    in the manifest; the loaded model's provenance, in the manifest, records its dtype.
    """
    c = audit_config(model=model, suite=suite, images_per_prompt=images_per_prompt, seed=seed,
                     perception=perception_backend, world_spec=world_spec, sampling=sampling, batch_size=batch_size,
                     calibration=calibration, adapter=adapter, model_options=model_options, device=device,
                     target=str(target), quality=None if quality is None else str(quality))
    return run(c, out, progress)


def audit_config(**settings: Any) -> AuditConfig:
    """An AuditConfig from audit()'s arguments (None where a mapping is expected: empty)."""
    for key in ("sampling", "model_options"):
        settings[key] = dict(settings.get(key) or {})
    return AuditConfig(**settings)


def run(c: AuditConfig, out: str | Path, progress: Callable[[int, int], None] | None = None) -> AuditResult:
    """Audit with a configuration (what `fairgen audit` calls); see audit(). The configuration's values were
    checked when it was made (AuditConfig, inputs.py), before the run directory is touched; a new run
    directory that an error stops before its first image or record is removed again, so a failed command
    leaves nothing behind."""
    created = not Path(out).exists()
    try:
        return _run(c, out, progress)
    except BaseException:
        if created and launch_rank() == 0:
            _remove_if_empty(Path(out))
        raise


def _remove_if_empty(root: Path) -> None:
    """Remove a run directory that holds no image and no record yet (only its manifest)."""
    if root.is_dir() and not (root / "images").exists() and not any(root.glob("perception*.jsonl")):
        shutil.rmtree(root, ignore_errors=True)


def _run(c: AuditConfig, out: str | Path, progress: Callable[[int, int], None] | None) -> AuditResult:
    """run() after the configuration's checks."""
    model, suite, images_per_prompt, seed = c.model, c.suite, c.images_per_prompt, c.seed
    perception_backend, world_spec, batch_size = c.perception, c.world_spec, c.batch_size
    calibration, adapter, model_options = c.calibration, c.adapter, c.model_options
    model_provenance: Future | None = None  # a new run's, while it is being made (see below)
    with processes() as procs:
        with procs.step():  # every process: inputs, model, perception; the main one: the run directory
            c.check()
            host_workers()  # a bad FAIRGEN_HOST_WORKERS stops here, before the run directory
            if Path(out).exists() and not Path(out).is_dir():
                raise FairgenError(f"output path {out} exists and is not a directory")
            suite_name = suite if isinstance(suite, str) else "<prompts>"
            prompts = suites.load(suite) if isinstance(suite, str) else list(suite)
            check_run(images_per_prompt, len(prompts), seed, batch_size, c.sampling)  # the plan's size
            model_spec = model if isinstance(model, str) else model.spec
            if (model_options or c.device) and not isinstance(model, str):
                raise FairgenError("model options and a device apply to a model spec, not to a loaded model")
            gen = (models.load(model, device=c.device, world_spec=world_spec, adapter=adapter, **model_options)
                   if isinstance(model, str) else model)
            if perception_backend is None:
                perception_backend = perception.default_for(model_spec)
            backend = (perception.load(perception_backend) if isinstance(perception_backend, str)
                       else perception_backend)
            if calibration is not None:
                from .calibrate import load_calibration

                cal = load_calibration(calibration)
            else:
                cal = None
            from .metrics.quality import QualityScorer
            from .metrics.target import load_target

            goal = load_target(c.target)  # checked before any work, like the calibration
            scorer = QualityScorer(c.quality, device=_device_of(gen)) if c.quality and procs.main else None
            if cal is not None:  # checked before any work, so a wrong file fails at once
                cal.check_for(backend, f"calibration {calibration}")
            sampling = dict(c.sampling)  # values checked by AuditConfig; keys a family does not take, by it
            if not isinstance(gen, (ImageGenerator, ImageSource)):
                raise FairgenError(f"model {gen.spec} neither generates nor holds images: it cannot be audited")
            folder = None
            if isinstance(gen, ImageSource):  # images on disk: match the folder to the suite's prompts
                gen.bind(prompts)
                folder = gen.coverage(prompts, images_per_prompt)
            plan = list(_plan(gen, prompts, images_per_prompt, seed))
            order = [(p.id, k) for p, k, _ in plan]
            if procs.main:
                config = {
                    "model": model_spec,
                    "suite": suite_name,
                    "prompt_ids": [p.id for p in prompts],
                    # what decides a prompt's images besides its id (a resumed run must not mix two texts)
                    "prompts": {p.id: {"text": p.text, "concept": p.concept, "group": dict(p.group)}
                                for p in prompts},
                    "calibration_sha256": cal.sha256 if cal is not None else None,
                    "images_per_prompt": images_per_prompt,
                    "seed": seed,
                    "perception": backend.name,
                    "sampling": sampling,
                    "world_spec": str(world_spec) if world_spec else None,
                    "adapter": str(adapter) if adapter else _adapter_of(gen),
                }
                # A new run's model provenance (a large checkpoint's sha256 takes seconds) is made beside the
                # first batch's generation and recorded before anything is saved (record_provenance); a resumed run's
                # is checked against the run's before anything else.
                fresh = procs.world == 1 and not (Path(out) / MANIFEST).exists()
                model_provenance = in_background(gen.provenance) if fresh else None
                provenance = {"model_provenance": None if fresh else gen.provenance(),
                              "perception_provenance": backend.provenance()}
                # an earlier distributed session's shards go into perception.jsonl before anyone reads it
                RunStore.open(out, config, provenance).settle_records(order)

        store = RunStore(Path(out))
        records = store.load_records()
        todo = [item for item in plan if (item[0].id, item[1]) not in records]
        done = len(plan) - len(todo)
        shard = None if procs.world == 1 else procs.rank  # several processes: each its own records file
        bar = progress if procs.main else None  # one progress bar: the main process's
        if bar:
            bar(done, len(plan))

        def record_provenance() -> None:
            """A new run's model provenance into the manifest, once, before the run's first file."""
            nonlocal model_provenance
            if model_provenance is not None:
                store.record(model_provenance=model_provenance.result())
                model_provenance = None

        recorded = 0

        def on_recorded(new: list[dict[str, Any]]) -> None:
            """The progress bar after each batch (with shards: what all processes have recorded so far)."""
            nonlocal recorded
            recorded += len(new)
            if bar:
                bar(done + (recorded if shard is None else store.shard_record_count()), len(plan))

        with procs.step():  # every process: every world-th image of what is left
            mine = todo[procs.rank :: procs.world]
            # One batch behind: while the model generates batch i+1 (on a GPU, mostly waiting on the
            # device), host workers save and perceive batch i (hostwork.py: processes, one per core). An
            # error in either stops the loop after the work in flight is recorded, so no generated batch
            # is lost. (A GPU perception backend runs beside the engine's CUDA-graph capture, in this
            # process: see engine._capture.)
            with Recorder(store, backend, on_recorded, record_provenance, shard, images=len(mine)) as recorder:
                for batch in _balanced(mine, batch_size):
                    recorder.put([(p.id, k, s) for p, k, s in batch], _images_for(gen, store, batch, sampling))
            record_provenance()  # where no batch was left to make

        with procs.step():  # the main process merges, measures and reports; the others wait for it
            if procs.main:
                if bar:
                    bar(len(plan), len(plan))
                store.settle_records(order)
                quality = _quality(store, plan, scorer, batch_size) if scorer is not None else None
                result = _measure(store, prompts, store.load_records(), order, backend, model_spec,
                                  suite_name, images_per_prompt, seed, sampling, cal, folder, goal, quality)
        return result if procs.main else AuditResult.load(out)


def _measure(
    store: RunStore,
    prompts: Sequence[Prompt],
    records: Mapping[tuple[str, int], Mapping[str, Any]],
    order: Sequence[tuple[str, int]],
    backend: PerceptionBackend,
    model_spec: str,
    suite_name: str,
    images_per_prompt: int,
    seed: int,
    sampling: Mapping[str, Any],
    cal: Calibration | None,
    folder: Mapping[str, Any] | None = None,
    goal: Any = None,
    quality: dict[str, Any] | None = None,
) -> AuditResult:
    """Metrics of the planned records (`order`): writes results.json, results.csv and report.html and stamps
    the manifest finished. goal: the metrics.target.Target the distances are taken to (None: uniform);
    quality: results.json's "quality" part (summarize_quality), or None when no quality model was given."""
    from .calibrate import add_corrected
    from .metrics import MetricFrame
    from .metrics.target import UNIFORM
    from .report import render_report

    concept_match = None
    if getattr(backend, "reads_concept", False):  # backends reading the world's concept cue
        from .world import concept_matches

        concept_match = concept_matches
    planned = set(order)
    frame = MetricFrame.from_records(
        prompts, (r for key, r in records.items() if key in planned), backend.attributes, concept_match
    )
    results = {
        "model": model_spec,
        "suite": suite_name,
        "images_per_prompt": images_per_prompt,
        "seed": seed,
        "perception": backend.name,
        "sampling": dict(sampling),
        "effective_sampling": effective_sampling(store, sampling),
        "bootstrap_replicates": BOOTSTRAP_REPLICATES,
        **frame.summarize(BOOTSTRAP_REPLICATES, seed=seed, target=UNIFORM if goal is None else goal),
    }
    if folder is not None:
        results["folder"] = dict(folder)
    if quality is not None:
        results["quality"] = quality
    if cal is not None:
        add_corrected(results, frame.counts, cal, BOOTSTRAP_REPLICATES, seed)
    store.write_json("results.json", results)
    result = AuditResult(results, store.root)
    store.write_text("results.csv", result.to_frame().to_csv(index=False))
    store.finish()
    render_report(store.root)
    return result


def effective_sampling(store: RunStore, sampling: Mapping[str, Any]) -> dict[str, Any] | None:
    """The sampling the images were made with: the model's defaults (its provenance's default_sampling) with
    the run's settings over them; None for models that record no defaults (the world, a folder)."""
    manifest = json.loads((store.root / MANIFEST).read_text())
    defaults = (manifest.get("model_provenance") or {}).get("default_sampling")
    if defaults is None:
        return dict(sampling) or None
    return {**defaults, **{k: v for k, v in sampling.items() if v is not None}}


def _quality(store: RunStore, plan: Sequence[tuple[Prompt, int, int]], scorer: Any,
             batch_size: int) -> dict[str, Any]:
    """Score the run's images with the quality model (quality.jsonl, resumable) and summarise them."""
    from rich.progress import Progress

    from .metrics.quality import score_run, summarize_quality

    items = [(p, k) for p, k, _ in plan]
    with Progress(transient=True) as bar:
        task = bar.add_task(f"quality ({scorer.spec})", total=len(items))
        records = score_run(store, items, scorer, batch_size, progress=lambda n: bar.update(task, completed=n))
    return {"model": scorer.spec, **summarize_quality(list(dict.fromkeys(p.id for p, _, _ in plan)), records)}


def _device_of(gen: Any) -> str:
    """Where a loaded model runs ('cpu' when it does not say): the quality model goes beside it."""
    return str(getattr(gen, "device", None) or "cpu")


def _adapter_of(gen: UnifiedModel) -> str | None:
    """The adapter directory applied to a loaded model (models.adapters.AdaptedModel), or None."""
    path = getattr(gen, "adapter_dir", None)
    return str(path) if path is not None else None


def _plan(gen: UnifiedModel, prompts: Sequence[Prompt], n: int, seed: int) -> Iterator[tuple[Prompt, int, int]]:
    """(prompt, sample index, image seed) for every planned image, in suite order."""
    for p in prompts:  # images on disk: plan those that exist, up to n
        count = min(n, gen.available(p)) if isinstance(gen, ImageSource) else n
        for k in range(count):
            yield p, k, derive_seed(seed, p.id, k)


def _balanced(items: list, size: int) -> Iterator[list]:
    """items in the fewest batches of at most `size`, of near-equal length (even_chunk): 800 images at 56
    go as 15 batches of 53-54, not 14 of 56 and one of 16 (a small last batch costs a GPU almost a full one)."""
    from .models.engine import even_chunk

    start = 0
    while start < len(items):
        stop = start + even_chunk(len(items) - start, size)
        yield items[start:stop]
        start = stop


def _images_for(gen: UnifiedModel, store: RunStore, batch, sampling) -> list[Loaded]:
    """The batch's images: read from a folder model's files, read back from the run directory when
    generated before, else generated in one call (the caller saves those: their flag is True)."""
    if isinstance(gen, ImageSource):
        return [(*gen.read(p, k), str(gen.source(p, k)), False) for p, k, _ in batch]
    out: list[Loaded] = [(None, None, None, False)] * len(batch)
    missing = []
    for i, (p, k, _) in enumerate(batch):
        image = store.load_image(p.id, k)
        if image is not None:
            out[i] = (image, None, None, False)
        else:
            missing.append(i)
    if missing:
        made = gen.generate([batch[i][0] for i in missing], [batch[i][2] for i in missing], **sampling)
        if len(made) != len(missing):
            raise FairgenError(f"model {gen.spec} returned {len(made)} images for {len(missing)} prompts")
        for i, im in zip(missing, made):
            out[i] = (im, None, None, True)
    return out
