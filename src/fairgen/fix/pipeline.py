"""`fairgen fix` end to end: balanced set → audit before → SFT → BPO → adapter → audit after → report.

The fix run's directory:
    fix_manifest.json           the configuration (a re-run must match it, and then resumes)
    data/                       the balanced set (data.py)
    before/test, before/explicit-<attrs>   audits of the model (shareable between fix runs: `before`)
    train_log.jsonl, checkpoint/, adapter/, train_curves.png   training (train.py, report.py)
    after/test, after/explicit-<attrs>     audits of the model with the adapter
    fix_report.json, fix_report.md
Every step is resumable, so re-running the same command after an interruption finishes the run.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import models, perception, suites
from ..audit import audit
from ..store import atomic_write_json
from ..types import ATTRIBUTES, FairgenError
from . import data as balanced
from . import report as fix_report
from .batches import BatchPlan
from .train import LOG, TrainConfig, stages_for, train_adapter

MANIFEST = "fix_manifest.json"
# Settings that only change the audits, which resume on their own: a re-run may change these.
AUDIT_ONLY = ("images_per_prompt", "explicit_concepts", "explicit_images", "batch_size", "before")

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class FixConfig:
    """Everything a fix run depends on (CLI options of the same names).

    attributes: the attributes to balance ("mix" when several); data_source: `model`, `world`, or a model
    spec (`diffusers:<id>`, `folder:<dir>`); perception: backend name (None: the model's default);
    images_per_group: balanced-set images per (prompt, group) before filtering; check_concept: also drop
    images whose concept cue (world perception) is not the prompt's; train_prompts: use at most
    this many training prompts (evenly spread); steps, lr, rank, units_per_batch: training (train.py);
    alpha, beta: stage 2's weights of SFT and BPO; anchor: weight of the explicit-prompt SFT term
    (train.py); images_per_prompt: test-suite audits; explicit_concepts
    / explicit_images: the adherence check (test prompts, images per explicit prompt); before: folder of
    the before audits (None: <out>/before)."""

    model: str
    train_suite: str = "occupations:train"
    test_suite: str = "occupations:test"
    attributes: tuple[str, ...] = ("gender",)
    method: str = "bpo"
    data_source: str = "model"
    perception: str | None = None
    images_per_group: int = 4
    check_concept: bool = False
    train_prompts: int | None = None
    sft_steps: int = 100
    bpo_steps: int = 100
    alpha: float = 0.0
    beta: float = 1.0
    anchor: float = 0.0
    lr: float = 3e-4
    rank: int = 8
    units_per_batch: int = 8
    images_per_prompt: int = 160
    explicit_concepts: int = 5
    explicit_images: int = 32
    seed: int = 0
    sampling: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    before: str | None = None

    def train_config(self) -> TrainConfig:
        stages = stages_for(self.method, self.sft_steps, self.bpo_steps, self.alpha, self.beta, self.lr)
        if self.anchor < 0:
            raise FairgenError(f"--anchor must be >= 0 (got {self.anchor})")
        return TrainConfig(stages=stages, rank=self.rank, lora_alpha=2.0 * self.rank,
                           units_per_batch=self.units_per_batch, seed=self.seed, anchor=self.anchor)


def parse_attributes(text: str) -> tuple[str, ...]:
    """'gender,race' -> ('gender', 'race'), checked against types.ATTRIBUTES (order kept, no repeats)."""
    attrs = tuple(a.strip().lower() for a in text.split(",") if a.strip())
    unknown = [a for a in attrs if a not in ATTRIBUTES]
    if not attrs or unknown or len(set(attrs)) != len(attrs):
        raise FairgenError(f"--attributes: give distinct attributes of {', '.join(ATTRIBUTES)} (got {text!r})")
    return attrs


def _check(config: FixConfig, out: Path) -> None:
    """Refuse a configuration that cannot run, or that differs from the one already in `out`."""
    positive = ("images_per_prompt", "images_per_group", "units_per_batch", "rank", "explicit_images", "batch_size")
    for name in positive:
        if getattr(config, name) < 1:
            raise FairgenError(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(config, name)})")
    if config.explicit_concepts < 0:
        raise FairgenError(f"--explicit-concepts must be >= 0 (got {config.explicit_concepts})")
    config.train_config()  # validates method, steps, alpha, beta, lr
    if out.exists() and not out.is_dir():
        raise FairgenError(f"--out {out} exists and is not a directory")
    path = out / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())["config"]
        new = _jsonable(config)
        for key in sorted(set(old) | set(new)):
            if key not in AUDIT_ONLY and old.get(key) != new.get(key):
                raise FairgenError(f"{out} holds a fix run with {key}={old.get(key)!r}, not {new.get(key)!r}; "
                                   "use another --out or the same settings to resume")
    elif out.exists() and any(out.iterdir()):
        raise FairgenError(f"--out {out} is not empty and holds no fix run")


def _jsonable(config: FixConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config)))


def fix(config: FixConfig, out: str | Path, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or resume) a fix; returns fix_report.json's content. See the module docstring for `out`."""
    out = Path(out)
    if config.model.partition(":")[0].strip().lower() == "world":
        raise FairgenError("the world model has no weights to fix; use tiny or a unified model")
    _check(config, out)
    train_prompts = balanced.spread(suites.load(config.train_suite), config.train_prompts)
    test_prompts = suites.load(config.test_suite)
    backend_name = config.perception or perception.default_for(config.model)
    backend = perception.load(backend_name)
    missing = [a for a in config.attributes if a not in backend.attributes]
    if missing:
        raise FairgenError(f"perception {backend.name} does not measure {', '.join(missing)}; choose another "
                           "--perception")
    model = models.load(config.model)
    if not {"lora", "image_logprob"} <= set(model.capabilities):
        raise FairgenError(f"model {model.spec} cannot be fixed: it needs LoRA and image log-probabilities")
    source = model if config.data_source == "model" else models.load(config.data_source)
    out.mkdir(parents=True, exist_ok=True)  # only now: bad input above leaves nothing behind
    atomic_write_json(out / MANIFEST, {"config": _jsonable(config)})
    tell = progress or (lambda task, done, total: None)

    data = balanced.build(train_prompts, config.attributes, source, backend, out / "data", config.images_per_group,
                          config.seed, config.sampling, config.batch_size, config.check_concept,
                          lambda d, t: tell("balanced set", d, t))
    if data.frame.empty:
        raise FairgenError("the balanced set is empty: perception rejected every group of every prompt")
    explicit = fix_report.explicit_prompts(test_prompts, config.attributes, config.explicit_concepts)
    before_dir = Path(config.before) if config.before else out / "before"
    explicit_name = "explicit-" + "-".join(config.attributes)

    def run_audit(name: str, model_or_spec: Any, prompts: Any, n: int, run_dir: Path, adapter: Path | None = None):
        return audit(model_or_spec, prompts, n, seed=config.seed, out=run_dir, perception_backend=backend_name,
                     sampling=config.sampling, batch_size=config.batch_size, adapter=adapter,
                     progress=lambda d, t: tell(name, d, t))

    before = run_audit("audit before", model, config.test_suite, config.images_per_prompt, before_dir / "test")
    explicit_before = (run_audit("explicit before", model, explicit, config.explicit_images,
                                 before_dir / explicit_name) if explicit else None)

    plan = BatchPlan(data, config.units_per_batch, config.seed)
    adapter = train_adapter(model, plan, config.train_config(), out,
                            progress=lambda s, d, t: tell(f"train {s}", d, t))
    del model, source  # the after audits load the model afresh, with the adapter from disk

    after = run_audit("audit after", config.model, config.test_suite, config.images_per_prompt,
                      out / "after" / "test", adapter)
    explicit_after = (run_audit("explicit after", config.model, explicit, config.explicit_images,
                                out / "after" / explicit_name, adapter) if explicit else None)
    training = fix_report.read_log(out / LOG)
    report = fix_report.build_report(
        {**_jsonable(config), "perception": backend.name, "train_prompts_used": len(train_prompts),
         "balanced_images": len(data.frame), "adapter": str(adapter)},
        data.stats,
        fix_report.audit_summary(before.results, before.run_dir),
        fix_report.audit_summary(after.results, after.run_dir),
        fix_report.adherence(explicit_before.results, explicit) if explicit_before else {},
        fix_report.adherence(explicit_after.results, explicit) if explicit_after else {},
        training)
    fix_report.write(out, report, training)
    return report


__all__ = ["FixConfig", "fix", "parse_attributes"]
