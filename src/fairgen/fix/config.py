"""FixConfig: everything a fix run depends on, with each setting's one default, and the attribute parser.

Kept apart from pipeline.py so that the CLI can read the defaults (`fairgen --help`) without importing
torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import AuditConfig
from ..types import ATTRIBUTES, FairgenError, Prompt

if TYPE_CHECKING:
    from .train import TrainConfig

# The check suites of the paper's robustness study: other styles and contexts, personal descriptors, sports.
DEFAULT_CHECK_SUITES = ("occupations_style_context", "personal_descriptors", "sports")
# Images per check-suite prompt: at 64 the noise floor of rd (metrics.noise_floor: what chance alone gives
# a balanced model) is 0.099 for gender's 2 classes and 0.070 for race's 4, so a change of 0.1 is not noise.
CHECK_IMAGES = 64


# Table 1's order: the baselines first.
METHODS = ("prompt", "understanding-sft", "sft", "bpo")
# Settings a re-run may change: they only change the audits and checks (which resume on their own) or
# where and how fast the same numbers are computed.
MAY_CHANGE = ("images_per_prompt", "explicit_concepts", "explicit_images", "batch_size", "before", "device",
              "gradient_checkpointing", "check_suites", "check_images", "check_prompts", "understanding_images",
              "merge_for_audit", "quality")
# Settings added after runs were first written, with the value every run written before them trained with
# (a manifest without the key resumes as that value).
ADDED = {"contrast": 0.0, "probe_suite": "none", "probe_images": CHECK_IMAGES}


@dataclass(frozen=True)
class FixConfig:
    """Everything a fix run depends on (CLI options of the same names).

    train_suite: the suite (or several, comma-separated) the balanced set is built from (None: the recipe's,
    fix/recipes.py); attributes: the attributes to balance ("mix" when several); method: one of METHODS or "all";
    data_source: `model`, `world`, or a model spec (`diffusers:<id>`, `folder:<dir>`); perception: backend
    name (None: the model's default); images_per_group: balanced-set images per (prompt, group) before
    filtering; check_concept: also drop images whose concept cue (world perception) is not the prompt's;
    train_prompts: use at most this many training prompts (evenly spread); steps, lr, rank,
    units_per_batch (None: the recipe's): training (train.py; sft and understanding-sft train sft_steps +
    bpo_steps steps);
    alpha, beta: stage 2's weights of SFT and BPO; anchor: weight of the explicit-prompt SFT term
    (train.py); images_per_prompt: test-suite audits; explicit_concepts / explicit_images: the adherence
    check (test prompts, images per explicit prompt); check_suites / check_images / check_prompts: the
    other suites audited before and after (images per prompt, at most this many prompts each);
    understanding_images: labelled world renders of the understanding check (0: none); device: where the
    model runs (None: the model's default; "cuda", "cuda:1", "cpu"); dtype: weights of transformers models
    ("bf16", "fp16", "fp32"; None: bf16 on GPU, fp32 on CPU); model_options: other options of the
    model's family (models.load; e.g. emu3's image_area in pixels); gradient_checkpointing: for
    transformers models; before: folder of the before measurements (None: <out>/before); target: "uniform"
    (the paper) or a targets YAML (metrics/target.py) the fix balances toward (loss.py) and the audits
    measure the distance to; quality: a CLIP checkpoint (directory or hub id): the test-suite audits
    before and after also score CLIP score and CLIP-IQA (AuditConfig.quality), shown in the report and
    checked by the quality guardrail. Validation (validation.py): val_concepts training concepts held out,
    audited every val_every steps at val_images (val_explicit_images per explicit prompt); probe_suite: a
    suite of prompts the fix does not train on, audited at every validation too (probe_images per prompt:
    as many as a check suite, so it sees what the generalisation guardrail would), whose rd may not rise
    above step 0's 95 % interval ("none": no probe; None: the recipe's); patience, keep: early stopping."""

    model: str
    train_suite: str | None = None
    test_suite: str = AuditConfig.suite
    attributes: tuple[str, ...] = ("gender",)
    method: str = "bpo"
    preset: str | None = None
    data_source: str | None = None
    perception: str | None = None
    images_per_group: int = 4
    check_concept: bool = False
    train_prompts: int | None = None
    sft_steps: int | None = None
    bpo_steps: int | None = None
    alpha: float | None = None
    beta: float | None = None
    anchor: float | None = None
    contrast: float | None = None
    lr: float | None = None
    bpo_lr: float | None = None
    rank: int | None = None
    lora_alpha: float | None = None
    units_per_batch: int | None = None
    val_concepts: int = 16
    probe_suite: str | None = None
    probe_images: int = CHECK_IMAGES
    val_images: int = 32
    val_explicit_images: int = 8
    val_every: int = 75
    patience: int = 3
    keep: str | None = None
    images_per_prompt: int = AuditConfig.images_per_prompt
    explicit_concepts: int = 5
    explicit_images: int = 32
    check_suites: tuple[str, ...] = DEFAULT_CHECK_SUITES
    check_images: int = CHECK_IMAGES
    check_prompts: int | None = 50
    understanding_images: int = 64
    seed: int = AuditConfig.seed
    sampling: dict[str, Any] = field(default_factory=dict)
    batch_size: int | None = None
    device: str | None = None
    dtype: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    gradient_checkpointing: bool = True
    before: str | None = None
    merge_for_audit: bool = True
    target: str = AuditConfig.target
    quality: str | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods this run trains and measures, in Table 1's order."""
        return METHODS if self.method == "all" else (self.method,)

    def audit_config(self, model: Any, prompts: list[Prompt], images_per_prompt: int,
                     perception: str | None, quality: bool = False) -> AuditConfig:
        """The settings of one of the run's audits: this run's seed, sampling, batch size and target; with
        `quality`, also the run's quality model (the test-suite audits)."""
        return AuditConfig(model=model, suite=prompts, images_per_prompt=images_per_prompt, seed=self.seed,
                           perception=perception, sampling=self.sampling, batch_size=self.batch_size,
                           target=self.target, quality=self.quality if quality else None)

    def train_config(self, method: str | None = None) -> "TrainConfig":
        """The training of `method` (default: the run's) of a resolved config (recipes.resolve); validates
        steps, alpha, beta, lr, anchor, rank."""
        from .train import TrainConfig, stages_for  # torch: only when a run trains

        stages = stages_for(method or self.method, self.sft_steps, self.bpo_steps, self.alpha, self.beta, self.lr,
                            self.bpo_lr)
        if self.anchor < 0 or self.contrast < 0:
            raise FairgenError(f"--anchor and --contrast must be >= 0 (got {self.anchor}, {self.contrast})")
        if self.rank < 1 or not self.lora_alpha > 0:
            raise FairgenError(f"--rank must be >= 1 and --lora-alpha > 0 (got {self.rank}, {self.lora_alpha})")
        return TrainConfig(stages=stages, rank=self.rank, lora_alpha=self.lora_alpha,
                           units_per_batch=self.units_per_batch, seed=self.seed, anchor=self.anchor,
                           contrast=self.contrast,
                           gradient_checkpointing=self.gradient_checkpointing)


def parse_attributes(text: str) -> tuple[str, ...]:
    """'gender,race' -> ('gender', 'race'), checked against types.ATTRIBUTES (order kept, no repeats)."""
    attrs = tuple(a.strip().lower() for a in text.split(",") if a.strip())
    unknown = [a for a in attrs if a not in ATTRIBUTES]
    if not attrs or unknown or len(set(attrs)) != len(attrs):
        raise FairgenError(f"--attributes: give distinct attributes of {', '.join(ATTRIBUTES)} (got {text!r})")
    return attrs
