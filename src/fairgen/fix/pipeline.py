"""`fairgen fix` end to end: balanced set → audit before → train → adapter → audit after → report.

Methods (--method), all on the same balanced set, steps and learning rate (the paper's Table 1):
    prompt              no training: every prompt gets ", any gender" / ", any race" appended
    understanding-sft   LoRA on image -> text: the balanced images captioned with their neutral prompt
    sft                 LoRA on text -> image: the neutral prompt -> its balanced images (stage 1 alone)
    bpo                 stage 1 SFT, then stage 2 BPO
    all                 the four, sharing the balanced set and the before audits; writes fix_table.*

The fix run's directory:
    fix_manifest.json           the configuration (a re-run must match it, and then resumes)
    data/                       the balanced set (data.py)
    before/test, before/explicit-<attrs>, before/checks/<suite>, before/understanding.json
                                measurements of the model (shareable between fix runs: `before`)
    train_log.jsonl, checkpoint/, adapter/, train_curves.png   training (train.py, report.py)
    after/...                   the same measurements with the adapter (or the prompt suffix)
    fix_report.json, fix_report.md
With --method all, each method's training, after/ and report lie in <out>/<method>/, and the table in
<out>/fix_table.json and .md. Every step is resumable, so re-running the same command after an
interruption finishes the run. Launched as several processes (accelerate launch, torchrun), the audits
share their images and the training its batches (data parallel); rank 0 writes.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

from .. import models, perception, suites
from ..audit import AuditResult
from ..audit import run as run_audit
from ..config import AuditConfig
from ..distributed import Processes, processes
from ..hostwork import host_workers
from ..models.adapters import applied_adapter, merged_adapter
from ..models.protocols import Understander
from ..store import atomic_write_json
from ..types import FairgenError, Prompt
from . import checks, guardrails, recipes, validation
from . import data as balanced
from . import report as fix_report
from . import table as fix_table
from ..metrics.target import load_target
from .batches import BatchPlan, target_weights
from .config import ADDED, MAY_CHANGE, METHODS, FixConfig, parse_attributes  # noqa: F401  (re-exported)
from .train import LOG, SELECTION, TRAINED, VALIDATION, check_trainable, train_adapter

MANIFEST = "fix_manifest.json"
Progress = Callable[[str, int, int], None]
TIMING = "test_timing.json"  # beside a measurement's test/ audit: its images per second


def _check(config: FixConfig, out: Path) -> None:
    """Refuse a configuration that cannot run, or that differs from the one already in `out`."""
    positive = ("images_per_prompt", "images_per_group", "units_per_batch", "rank", "explicit_images", "batch_size",
                "check_images", "val_images", "val_explicit_images", "val_every", "probe_images")
    for name in positive:
        if getattr(config, name) < 1:
            raise FairgenError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(config, name)})")
    if config.keep not in ("best", "last"):
        raise FairgenError(f"--keep must be best or last (got {config.keep!r})")
    load_target(config.target)  # a bad targets file stops here, before anything is written
    for name in ("explicit_concepts", "understanding_images", "val_concepts", "patience"):
        if getattr(config, name) < 0:
            raise FairgenError(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(config, name)})")
    if config.check_prompts is not None and config.check_prompts < 1:
        raise FairgenError(f"--check-prompts must be >= 1 (got {config.check_prompts})")
    if config.method not in (*METHODS, "all"):
        raise FairgenError(f"unknown --method {config.method!r}; known: {', '.join(METHODS)}, all")
    for method in config.methods:
        if method in TRAINED:
            config.train_config(method)  # validates steps, alpha, beta, lr, anchor
    _check_device(config.device)
    host_workers()  # a bad FAIRGEN_HOST_WORKERS stops here, before the balanced set
    if config.quality is not None:
        from ..metrics.quality import check_checkpoint

        check_checkpoint(config.quality)  # a wrong checkpoint fails now, not after the balanced set
    if out.exists() and not out.is_dir():
        raise FairgenError(f"--out {out} exists and is not a directory")
    path = out / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())["config"]
        new = _jsonable(config)
        for key in sorted(set(old) | set(new)):
            was = old.get(key, ADDED.get(key))
            if key not in MAY_CHANGE and was != new.get(key):
                # A default can change between versions (fix/recipes.py): name the option that resumes the run.
                scalar = isinstance(was, (int, float, str)) and not isinstance(was, bool)
                how = (f"--{key.replace('_', '-')} {shlex.quote(str(was))}" if scalar
                       else "the settings it was started with")
                raise FairgenError(f"{out} holds a fix run with {key}={was!r}, not {new.get(key)!r}; resume it "
                                   f"with {how} (a default may have changed since), or use another --out")
    elif out.exists() and any(out.iterdir()):
        raise FairgenError(f"--out {out} is not empty and holds no fix run")


def _check_device(device: str | None) -> None:
    """Raise FairgenError for a device torch does not know or this machine does not have."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FairgenError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FairgenError(f"--device {device}: no CUDA device on this machine")


