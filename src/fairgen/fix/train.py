"""LoRA training of `fairgen fix`: stage 1 SFT, stage 2 BPO, on a model's language model, resumable.

    stage 1 (sft)  maximise image_token_logprob(neutral prompt, balanced image): alpha 1, beta 0
    stage 2 (bpo)  alpha * SFT + beta * BPO (the paper: alpha 0, beta 1)
    both, optional anchor * SFT on the explicit prompts the images were made from ("... a female nurse
                   ..." -> its image): keeps explicit prompts followed while neutral ones are balanced
                   (not in the paper; 0 turns it off)
A fresh AdamW per stage, linear warm-up then cosine decay to a tenth, gradient clipping at 1.

The adapter is peft's LoRA (`LoraConfig(target_modules=model.lora_targets)`) injected in place into
`model.lora_root`, so every method of the model (image_token_logprob here) runs through it.

On disk, under the fix run's directory:
    train_log.jsonl   one line per logged step: {"stage", "step", "loss", "sft", "bpo", ["anchor",] "lr",
                      "elapsed_s"}
    checkpoint/       the latest state: lora.safetensors, state.pt (optimizer, stage, step), written whole
                      or not at all (a temporary folder renamed into place)
    adapter/          the trained adapter (peft save_pretrained), written when both stages are done
A re-run resumes from checkpoint/ and draws the same batches as an uninterrupted run would have.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from ..models.adapters import ADAPTER_FILES
from ..models.base import UnifiedModel
from ..types import FairgenError
from .batches import BatchPlan
from .loss import combined_loss, sft_loss

LOG, CHECKPOINT, ADAPTER = "train_log.jsonl", "checkpoint", "adapter"


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
    of the explicit-prompt SFT term added in every stage (0: none, as in the paper)."""

    stages: tuple[Stage, ...]
    rank: int = 8
    lora_alpha: float = 16.0
    units_per_batch: int = 8
    warmup: int = 10
    log_every: int = 5
    save_every: int = 50
    seed: int = 0
    anchor: float = 0.0


def stages_for(method: str, sft_steps: int, bpo_steps: int, alpha: float, beta: float,
               lr: float) -> tuple[Stage, ...]:
    """The stages of a method: `sft` (stage 1 only: the paper's "FT text-to-image") or `bpo` (1 then 2)."""
    if method not in ("sft", "bpo"):
        raise FairgenError(f"unknown --method {method!r}; known: sft, bpo")
    last = bpo_steps if method == "bpo" else sft_steps
    if sft_steps < 0 or bpo_steps < 0 or last == 0:
        raise FairgenError("--sft-steps and --bpo-steps must be >= 0, and the method's last stage > 0")
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise FairgenError(f"--alpha and --beta must be >= 0 and not both 0 (got {alpha}, {beta})")
    if not lr > 0:
        raise FairgenError(f"--lr must be > 0 (got {lr})")
    stages = [Stage("sft", sft_steps, 1.0, 0.0, lr)] if sft_steps else []
    if method == "bpo":
        stages.append(Stage("bpo", bpo_steps, alpha, beta, lr))
    return tuple(stages)


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


def train_adapter(model: UnifiedModel, plan: BatchPlan, config: TrainConfig, out: str | Path,
                  progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Train the LoRA adapter through config.stages and save it to <out>/adapter; returns that path.

    model: a protocol model with the "lora" and "image_logprob" capabilities; its lora_root is wrapped in
    place and unwrapped again on return. A finished adapter in <out>/adapter is returned as it is.
    progress(stage name, steps done, steps of the stage) is called after each step."""
    from peft import LoraConfig, get_peft_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter = out / ADAPTER
    if all((adapter / f).is_file() for f in ADAPTER_FILES):
        return adapter
    if not {"lora", "image_logprob"} <= set(model.capabilities):
        raise FairgenError(f"model {model.spec} cannot be fixed: it needs LoRA and image log-probabilities")
    torch.manual_seed(config.seed)
    lora = LoraConfig(r=config.rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                      target_modules=list(model.lora_targets))
    peft_model = get_peft_model(model.lora_root, lora)
    try:
        _run_stages(model, peft_model, plan, config, out, progress)
        tmp = out / f".{ADAPTER}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.save_pretrained(tmp)
        tmp.rename(adapter)
    finally:
        peft_model.unload()  # the model as it was: later stages load the adapter from disk
    return adapter


def _run_stages(model: UnifiedModel, peft_model: Any, plan: BatchPlan, config: TrainConfig, out: Path,
                progress: Callable[[str, int, int], None] | None) -> None:
    params = [p for p in peft_model.parameters() if p.requires_grad]
    state = _load_checkpoint(out, peft_model)
    start_stage, start_step = (state["stage"], state["step"] + 1) if state else (0, 0)
    _trim_log(out / LOG, start_stage, start_step - 1)
    began = time.time()
    for s, stage in enumerate(config.stages):
        if s < start_stage:
            continue
        opt = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
        first = start_step if s == start_stage else 0
        if state and s == start_stage:
            opt.load_state_dict(state["optimizer"])
        for step in range(first, stage.steps):
            lr = _lr(step, stage, config.warmup)
            for group in opt.param_groups:
                group["lr"] = lr
            batch = plan.draw(s, step)
            logp = model.image_token_logprob(batch.prompts, batch.images)
            index = [t.to(logp.device) for t in (batch.prompt_index, batch.attribute_index, batch.group_index)]
            losses = combined_loss(logp, *index, stage.alpha, stage.beta)
            if config.anchor:
                anchor = sft_loss(model.image_token_logprob(batch.explicit_prompts, batch.images))
                losses["loss"] = losses["loss"] + config.anchor * anchor
                losses["anchor"] = anchor.detach()
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            losses["loss"] = losses["loss"].detach()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % config.log_every == 0 or step == stage.steps - 1:
                record = {"stage": stage.name, "stage_index": s, "step": step,
                          **{k: round(v.item(), 6) for k, v in losses.items()}, "lr": lr,
                          "elapsed_s": round(time.time() - began, 1)}
                with open(out / LOG, "a") as f:
                    f.write(json.dumps(record) + "\n")
            if (step + 1) % config.save_every == 0 or step == stage.steps - 1:
                _save_checkpoint(out, peft_model, opt, s, step)
            if progress:
                progress(stage.name, step + 1, stage.steps)
        state = None  # only the stage the checkpoint was in restores its optimizer; later ones start afresh
