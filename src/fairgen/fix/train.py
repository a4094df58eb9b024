"""LoRA training of `fairgen fix`: stage 1 SFT, stage 2 BPO, on a model's language model, resumable.

    stage 1 (sft)  maximise image_token_logprob(neutral prompt, balanced image): alpha 1, beta 0
    stage 2 (bpo)  alpha * SFT + beta * BPO (the paper: alpha 0, beta 1)
    both, optional anchor * SFT on the explicit prompts the images were made from ("... a female nurse
                   ..." -> its image): keeps explicit prompts followed while neutral ones are balanced
                   (not in the paper; 0 turns it off)
    both, optional contrast * loss.contrast_loss: each explicit prompt's gap between its own group's image
                   and another group's, kept at least at what the model without the adapter makes of it
                   (not in the paper; 0 turns it off; the recipes' value: fix/recipes.py)
    understanding  the image -> text baseline: maximise caption_logprob(balanced image, neutral prompt)
                   (caption.py); no anchor (it would train the text -> image direction)
Methods: bpo = sft then bpo; sft = one sft stage, understanding-sft = one understanding stage, each of
sft_steps + bpo_steps steps, so every method gets the same data, learning rate and number of steps.
A fresh AdamW per stage, linear warm-up then cosine decay to a tenth, gradient clipping at 1.

Data parallel: started as several processes (distributed.Processes), every process draws the same global
batch, computes the loss of its share of the units (weighted by its share of the images and of the sets, so
the summed gradient is the one-process gradient), and the LoRA gradients are summed across processes before
the identical optimizer step on each. Rank 0 alone writes the log, checkpoints and the adapter.

Transformers models (janus, emu3) train with gradient checkpointing of their decoder layers by default.

The adapter is peft's LoRA (`LoraConfig(target_modules=model.lora_targets)`) injected in place into
`model.lora_root`, so every method of the model (image_token_logprob here) runs through it.

On disk, under the fix run's directory:
    train_log.jsonl   one line per logged step: {"stage", "step", "loss", "sft", "bpo", ["anchor",] ["contrast",]
                      "lr", "elapsed_s"}
    checkpoint/       the latest state: lora.safetensors, state.pt (optimizer, stage, step), written whole
                      or not at all (a temporary folder renamed into place)
    adapter/          the adapter kept (peft save_pretrained), written when training is done
    validation.jsonl  with a validation (validation.py): one record per measured step (0, every K, the last)
    best/             the LoRA weights of the best measured step so far (lora.safetensors, record.json)
    selection.json    the step kept and why, and where training stopped early
A re-run resumes from checkpoint/ and draws the same batches as an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file, save_file

from ..distributed import Processes
from ..models.adapters import ADAPTER_FILES
from ..models.protocols import CaptionScorer, ImageScorer, LoRATrainable, Model as UnifiedModel
from ..store import atomic_write_json
from ..types import FairgenError
from .batches import Batch, BatchPlan, partners
from .caption import caption_logprob
from .loss import combined_loss, contrast_loss, sft_loss
from .validation import Validation, choose

LOG, CHECKPOINT, ADAPTER = "train_log.jsonl", "checkpoint", "adapter"
VALIDATION, BEST, SELECTION = "validation.jsonl", "best", "selection.json"
# The methods that train an adapter (`prompt` trains nothing), and the name of each one-stage method's stage.
TRAINED = ("sft", "understanding-sft", "bpo")
UNDERSTANDING = "understanding"


@dataclass(frozen=True)
class Stage:
    """One training stage: `steps` optimizer steps of alpha * SFT + beta * BPO at peak learning rate lr."""

    name: str
    steps: int
    alpha: float
    beta: float
    lr: float


@dataclass(frozen=True)
class TrainConfig:
    """LoRA shape, batch size, stages. units_per_batch: sets (one image per group) per batch; anchor: weight
    of the explicit-prompt SFT term added in every stage (0: none, as in the paper); contrast: weight of the
    explicit contrast term (loss.contrast_loss; 0: none)."""

    stages: tuple[Stage, ...]
    rank: int = 8
    lora_alpha: float = 16.0
    units_per_batch: int = 8
    warmup: int = 10
    log_every: int = 5
    save_every: int = 50
    seed: int = 0
    anchor: float = 0.0
    contrast: float = 0.0
    gradient_checkpointing: bool = True


def stages_for(method: str, sft_steps: int, bpo_steps: int, alpha: float, beta: float,
               lr: float, bpo_lr: float | None = None) -> tuple[Stage, ...]:
    """The stages of a trained method (module docstring): `bpo` (sft then bpo), `sft` (the paper's "FT
    text->image") or `understanding-sft` ("FT image->text"), the last two one stage of sft_steps + bpo_steps.
    lr: peak learning rate of every stage, or of stage 1 where bpo_lr (stage 2's) is given."""
    if method not in TRAINED:
        raise FairgenError(f"unknown training method {method!r}; known: {', '.join(TRAINED)}")
    if sft_steps < 0 or bpo_steps < 0 or (bpo_steps if method == "bpo" else sft_steps + bpo_steps) == 0:
        raise FairgenError("--sft-steps and --bpo-steps must be >= 0, and the method's last stage > 0")
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise FairgenError(f"--alpha and --beta must be >= 0 and not both 0 (got {alpha}, {beta})")
    if not lr > 0 or (bpo_lr is not None and not bpo_lr > 0):
        raise FairgenError(f"--lr and --bpo-lr must be > 0 (got {lr}, {bpo_lr})")
    if method == "sft":
        return (Stage("sft", sft_steps + bpo_steps, 1.0, 0.0, lr),)
    if method == "understanding-sft":
        return (Stage(UNDERSTANDING, sft_steps + bpo_steps, 1.0, 0.0, lr),)
    stages = [Stage("sft", sft_steps, 1.0, 0.0, lr)] if sft_steps else []
    return (*stages, Stage("bpo", bpo_steps, alpha, beta, lr if bpo_lr is None else bpo_lr))


def _lr(step: int, stage: Stage, warmup: int) -> float:
    """Linear warm-up (at most a tenth of the stage), then cosine decay to a tenth of the peak."""
    warmup = min(warmup, max(1, stage.steps // 10))
    if step < warmup:
        return stage.lr * (step + 1) / warmup
    t = (step - warmup) / max(1, stage.steps - warmup)
    return stage.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _lora_state(peft_model: Any) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}


def _save_checkpoint(out: Path, peft_model: Any, opt: torch.optim.Optimizer, stage: int, step: int) -> None:
    """Write checkpoint/ whole: a temporary folder renamed over the old one."""
    tmp, final, old = out / f".{CHECKPOINT}.tmp", out / CHECKPOINT, out / f".{CHECKPOINT}.old"
    for leftover in (tmp, old):  # of a run killed mid-save; `final` (or else `old`) was whole
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    save_file(_lora_state(peft_model), str(tmp / "lora.safetensors"))
    torch.save({"optimizer": opt.state_dict(), "stage": stage, "step": step}, tmp / "state.pt")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(out: Path, peft_model: Any) -> dict[str, Any] | None:
    """Restore the LoRA weights of checkpoint/ into peft_model; returns its state (optimizer, stage, step)."""
    from peft import set_peft_model_state_dict

    path = out / CHECKPOINT
    if not (path / "state.pt").is_file():
        old = out / f".{CHECKPOINT}.old"  # killed between the two renames: the previous one is whole
        if not (old / "state.pt").is_file():
            return None
        path = old
    set_peft_model_state_dict(peft_model, load_file(str(path / "lora.safetensors")))
    return torch.load(path / "state.pt", weights_only=True)


def _trim_log(path: Path, stage: int, step: int) -> None:
    """Drop log lines written after the checkpoint (stage, step): a resumed run writes them again."""
    if not path.exists():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keep = [r for r in records if (r["stage_index"], r["step"]) <= (stage, step)]
    path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def check_trainable(model: UnifiedModel, config: TrainConfig) -> None:
    """Raise FairgenError unless the model can train config's stages: LoRA, and image log-probabilities
    (generation stages) or caption log-probabilities (the understanding stage)."""
    if not isinstance(model, LoRATrainable):
        raise FairgenError(f"model {model.spec} cannot be fixed: it has no LoRA support")
    names = {stage.name for stage in config.stages}
    if names - {UNDERSTANDING} and not isinstance(model, ImageScorer):
        raise FairgenError(f"model {model.spec} cannot be fixed: it has no image log-probabilities")
    if UNDERSTANDING in names and not isinstance(model, CaptionScorer):
        raise FairgenError(f"model {model.spec} cannot be trained image -> text: it has no "
                           "caption_logprob(images, texts, question)")


def train_adapter(model: UnifiedModel, plan: BatchPlan, config: TrainConfig, out: str | Path,
                  progress: Callable[[str, int, int], None] | None = None,
                  procs: Processes = Processes(), validation: Validation | None = None) -> Path:
    """Train the LoRA adapter through config.stages and save it to <out>/adapter; returns that path.

    model: a protocol model that passes check_trainable; its lora_root is wrapped in place and unwrapped
    again on return. A finished adapter in <out>/adapter is returned as it is. progress(stage name, steps
    done, steps of the stage) is called after each step. procs: the processes training together (data
    parallel; every one calls this, rank 0 writes, and all return once the adapter is on disk).
    validation: measured every validation.every steps (validation.py); the adapter saved is the one it
    chooses (validation.jsonl, selection.json; training may stop early). None: the last adapter."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    out = Path(out)
    adapter = out / ADAPTER
    with procs.step():
        check_trainable(model, config)
        if plan.units_per_batch < procs.world:
            raise FairgenError(f"{plan.units_per_batch} units per batch cannot be shared by {procs.world} "
                               "processes; raise --units-per-batch")
        if procs.main:
            out.mkdir(parents=True, exist_ok=True)
    if all((adapter / f).is_file() for f in ADAPTER_FILES):
        return adapter
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(model.lora_targets))
    peft_model = get_peft_model(model.lora_root, lora)
    try:
        with procs.step(), _checkpointing(model, config.gradient_checkpointing) as pause:
            records, stopped = _run_stages(model, peft_model, plan, config, out, progress, procs, validation, pause)
            if validation is not None and len(records) > 1:
                kept, why = choose(records, validation.keep)
                if procs.main and kept["step"] != records[-1]["step"]:  # rank 0 alone saves the adapter
                    set_peft_model_state_dict(peft_model, load_file(str(out / BEST / "lora.safetensors")))
                if procs.main:
                    atomic_write_json(out / SELECTION, {"kept_step": kept["step"], "reason": why,
                                                        "stopped_early_at": stopped, "keep": validation.keep,
                                                        "every": validation.every, "patience": validation.patience})
            if procs.main:
                tmp = out / f".{ADAPTER}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                peft_model.save_pretrained(tmp)
                tmp.rename(adapter)
    finally:
        peft_model.unload()  # the model as it was: later stages load the adapter from disk
    return adapter


@contextmanager
def _checkpointing(model: UnifiedModel, enabled: bool) -> Iterator[Callable[[], Any]]:
    """Gradient checkpointing of a transformers model's decoder layers that hold LoRA targets, for the
    time of the block (non-reentrant; only those layers are put in training mode, which checkpointing
    needs, and they have no dropout; the KV cache, useless in training, is off). Models without
    transformers' checkpointing: a plain block. Yields pause(): a context manager that turns it off for
    a while (the validation audits generate, which needs the cache and eval mode)."""
    root = model.lora_root
    if not enabled or not getattr(root, "supports_gradient_checkpointing", False):
        yield nullcontext
        return
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for name, m in root.named_modules() if isinstance(m, GradientCheckpointingLayer)
              and any(t.startswith(name + ".") for t in model.lora_targets)]
    configs = {id(m.config): m.config for m in root.modules() if hasattr(getattr(m, "config", None), "use_cache")}
    cached = {key: c.use_cache for key, c in configs.items()}
    kwargs = {"use_reentrant": False}
    new_api = hasattr(root, "activation_checkpointing_enable")  # transformers >= 5.25; the older name warns there

    def on() -> None:
        if new_api:
            root.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            root.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        for layer in layers:
            layer.train()
        for c in configs.values():
            c.use_cache = False

    def off() -> None:
        for layer in layers:
            layer.eval()
        for key, c in configs.items():
            c.use_cache = cached[key]
        (root.activation_checkpointing_disable if new_api else root.gradient_checkpointing_disable)()

    @contextmanager
    def pause() -> Iterator[None]:
        off()
        try:
            yield
        finally:
            on()

    on()
    try:
        yield pause
    finally:
        off()


def _batch_losses(model: UnifiedModel, batch: Batch, stage: Stage, anchor: float, procs: Processes,
                  contrast: float = 0.0, reference: Callable[[], Any] = nullcontext
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This process's loss on its share of the batch, and the terms it adds to the batch's mean terms.
    reference(): a context in which the model is the one before the fix (peft's disable_adapter), for the
    contrast term's gaps.

    Every term is a mean over the whole batch: over its images (sft, anchor, caption) or over its sets
    (bpo). A process holding a share w of them contributes w times its own mean, so the terms, and the
    gradients, summed over processes are those of one process training on the whole batch."""
    mine = batch.shard(procs.rank, procs.world)
    w_images = len(mine.rows) / len(batch.rows)
    w_sets = len(mine.unit_rows) / len(batch.unit_rows)
    if stage.name == UNDERSTANDING:
        caption = -caption_logprob(model, mine.images, mine.prompts).mean()
        return w_images * caption, {"caption": w_images * caption.detach()}
    logp = model.image_token_logprob(mine.prompts, mine.images)
    index = [t.to(logp.device) for t in (mine.prompt_index, mine.attribute_index, mine.group_index)]
    weight = None if mine.weight is None else mine.weight.to(logp.device)
    losses = combined_loss(logp, *index, stage.alpha * w_images, stage.beta * w_sets, weight)
    loss = losses["loss"]
    terms = {"sft": w_images * losses["sft"], "bpo": w_sets * losses["bpo"]}
    if anchor or contrast:
        explicit_logp = model.image_token_logprob(mine.explicit_prompts, mine.images)
    if anchor:
        explicit = sft_loss(explicit_logp)
        loss = loss + anchor * w_images * explicit
        terms["anchor"] = w_images * explicit.detach()
    if contrast:
        # each explicit prompt against another group's image of its set (the next row of its unit), the
        # gap as the model without the adapter had it: only a gap that shrank costs (loss.contrast_loss)
        other = [mine.images[j] for j in partners(mine.unit_rows)]
        gap = explicit_logp - model.image_token_logprob(mine.explicit_prompts, other)
        with torch.no_grad(), reference():
            before = (model.image_token_logprob(mine.explicit_prompts, mine.images)
                      - model.image_token_logprob(mine.explicit_prompts, other))
        kept = contrast_loss(gap, before.to(gap.device))
        loss = loss + contrast * w_images * kept
        terms["contrast"] = w_images * kept.detach()
    return loss, terms


def _sum_gradients(params: list[torch.nn.Parameter], procs: Processes) -> None:
    """Replace each parameter's gradient by its sum over the processes (one flat all-reduce)."""
    if procs.world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = procs.sum(torch.cat([g.reshape(-1).float() for g in grads]))
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset:offset + g.numel()].view_as(g).to(p.dtype)
        offset += g.numel()


def _read_records(path: Path) -> list[dict[str, Any]]:
    """validation.jsonl's records. A run killed after a measurement and before the next checkpoint keeps
    it: the resumed run trains those steps again to the same weights (same batches, same state)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_stages(model: UnifiedModel, peft_model: Any, plan: BatchPlan, config: TrainConfig, out: Path,
                progress: Callable[[str, int, int], None] | None, procs: Processes,
                validation: Validation | None = None, pause: Callable[[], Any] | None = None
                ) -> tuple[list[dict[str, Any]], int | None]:
    """Train through the stages from the checkpoint; returns the validation records (step 0 first) and the
    step training stopped early at (None: it ran to the end)."""
    params = [p for p in peft_model.parameters() if p.requires_grad]
    state = _load_checkpoint(out, peft_model)
    start_stage, start_step = (state["stage"], state["step"] + 1) if state else (0, 0)
    offsets = [sum(st.steps for st in config.stages[:i]) for i in range(len(config.stages))]
    total = sum(st.steps for st in config.stages)
    if procs.main:
        _trim_log(out / LOG, start_stage, start_step - 1)
    records = _read_records(out / VALIDATION) if validation else []

    def validate(done: int, stage: str) -> bool:
        """Measure after `done` steps where due; True when training should stop early."""
        if validation is None or (done % validation.every and done != total):
            return False
        if any(r["step"] == done for r in records):  # measured before an interruption
            return done != total and validation.stale([r for r in records if r["step"] <= done])
        with torch.no_grad(), (pause or nullcontext)():
            record = {"step": done, "stage": stage, **validation.measure(done, stage)}
        records.append(record)
        if procs.main:
            with open(out / VALIDATION, "a") as f:
                f.write(json.dumps(record) + "\n")
            if len(records) > 1 and choose(records, "best")[0]["step"] == done:
                tmp = out / f".{BEST}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                save_file(_lora_state(peft_model), str(tmp / "lora.safetensors"))
                atomic_write_json(tmp / "record.json", record)
                shutil.rmtree(out / BEST, ignore_errors=True)
                tmp.rename(out / BEST)
        return done != total and validation.stale(records)

    began = time.time()
    for s, stage in enumerate(config.stages):
        if s < start_stage:
            continue
        opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
        first = start_step if s == start_stage else 0
        if state and s == start_stage:
            opt.load_state_dict(state["optimizer"])
        for step in range(first, stage.steps):
            if validate(offsets[s] + step, stage.name):
                return records, offsets[s] + step
            lr = _lr(step, stage, config.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            anchor = config.anchor if stage.name != UNDERSTANDING else 0.0
            contrast = config.contrast if stage.name != UNDERSTANDING else 0.0
            loss, terms = _batch_losses(model, plan.draw(s, step), stage, anchor, procs, contrast,
                                        peft_model.disable_adapter)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            _sum_gradients(params, procs)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            logged = step % config.log_every == 0 or step == stage.steps - 1
            if logged:  # every process takes part in the sum; rank 0 writes
                names = list(terms)
                values = procs.sum(torch.stack([terms[k].float() for k in names])).tolist()
                terms = dict(zip(names, values))
            if logged and procs.main:
                total_loss = (terms["caption"] if stage.name == UNDERSTANDING else stage.alpha * terms["sft"]
                              + stage.beta * terms["bpo"] + anchor * terms.get("anchor", 0.0)
                              + contrast * terms.get("contrast", 0.0))
                record = {"stage": stage.name, "stage_index": s, "step": step, "loss": round(total_loss, 6),
                          **{k: round(v, 6) for k, v in terms.items()}, "lr": lr,
                          "elapsed_s": round(time.time() - began, 1)}
                with open(out / LOG, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if procs.main and ((step + 1) % config.save_every == 0 or step == stage.steps - 1):
                _save_checkpoint(out, peft_model, opt, s, step)
            if progress:
                progress(stage.name, step + 1, stage.steps)
        state = None  # only the stage the checkpoint was in restores its optimizer; later ones start afresh
    validate(total, config.stages[-1].name)
    return records, None
