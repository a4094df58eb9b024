"""Configuration objects: each stage's settings in one frozen dataclass, each default written once.

AuditConfig holds what an audit depends on besides where it writes. `fairgen audit`'s options take their
defaults from it, `audit()` builds one and `audit.run` checks it, locate reuses it for its audit, and fix's FixConfig
builds one for every audit it runs (FixConfig.audit_config). `default(Config, "field")` reads a default for
a CLI option (docs/architecture.md, "Configuration").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .types import FairgenError

# The default model of `fairgen audit` and of the README's demo: the shipped fairgen-tiny checkpoint, a real
# (small) unified model trained on the planted-bias world, so no download is needed (docs/tiny.md).
DEFAULT_MODEL = "tiny"


@dataclass(frozen=True)
class AuditConfig:
    """The settings of an audit (the `fairgen audit` options of the same names).

    model: a spec string (or a loaded model, from Python). suite: NAME[:split], a suite file, or prompts.
    images_per_prompt: images per prompt (a `folder:` source: at most this many are read). seed: the run
    seed every image's seed derives from. perception: backend spec (None: the family's default).
    sampling: generate() settings (cfg, temperature, top_p, ... ; models/sampling.py). batch_size: images
    per generate() call. device: where the model runs (None: the family's default). model_options: the
    family's options (`fairgen models`). world_spec: the world family's planted-bias YAML. adapter: a peft
    LoRA adapter directory. calibration: a CAL.json of the perception backend (corrected estimates).
    target: "uniform" or a targets YAML (distances to it in results.json; metrics/target.py). quality: a CLIP
    checkpoint (directory or hub id) for CLIP score and CLIP-IQA per image (metrics/quality.py), or None."""

    model: Any = DEFAULT_MODEL
    suite: Any = "occupations:test"
    images_per_prompt: int = 160
    seed: int = 0
    perception: Any = None
    sampling: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 64
    device: str | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict)
    world_spec: str | None = None
    adapter: str | None = None
    calibration: str | None = None
    target: str = "uniform"
    quality: str | None = None

    def check(self) -> None:
        """Raise FairgenError for a setting out of range: sizes, seed, finite sampling values in range (keys a
        family does not take are refused by the family). audit.run calls it where every process of a launch
        stops together on bad input; the plan's size is checked again once the suite is read."""
        from .inputs import check_run

        check_run(self.images_per_prompt, None, self.seed, self.batch_size, self.sampling)


def default(config: type, name: str) -> Any:
    """The default of a config dataclass's field (what a CLI option of that name defaults to)."""
    for f in fields(config):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
            raise FairgenError(f"{config.__name__}.{name} has no default")
    raise FairgenError(f"{config.__name__} has no field {name!r}")


__all__ = ["DEFAULT_MODEL", "AuditConfig", "default"]