def _probe(suite: str, trained: list[Prompt]) -> list[Prompt]:
    """The balance probe's prompts (none for "none"). Raises FairgenError when it shares a concept with the
    training suite: a probe the fix trains on cannot show what the fix does to prompts it never saw."""
    if suite == "none":
        return []
    prompts = suites.load_joined(suite)
    shared = sorted({p.concept for p in prompts} & {p.concept for p in trained})
    if shared:
        raise FairgenError(f"--probe-suite {suite} shares {len(shared)} concept(s) with the training suite "
                           f"(e.g. {shared[0]!r}); choose prompts the fix does not train on, or 'none'")
    return prompts


def _jsonable(config: FixConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


class _Run:
    """What every method of one fix run shares: configuration, processes, perception, prompts, model."""

    def __init__(self, config: FixConfig, out: Path, procs: Processes, tell: Progress) -> None:
        self.config, self.out, self.procs, self.tell = config, out, procs, tell
        train_suite = suites.load_joined(config.train_suite)
        self.train_prompts, self.val_prompts = validation.split(
            balanced.spread(train_suite, config.train_prompts), config.val_concepts)
        self.test_prompts = suites.load(config.test_suite)
        self.probe_prompts = _probe(config.probe_suite, train_suite)
        if self.probe_prompts and not self.val_prompts:
            raise FairgenError("--probe-suite is audited at every validation: it needs --val-concepts >= 1")
        self.check_suites = {checks.suite_dir_name(s): checks.check_prompts(s, config.check_prompts)
                             for s in config.check_suites}
        self.backend_name = config.perception or perception.default_for(config.model)
        self.backend = perception.load(self.backend_name)
        missing = [a for a in config.attributes if a not in self.backend.attributes]
        if missing:
            raise FairgenError(f"perception {self.backend.name} does not measure {', '.join(missing)}; choose "
                               "another --perception")
        options = {**config.model_options, **({"dtype": config.dtype} if config.dtype else {})}
        self.model = models.load(config.model, device=config.device, **options)
        for method in config.methods:
            if method in TRAINED:
                check_trainable(self.model, config.train_config(method))
        self.explicit = fix_report.explicit_prompts(self.test_prompts, config.attributes, config.explicit_concepts)
        self.explicit_name = "explicit-" + "-".join(config.attributes)
        self.val_explicit = fix_report.explicit_prompts(self.val_prompts, config.attributes, len(self.val_prompts))

    def audit(self, task: str, model: Any, prompts: list[Prompt], n: int, run_dir: Path,
              quality: bool = False) -> AuditResult:
        return run_audit(self.config.audit_config(model, prompts, n, self.backend_name, quality), run_dir,
                         lambda d, t: self.tell(task, d, t))

    def measure(self, label: str, model: Any, where: Path, suffix: str = "",
                understanding: dict[str, Any] | None = None) -> dict[str, Any]:
        """The test-suite audit, the explicit check, the check suites and (unless given) the understanding
        accuracy of `model`, with `suffix` appended to every prompt, in `where`."""
        c = self.config
        fresh = not (where / "test" / "results.json").is_file()
        began = time.perf_counter()
        test = self.audit(f"{label}: test suite", model, checks.with_suffix(self.test_prompts, suffix),
                          c.images_per_prompt, where / "test", quality=True)
        if fresh and self.procs.main:  # the audit's speed, for the report (a resumed audit has none)
            seconds = time.perf_counter() - began
            images = c.images_per_prompt * len(self.test_prompts)
            atomic_write_json(where / TIMING, {"images": images, "seconds": round(seconds, 2),
                                               "images_per_s": round(images / seconds, 2)})
        explicit = (self.audit(f"{label}: explicit prompts", model, checks.with_suffix(self.explicit, suffix),
                               c.explicit_images, where / self.explicit_name) if self.explicit else None)
        suite_runs = {name: self.audit(f"{label}: {name}", model, checks.with_suffix(prompts, suffix), c.check_images,
                                       where / "checks" / name) for name, prompts in self.check_suites.items()}
        if understanding is None and c.understanding_images and isinstance(model, Understander):
            understanding = self._understanding(label, model, where / "understanding.json")
        return {"test": test, "explicit": explicit, "suites": suite_runs, "understanding": understanding}

    def validation(self, where: Path) -> validation.Validation | None:
        """The validation of a training run in `where` (None without held-out prompts): each measurement
        audits the model as it is, adapter in training included, in where/validation/step-NNNNN."""
        c = self.config
        if not self.val_prompts:
            return None

        def measure(step: int, stage: str) -> dict[str, Any]:
            d = where / "validation" / f"step-{step:05d}"
            neutral = self.audit(f"validation at step {step}", self.model, self.val_prompts, c.val_images,
                                 d / "neutral")
            explicit = self.audit(f"validation at step {step}: explicit", self.model, self.val_explicit,
                                  c.val_explicit_images, d / "explicit")
            s = _summary(neutral)
            probe = {}
            if self.probe_prompts:  # rd with its interval: step 0's upper end is the bound (validation.py)
                rd = _summary(self.audit(f"validation at step {step}: balance probe", self.model, self.probe_prompts,
                                         c.probe_images, d / "probe"))["rd"]
                probe = {"probe": {a: rd.get(a) for a in c.attributes}}
            toward = ({"tv": {a: (s["tv"][a]["mean"] if s["tv"].get(a) else None) for a in c.attributes}}
                      if c.target != "uniform" else {})
            return {"rd": {a: (s["rd"][a]["mean"] if s["rd"].get(a) else None) for a in c.attributes}, **toward,
                    "fidelity": s["fidelity"]["value"] if s.get("fidelity") else None, "face_rate": s["face_rate"],
                    "explicit": fix_report.adherence_by_group(explicit.results, self.val_explicit), **probe}

        return validation.Validation(measure, c.val_every, c.patience, c.keep)

    def _understanding(self, label: str, model: Any, path: Path) -> dict[str, Any]:
        with self.procs.step():
            if self.procs.main and not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                result = checks.understanding_accuracy(model, self.config.understanding_images, self.config.seed,
                                                       lambda d, t: self.tell(f"{label}: understanding", d, t))
                atomic_write_json(path, result)
        return json.loads(path.read_text())


def fix(config: FixConfig, out: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) a fix; returns fix_report.json's content (--method all: fix_table.json's). See the
    module docstring for `out`."""
    out = Path(out)
    config = recipes.resolve(config)
    tell = progress or (lambda task, done, total: None)
    with processes() as procs:
        with procs.step():  # every process checks the input and loads the model; rank 0 opens `out`
            _check(config, out)
            run = _Run(config, out, procs, tell if procs.main else (lambda task, done, total: None))
            source = (run.model if config.data_source == "model"  # another source: its own default dtype
                      else models.load(config.data_source, device=config.device))
            if procs.main:
                out.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves nothing behind
                atomic_write_json(out / MANIFEST, {"config": _jsonable(config)})
        with procs.step():  # the balanced set: rank 0 makes it, the others read it
            if procs.main:
                balanced.build(run.train_prompts, config.attributes, source, run.backend, out / "data",
                               config.images_per_group, config.seed, config.sampling, config.batch_size,
                               config.check_concept, lambda d, t: run.tell("balanced set", d, t))
        data = balanced.BalancedSet.load(out / "data")
        if data.frame.empty:
            raise FairgenError("the balanced set is empty: perception rejected every group of every prompt")
        del source
        before = run.measure("before", run.model, Path(config.before) if config.before else out / "before")
        weights = target_weights(load_target(config.target), run.train_prompts, config.attributes)
        plan = BatchPlan(data, config.units_per_batch, config.seed, weights)
        reports = {m: _method(run, m, plan, data, before) for m in config.methods}
        if config.method != "all":
            return reports[config.method]
        table = fix_table.build_table(reports)
        with procs.step():
            if procs.main:
                fix_table.write(out, table)
        return table


def _method(run: _Run, method: str, plan: BatchPlan, data: balanced.BalancedSet,
            before: dict[str, Any]) -> dict[str, Any]:
    """Train (or not) and measure one method; writes and returns its fix report."""
    config, procs = run.config, run.procs
    where = run.out if config.method != "all" else run.out / method
    label = method if config.method == "all" else "after"
    adapter = None
    if method == "prompt":
        suffix = checks.prompt_suffix(config.attributes)
        after = run.measure(label, run.model, where / "after", suffix, understanding=before["understanding"])
    else:
        suffix = ""
        adapter = train_adapter(run.model, plan, config.train_config(method), where,
                                progress=lambda s, d, t: run.tell(f"{label}: train {s}", d, t), procs=procs,
                                validation=run.validation(where))
        # merged into the weights for the audits (engine speed), restored exactly after: the next method
        # starts from the model as it was
        with (merged_adapter if config.merge_for_audit else applied_adapter)(run.model, adapter) as adapted:
            after = run.measure(label, adapted, where / "after")
    training = fix_report.read_log(where / LOG) if adapter else []
    report = fix_report.build_report(
        {**_jsonable(config), "method": method, "perception": run.backend.name, "prompt_suffix": suffix,
         "train_prompts_used": len(run.train_prompts), "balanced_images": len(data.frame),
         "adapter": str(adapter) if adapter else None},
        data.stats,
        _summary(before["test"]),
        _summary(after["test"]),
        {moment: fix_report.adherence_by_group(audits["explicit"].results, run.explicit) if audits["explicit"] else {}
         for moment, audits in (("before", before), ("after", after))},
        training,
        {"understanding": {"before": before["understanding"], "after": after["understanding"]},
         "suites": {name: {"before": _summary(before["suites"][name]), "after": _summary(r)}
                    for name, r in after["suites"].items()}})
    report["validation"] = _validation_summary(where)
    report["audit_rate"] = _audit_rate(Path(config.before) if config.before else run.out / "before", where / "after")
    report["verdict"] = guardrails.verdict(report)
    with procs.step():
        if procs.main:
            fix_report.write(where, report, training)
    return report


def _validation_summary(where: Path) -> dict[str, Any] | None:
    """The validation records of a training run and the step kept (train.py's validation.jsonl and
    selection.json); None without validation."""
    path = where / SELECTION
    if not path.is_file():
        return None
    records = [json.loads(line) for line in (where / VALIDATION).read_text().splitlines() if line.strip()]
    return {**json.loads(path.read_text()), "records": records}


def _audit_rate(before: Path, after: Path) -> dict[str, Any] | None:
    """Images per second of the test-suite audits before and after (None where one was resumed, not run)."""
    rates = {}
    for moment, where in (("before", before), ("after", after)):
        path = where / TIMING
        if not path.is_file():
            return None
        rates[moment] = json.loads(path.read_text())["images_per_s"]
    return {**rates, "after_over_before": round(rates["after"] / rates["before"], 3)}


def _summary(result: AuditResult) -> dict[str, Any]:
    return fix_report.audit_summary(result.results, result.run_dir)


__all__ = ["METHODS", "FixConfig", "fix", "parse_attributes"]
