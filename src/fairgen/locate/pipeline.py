"""locate: audit (or reuse one) -> understanding probe -> partial alignment -> tokenizer audit -> LM audit
-> verdicts -> findings.json + locate.html. Resumable.

Started as several processes (`accelerate launch`, `torchrun`; docs/distributed.md), the audit shares its
images among them and the language-model audit its prompts (every world-th prompt per process, each
written to its own stage file); rank 0 runs the other stages and writes the findings, which equal one
process's.

Output directory:
    <out>/manifest.json          what the run is (store.RunStore: a re-run with other settings is refused)
    <out>/audit/                 the audit run, when --audit is not given (itself resumable)
    <out>/stages/<name>.json     each finished expensive stage; <out>/stages/lm/<prompt id>.json per prompt
                                 of the language-model audit (the longest stage): a re-run skips them
    <out>/findings.json          every number, the verdicts and the headline
    <out>/locate.html            the report section (report.py)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import models, perception, suites
from ..audit import AuditResult
from ..audit import run as run_audit
from ..config import AuditConfig
from ..distributed import processes
from ..labelled import LabelledSet, labelled_set
from ..metrics import noise_floor, rd
from ..models.protocols import LMHooks, Model, Understander, VisionTokenizer
from ..store import RunStore, atomic_write_json
from ..types import ATTRIBUTES, FairgenError, Prompt
from . import lm_audit, sequential
from .alignment import partial_alignment
from .report import render_locate
from .tokenizer_audit import round_trip, vision_probes
from .understanding import PROBED, probe_understanding
from .verdict import SKEWED_PROMPT, verdicts

# Labelled renders of the tokenizer audit for world-trained models: 50 per gender x race x age class.
DEFAULT_WORLD_LABELLED = "world:800"
Progress = Callable[[str, int, int], None]


class StageCache:
    """JSON files under <out>/stages: a finished stage (or LM prompt) is read back instead of recomputed."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, name: str) -> Any:
        path = self.root / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def has(self, name: str) -> bool:
        return (self.root / f"{name}.json").is_file()

    def put(self, name: str, value: Any) -> Any:
        atomic_write_json(self.root / f"{name}.json", value)
        return value

    def stage(self, name: str, compute: Callable[[], Any]) -> Any:
        cached = self.get(name)
        return cached if cached is not None else self.put(name, compute())


def _audit_results(audit_dir: str | Path, prompts: Sequence[Prompt]) -> dict[str, Any]:
    results = AuditResult.load(audit_dir).results
    have = {str(p["id"]) for p in results.get("prompts", [])}
    missing = [p.id for p in prompts if p.id not in have]
    if missing:
        raise FairgenError(f"audit {audit_dir} does not cover the suite (missing prompts: {', '.join(missing[:5])})")
    return results


def _majorities(results: dict[str, Any]) -> dict[str, dict[str, str]]:
    """prompt id -> {attribute: the group its audit images over-represent}, for skewed prompts only.

    A prompt is skewed when its rd minus noise floor is at least verdict.SKEWED_PROMPT of rd's maximum 2/K
    and the lower bound of its rd interval lies above the floor; an attribute counts at all only when the
    suite mean of rd minus floor passes the same bar. Elsewhere a "majority" is chance, and a chance
    majority would let group-word effects read as bias."""
    out: dict[str, dict[str, str]] = {}
    for attr in PROBED:
        classes = ATTRIBUTES[attr]
        bar = SKEWED_PROMPT * 2 / len(classes)
        net, skewed = [], {}
        for p in results["prompts"]:
            counts = np.array([((p.get("counts") or {}).get(attr) or {}).get(c, 0) for c in classes])
            n = int(counts.sum())
            if not n:
                continue
            floor = noise_floor(n, len(classes))
            net.append(rd(counts) - floor)
            low = ((p.get("rd_ci95") or {}).get(attr) or [None])[0]
            if net[-1] >= bar and low is not None and low > floor:
                skewed[str(p["id"])] = classes[int(counts.argmax())]
        if net and np.mean(net) >= bar:
            for pid, group in skewed.items():
                out.setdefault(pid, {})[attr] = group
    return out


