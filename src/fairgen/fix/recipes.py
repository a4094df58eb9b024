"""The settings `fairgen fix` uses when the user gives none: one recipe per model family, and the paper's.

A FixConfig field left at None is filled by `resolve` from, in order: the preset (`--preset paper`), then
the model family's recipe. What the user sets always wins. The fix manifest records the resolved values.

Why these values (docs/fix.md, "Defaults"):
  tiny      measured on fairgen-tiny (three seeds per setting, docs/fix.md): the world renderer draws the
            balanced set, 150 SFT + 300 BPO steps at lr 1e-3 (a 4 M-parameter model moves slowly at the
            paper's rates), alpha 1 (stage 2 keeps the SFT term: BPO alone lowers every group's likelihood
            at once and collapsed generation), and an explicit anchor of 2 for gender alone, 3 when race is
            fixed (race's four groups let BPO move explicit prompts with the neutral ones); 256 images
            per generate() call (tiny's whole call is one batch of small matrices, and a CPU runs larger
            ones faster: the default gender command 26.4 -> 23.6 min on 2 cores, the same report).
            With race among the attributes (TINY_RACE): the balanced set also over personal_descriptors:train
            and 150 + 450 steps (with occupations alone the sports check suite's race rd rose on every run),
            and the explicit contrast term at 3 (`--contrast`: the anchor alone let explicit race prompts
            drift below 0.95). Race alone (TINY_RACE_ALONE) also 16 prompts per batch and 150 + 300 steps:
            at 8 prompts one seed in three stopped at -39 %, and at 16 with 450 BPO steps the sports prompts
            drifted toward one group on two seeds of three; the shorter run with the larger batch held
            both (docs/fix.md, "Race alone with 16 prompts per batch").
  others    (janus, emu3, plugins): the model draws its own balanced set (world renders are not its image
            domain), lr 1e-4 (the paper's stage-1 rate for 7B-class LoRA), the same stage shape, alpha and
            anchors as tiny (not measured on real weights: no weights here; the validation split and the
            guardrails say when they do not hold), 8 prompts per batch; `fairgen audit`'s
            64 images per generate() call (not every family splits a call to fit memory).
  paper     the paper's code (github.com/pkulium/Unified_MLLM_Fairness, scripts/lora_generation_*_v6.sh
            and lora_generation_bpo_*_v4.20.sh): stage 1 SFT at lr 1e-4, stage 2 BPO on the same adapter at
            lr 8e-7 with alpha 0, beta 1; LoRA rank 32, LoRA alpha 32; no anchor; no early stopping (the
            last adapter is kept); sampling cfg 3.0, temperature 0.9, top-p 0.6. It counts epochs of its own
            data (10 SFT, 2 BPO); fairgen keeps the family's step counts. Its LoRA dropout (0.1) is not
            reproduced: fairgen's LoRA has none.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from ..config import AuditConfig
from ..models.registry import world_images
from ..models.sampling import PRESETS as SAMPLING_PRESETS
from ..types import FairgenError

PAPER_SAMPLING = SAMPLING_PRESETS["paper"]  # the paper's sampling, as `fairgen audit --preset paper`
PRESETS = ("paper",)

_COMMON = {"sft_steps": 150, "bpo_steps": 300, "alpha": 1.0, "beta": 1.0, "rank": 8, "lora_alpha": None,
           "bpo_lr": None, "keep": "best", "contrast": 0.0, "units_per_batch": 8, "probe_suite": "none"}
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": {**_COMMON, "data_source": "world", "lr": 1e-3, "batch_size": 256},
    "default": {**_COMMON, "data_source": "model", "lr": 1e-4, "batch_size": AuditConfig.batch_size},
}
# The balanced set's prompts: the occupations the paper trains on.
TRAIN_SUITE = "occupations:train"
# tiny, with race among the attributes: the balanced set also over personal descriptors (the world draws
# them balanced, as it does every concept outside the occupations) and 150 more BPO steps. With
# occupations alone every training prompt is skewed the same way (white), nothing in the set tells the
# adapter to leave a balanced prompt balanced, and the sports prompts (near balance before) came out less
# balanced on every run; descriptor prompts are such prompts (docs/fix.md, "Race and mix with the
# descriptors"). And the explicit contrast term: an anchor of 3 (or 5) let explicit "White" prompts fall
# below the 0.95 floor (docs/fix.md, "Race and mix with the contrast term").
TINY_RACE = {"train_suite": "occupations:train,personal_descriptors:train", "bpo_steps": 450, "contrast": 3.0}
# tiny, race alone: twice the batch for a steadier BPO gradient (at 8, one seed in three stopped at -39 %)
# and 150 fewer BPO steps (with 450 the larger batch moved the sports prompts, balanced before, past
# their interval on two seeds of three). Mix keeps TINY_RACE alone: it met its targets with it.
TINY_RACE_ALONE = {"units_per_batch": 16, "bpo_steps": 300}
PAPER = {"train_suite": TRAIN_SUITE, "alpha": 0.0, "beta": 1.0, "anchor": 0.0, "contrast": 0.0, "lr": 1e-4,
         "bpo_lr": 8e-7, "rank": 32, "lora_alpha": 32.0, "keep": "last"}


def family(model: str) -> str:
    """The recipe a model spec gets: 'tiny' (small, trained on the synthetic world, so the world draws its
    balanced set) for a family of world images (the registry's world_images), else 'default'."""
    return "tiny" if world_images(model) else "default"


def anchor_for(attributes: tuple[str, ...]) -> float:
    """The explicit anchor of the family recipes: 2 for gender alone, 3 when race is among the attributes
    (docs/fix.md: with 2, race's explicit prompts drifted; with 3, gender alone stopped short of -70 %)."""
    return 3.0 if "race" in attributes else 2.0


def resolve(config: Any) -> Any:
    """`config` (a FixConfig) with every None training setting filled: preset first, then the family's
    recipe; the paper preset also sets its sampling where the user set none. Raises FairgenError for an
    unknown preset."""
    preset = getattr(config, "preset", None)
    if preset is not None and preset not in PRESETS:
        raise FairgenError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    recipe = {**RECIPES[family(config.model)], "train_suite": TRAIN_SUITE,
              "anchor": anchor_for(tuple(config.attributes))}
    if preset == "paper":
        recipe.update(PAPER)
    elif family(config.model) == "tiny" and "race" in config.attributes:
        recipe.update(TINY_RACE)
        if tuple(config.attributes) == ("race",):
            recipe.update(TINY_RACE_ALONE)
    names = {f.name for f in fields(config)}
    filled = {k: v for k, v in recipe.items() if k in names and getattr(config, k) is None}
    if filled.get("lora_alpha", 0) is None:  # the family recipes: LoRA alpha 2 x rank
        filled["lora_alpha"] = 2.0 * (filled.get("rank") or config.rank)
    if preset == "paper":
        filled["sampling"] = {**PAPER_SAMPLING, **config.sampling}
    return replace(config, **filled)


__all__ = ["PAPER", "PAPER_SAMPLING", "PRESETS", "RECIPES", "TINY_RACE", "TINY_RACE_ALONE", "TRAIN_SUITE", "anchor_for",
           "family", "resolve"]