def _audit_shares(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """prompt id -> {attribute: {group: share of faces}} for prompts with faces and measured attributes."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in results["prompts"]:
        for attr in PROBED:
            counts = (p.get("counts") or {}).get(attr)
            total = sum(counts.values()) if counts else 0
            if total:
                out.setdefault(str(p["id"]), {})[attr] = {g: counts.get(g, 0) / total for g in ATTRIBUTES[attr]}
    return out


def locate(model: str | Model, suite: str | Sequence[Prompt] = AuditConfig.suite, out: str | Path = "runs/locate",
           audit: str | Path | None = None, images_per_prompt: int = 64, labelled: str | None = None,
           sequences: int = 16, seed: int = AuditConfig.seed, perception_backend: str | None = None,
           batch_size: int = AuditConfig.batch_size, progress: Progress | None = None,
           budget: int = sequential.DEFAULT_LOOKS) -> dict[str, Any]:
    """Run every locate stage the model supports; returns the findings (also written to <out>/findings.json).

    model: a spec string or a loaded model. audit: a finished audit run of this model on (a superset of)
    the suite; without it an audit runs into <out>/audit. labelled: labelled images of the tokenizer audit
    (`world[:N]`, a CSV or a class-folder directory; default world:800 for world-trained models, else the
    tokenizer audit is skipped; the base sample: a world set grows to 2^(budget-1) times it, another is
    read in growing prefixes of a seeded shuffle). sequences: code sequences per prompt of the LM audit's
    first look. budget: looks per sampled component (sequential.py): each doubles its samples until its
    verdict is decided, up to 2^(budget-1) times the first look's."""
    started = time.time()
    if images_per_prompt < 1 or sequences < 2 or batch_size < 1:
        raise FairgenError("--images-per-prompt and --batch-size must be >= 1, --sequences >= 2")
    if not 1 <= budget <= 10:
        raise FairgenError(f"--budget {budget}: expected 1 to 10 looks (each doubles the samples)")
    prompts = suites.load(suite) if isinstance(suite, str) else list(suite)
    spec = model if isinstance(model, str) else model.spec
    if labelled is None and models.world_images(spec):
        labelled = DEFAULT_WORLD_LABELLED
    labelled_images, labelled_base = _labelled(labelled, seed, budget)  # bad values fail before any work
    config = {"command": "locate", "model": spec, "suite": suite if isinstance(suite, str) else "<prompts>",
              "prompt_ids": [p.id for p in prompts], "audit": str(audit) if audit else None,
              "images_per_prompt": images_per_prompt, "labelled": labelled, "sequences": sequences, "seed": seed,
              "perception": perception_backend, "budget": budget}
    tick = progress or (lambda stage, done, total: None)
    with processes() as procs:  # one process, or every process of a launch (docs/distributed.md)
        gen = models.load(model) if isinstance(model, str) else model
        if not isinstance(gen, (Understander, VisionTokenizer, LMHooks)):
            raise FairgenError(f"model {spec} has none of the components locate measures (understanding, vision "
                               "tokenizer, language model): nothing to locate; `fairgen audit` measures its skew")
        with procs.step():  # rank 0 opens (or resumes) the run directory; the others wait for it
            if procs.main:
                RunStore.open(out, config, {"model_provenance": gen.provenance()})
        store = RunStore(Path(out))
        cache = StageCache(store.root / "stages")
        bar = tick if procs.main else (lambda stage, done, total: None)
        if audit is not None:
            with procs.step():
                results = _audit_results(audit, prompts)
        else:  # the audit shares its images among the processes itself
            settings = AuditConfig(model=gen, suite=suite, images_per_prompt=images_per_prompt, seed=seed,
                                   perception=perception_backend, batch_size=batch_size)
            results = run_audit(settings, store.root / "audit", lambda d, t: bar("audit", d, t)).results
        lm_hooks = isinstance(gen, LMHooks)
        lm_looks = 0
        if lm_hooks:  # the longest stage: every world-th prompt per process, each look of each prompt cached
            sizes = sequential.look_sizes(sequences, budget)
            for look, size in enumerate(sizes):
                start = sizes[look - 1] if look else 0
                with procs.step():  # a group of prompts sampled in one generation call, then each scored
                    todo = [p for p in prompts[procs.rank :: procs.world] if not cache.has(f"lm/{p.id}/{look}")]
                    for group in lm_audit.prompt_groups(todo, size - start):
                        sampled = lm_audit.sample_sequences(gen, group, start, size, seed)
                        for p, codes in zip(group, sampled):
                            cache.stage(f"lm/{p.id}/{look}",
                                        lambda p=p, c=codes: lm_audit.measure_prompt(gen, p, start, size, seed, c))
                            bar("language-model audit", sum(cache.has(f"lm/{q.id}/{look}") for q in prompts),
                                len(prompts))
                lm_looks = look + 1
                if _lm_summary(prompts, results, cache, lm_looks, budget)["decided"]:
                    break  # every process reads the same files and stops at the same look

        def other_stages() -> dict[str, Any]:
            """Every stage after the audit (the LM audit's prompts are on disk by then) and the verdicts."""
            backend_name = perception_backend or results.get("perception") or perception.default_for(spec)
            notes: list[str] = []
            if results.get("model") != spec:
                notes.append(f"the audit is of {results.get('model')!r}, not {spec!r}")
            where = str(audit or store.root / "audit")
            findings: dict[str, Any] = {"model": spec, "suite": config["suite"], "audit": where,
                                        "perception": backend_name, "config": config}
            if isinstance(gen, Understander):
                findings["understanding"] = cache.stage("understanding",
                                                        lambda: probe_understanding(gen, prompts))
                findings["alignment"] = partial_alignment(results, findings["understanding"], seed=seed)
            else:
                notes.append("the model answers no questions: no understanding probe, no partial alignment")
            if isinstance(gen, VisionTokenizer) and labelled_images is not None:
                backend = perception.load(backend_name)
                probe_set = _prefix(labelled_images, labelled_base)  # probes: the base sample only
                findings["tokenizer"] = {"labelled": labelled, **cache.stage("tokenizer", lambda: {
                    "round_trip": round_trip(gen, labelled_images, backend, batch_size, seed=seed,
                                             progress=lambda d, t: bar("tokenizer round trip", d, t),
                                             base=labelled_base, looks=budget),
                    "probes": vision_probes(gen, probe_set, batch_size, seed=seed)})}
            else:
                notes.append("no vision tokenizer audit: " + ("the model has no tokenizer" if not isinstance(gen, VisionTokenizer)
                                                              else "give labelled images with --labelled"))
            if lm_hooks:
                findings["language_model"] = _lm_stage(gen, prompts, results, cache, lm_looks, budget)
                if getattr(gen, "lm_audit_note", None):  # what a non-autoregressive family's hooks measure
                    notes.append(gen.lm_audit_note)
            else:
                notes.append("the model exposes no language-model hooks (" + ", ".join(lm_audit.HOOKS) + ")")
            findings["verdicts"] = verdicts(findings)
            findings["notes"] = notes
            # this invocation's wall time (a resume reuses work)
            findings["seconds"] = round(time.time() - started, 1)
            return findings

        with procs.step():  # rank 0 runs the other stages and writes the findings; the others wait
            if procs.main:
                findings = other_stages()
                store.write_json("findings.json", findings)
                render_locate(store.root, findings)
                store.finish()
    return findings if procs.main else json.loads((store.root / "findings.json").read_text())


def _lm_summary(prompts: Sequence[Prompt], results: dict[str, Any], cache: StageCache, looks_used: int,
                looks: int) -> dict[str, Any]:
    """The LM audit's summary over the first `looks_used` looks (read from the stage files), with
    "looks_used" and "decided" (every attribute's decision made, or the budget spent)."""
    measured = [lm_audit.merge([cache.get(f"lm/{p.id}/{k}") for k in range(looks_used)]) for p in prompts]
    controlled = lm_audit.summarise(prompts, measured, _majorities(results), looks=looks)
    decided = all(controlled[a]["summary"]["decision"] is not None for a in PROBED)
    return {**controlled, "looks_used": looks_used, "decided": decided or looks_used >= looks}


def _lm_stage(gen: Any, prompts: Sequence[Prompt], results: dict[str, Any], cache: StageCache, looks_used: int,
              looks: int) -> dict[str, Any]:
    controlled = _lm_summary(prompts, results, cache, looks_used, looks)
    hidden = cache.stage("hidden_probe", lambda: lm_audit.hidden_probe(gen, prompts, _audit_shares(results)))
    return {"controlled": controlled, "hidden_probe": hidden}


def _labelled(source: str | None, seed: int, looks: int) -> tuple[LabelledSet | None, int]:
    """The tokenizer audit's labelled set and its base sample size: `world:N` grows to N * 2^(looks-1)
    renders (the first N are world:N's); a fixed set is read in prefixes ending with the whole set."""
    if not source:
        return None, 0
    first = labelled_set(source, seed)
    n = len(first.truths)
    if first.source.startswith("world:"):
        return labelled_set(f"world:{n * 2 ** (looks - 1)}", seed), n
    return first, max(1, -(-n // 2 ** (looks - 1)))


def _prefix(labelled: LabelledSet, n: int) -> LabelledSet:
    """The first n images of a world set (balanced in every multiple of 16); a fixed set whole."""
    if not labelled.source.startswith("world:"):
        return labelled
    return LabelledSet(labelled.source, labelled.truths[:n], labelled.load)
