"""Training fairgen-tiny from a world spec: stage 1 the vision tokenizer, stage 2 the language model.

    stage 1  render `tok_images` random avatars (random groups, concepts and seeds) and train the FSQ
             autoencoder on them (MSE on pixels: it converged faster than L1 + MSE in a sweep)
    stage 2  render a pool of `renders_per_group` avatars per (concept, gender, race, age), tokenize it
             once, then train the transformer on data.py's mixture (next-token cross-entropy on the targets
             only: image tokens for generation, the answer for questions)

Everything random derives from one seed, so a run is reproducible on the same device. Both stages log
JSONL lines ({"stage", "step", "loss", "lr", "elapsed_s"}) to <out>/train_log.jsonl. On CUDA the forward
passes run under bf16 autocast.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from ...types import ATTRIBUTES, FairgenError
from ...world import WorldSpec
from .adapter import TinyModel, checked_sampling, load
from .data import ExampleSampler, Mixture, pool_jobs, render_many, training_concepts, vocabulary_texts
from .model import LMConfig, TinyLM
from .text import Vocab, lexicon
from .tokenizer import TokenizerConfig, VisionTokenizer, to_tensor


@dataclass(frozen=True)
class Recipe:
    """Everything a training run needs besides the spec, seed and device."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tok_images: int = 40000  # distinct renders stage 1 trains on
    tok_steps: int = 6000
    tok_batch: int = 128
    tok_lr: float = 3e-3
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 256
    block_size: int = 320
    # Pool renders per (concept, gender, race, age). With 6 the LM memorised the pool (loss 0.16 nats per
    # image token) and then completed a memorised image instead of following an explicit race word.
    renders_per_group: int = 32
    max_concepts: int | None = None
    lm_steps: int = 16000
    lm_batch: int = 256
    lm_lr: float = 1e-3
    weight_decay: float = 0.05  # on matrices and embeddings
    warmup: int = 300
    words: bool = True  # word tokens for the training texts' words (text.py says why)
    # Data-loading worker processes on CUDA: each draws from its own stream, so the data (not only the
    # speed) depends on this number; it is part of the recipe.
    loader_workers: int = 6
    mixture: Mixture = field(default_factory=Mixture)


# More explicit examples, half of their requests against the concept's stereotype (Mixture.counter_share):
# the mixture of both adherence recipes.
ADHERENCE_MIXTURE = Mixture(neutral=0.3, explicit=0.45, image_qa=0.15, blank_qa=0.1, counter_share=0.5)

# full: the first stage of the shipped checkpoint, trained on a GPU (`--device cuda`; docs/tiny.md).
# anneal: continued training of a `full` checkpoint (`--init-from`) at a lower learning rate; the shipped
#   checkpoint is full, then anneal (docs/tiny.md has the numbers of both).
# adherence: continued training (`--init-from`) on ADHERENCE_MIXTURE: what makes explicit prompts win over a
#   skewed prior.
# adherence-cpu, then settle-cpu: the same idea in 500 small steps on 2 CPU cores (--init-from); the shipped
#   checkpoint is full, anneal, adherence-cpu, settle-cpu. adherence-cpu's small pool (4 renders per group)
#   renders in seconds; settle-cpu, with more neutral examples at a lower rate, brings the neutral
#   prompts' race shares back to the spec after it.
# smoke: what the tests train on 2 CPU cores: a usable tokenizer, a small LM on six concepts.
RECIPES: dict[str, Recipe] = {
    "full": Recipe(),
    "anneal": Recipe(lm_steps=8000, lm_batch=384, lm_lr=4e-4, warmup=100, loader_workers=10),
    "adherence": Recipe(lm_steps=8000, lm_batch=384, lm_lr=4e-4, warmup=100, loader_workers=8,
                        mixture=ADHERENCE_MIXTURE),
    "adherence-cpu": Recipe(lm_steps=200, lm_batch=64, lm_lr=4e-4, warmup=10, renders_per_group=4, loader_workers=8,
                            mixture=ADHERENCE_MIXTURE),
    "settle-cpu": Recipe(lm_steps=300, lm_batch=64, lm_lr=1.5e-4, warmup=15, renders_per_group=8, loader_workers=8,
                         mixture=Mixture(neutral=0.45, explicit=0.3, image_qa=0.15, blank_qa=0.1, counter_share=0.5)),
    "smoke": Recipe(
        tokenizer=TokenizerConfig(width=32),
        tok_images=4000,
        tok_steps=1000,
        tok_batch=32,
        tok_lr=5e-3,
        n_layer=2,
        n_head=4,
        n_embd=64,
        renders_per_group=2,
        max_concepts=6,
        lm_steps=300,
        lm_batch=16,
        lm_lr=3e-3,
        warmup=30,
    ),
}

Log = Callable[[dict], None]


def _lr(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def _autocast(device: torch.device):
    return (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if device.type == "cuda"
        else torch.autocast("cpu", enabled=False)
    )


def _workers(device: torch.device) -> int:
    return min(16, os.cpu_count() or 1) if device.type == "cuda" else 1


def _step_record(stage: str, step: int, loss: torch.Tensor, lr: float, start: float) -> dict:
    """A train_log.jsonl line of a training step (elapsed_s: seconds since the stage began)."""
    return {"stage": stage, "step": step, "loss": round(loss.item(), 5), "lr": lr,
            "elapsed_s": round(time.time() - start, 1)}


@torch.no_grad()
def tokenize(
    tok: VisionTokenizer, images: np.ndarray, device: torch.device, batch: int = 1024
) -> torch.Tensor:
    """uint8 images [N, 64, 64, 3] -> codes LongTensor[N, T] (on the CPU)."""
    tok.eval()
    out = [
        tok.encode(to_tensor(images[i : i + batch]).to(device)).cpu() for i in range(0, len(images), batch)
    ]
    return torch.cat(out)


def train_tokenizer(
    recipe: Recipe,
    concepts: list[str],
    seed: int,
    device: torch.device,
    log: Log,
    progress: Callable[[int], None] = lambda n: None,
) -> VisionTokenizer:
    """Stage 1. Concepts are mixed with made-up names, so every colour/emblem cue occurs, not only those of
    the training concepts."""
    rng = np.random.default_rng([seed, 1])
    torch.manual_seed(seed)
    names = concepts + [f"concept {i}" for i in range(len(concepts), 4 * len(concepts) + 256)]
    jobs = [
        (
            *(cls[int(rng.integers(len(cls)))] for cls in ATTRIBUTES.values()),
            names[int(rng.integers(len(names)))],
            int(rng.integers(2**31)),
        )
        for _ in range(recipe.tok_images)
    ]
    images = to_tensor(render_many(jobs, _workers(device))).to(device)
    tok = VisionTokenizer(recipe.tokenizer).to(device)
    opt = torch.optim.Adam(tok.parameters(), lr=recipe.tok_lr)
    start = time.time()
    for step in range(recipe.tok_steps):
        lr = _lr(step, recipe.tok_steps, recipe.tok_lr, warmup=min(100, recipe.tok_steps // 10 + 1))
        for group in opt.param_groups:
            group["lr"] = lr
        x = images[torch.randint(len(images), (recipe.tok_batch,), device=device)]
        with _autocast(device):
            recon = tok(x)
        recon = recon.float()
        loss = F.mse_loss(recon, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == recipe.tok_steps - 1:
            log(_step_record("tokenizer", step, loss, lr, start))
        progress(1)
    return tok.eval()


def lm_loss(lm: TinyLM, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted next-token cross-entropy: each example's target tokens share its weight (data.py). Logits
    are computed at target positions only (most positions of a question example are not targets)."""
    h = lm.hidden(batch["ids"], batch["pos"], batch["img_pos"], batch["valid"])[:, :-1]
    weight = batch["weight"][:, :-1]
    at = weight > 0
    ce = F.cross_entropy(lm.logits(h[at]).float(), batch["ids"][:, 1:][at], reduction="none")
    return (ce * weight[at]).sum()


def build_sampler(
    spec: WorldSpec, tok: VisionTokenizer, recipe: Recipe, seed: int, device: torch.device
) -> ExampleSampler:
    """Render and tokenize the pool, and the blank (one-colour) images of the blank-image questions; the
    vocabulary gets word tokens for the training texts' words when the recipe says so."""
    concepts = training_concepts(spec, recipe.max_concepts)
    words = lexicon(vocabulary_texts(concepts)) if recipe.words else ()
    vocab = Vocab(tok.cfg.n_codes, tok.cfg.n_tokens, words)
    rng = np.random.default_rng([seed, 2])
    jobs = pool_jobs(list(concepts), recipe.renders_per_group, rng)
    codes = tokenize(tok, render_many(jobs, _workers(device)), device)
    pool = codes.view(len(concepts), -1, recipe.renders_per_group, vocab.n_image_tokens)
    colours = np.concatenate([np.linspace(0, 255, 8)[:, None].repeat(3, 1), rng.integers(0, 256, (24, 3))])
    blanks = np.broadcast_to(colours[:, None, None, :], (len(colours), 64, 64, 3)).astype(np.uint8)
    return ExampleSampler(spec, concepts, pool, tokenize(tok, blanks, device), vocab, recipe.mixture, seed)


class _Batches(torch.utils.data.IterableDataset):
    """Endless training batches; each data-loading worker draws from its own fork of the sampler."""

    def __init__(self, sampler: ExampleSampler, size: int):
        self.sampler, self.size = sampler, size

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        sampler = self.sampler if info is None else self.sampler.fork(info.id)
        while True:
            yield sampler.batch(self.size)


def train_lm(
    sampler: ExampleSampler,
    vocab: Vocab,
    recipe: Recipe,
    seed: int,
    device: torch.device,
    log: Log,
    progress: Callable[[int], None] = lambda n: None,
    init: TinyLM | None = None,
) -> TinyLM:
    """Stage 2 (starting from `init`'s weights when given): AdamW, warm-up + cosine schedule, gradient clipping at 1. On CUDA, batches are built by
    worker processes (building them in Python is slower than a training step on a GPU).

    Twenty times per run (and at the end) it logs {"stage": "lm-eval", "text_gain"}: on a fixed batch of
    neutral generation examples, the loss without the prompt minus the loss with it, nats per image token.
    A model that ignores its prompts scores 0; the shipped one must not."""
    torch.manual_seed(seed)
    cfg = LMConfig(
        vocab_size=vocab.size,
        n_image_tokens=vocab.n_image_tokens,
        block_size=recipe.block_size,
        n_layer=recipe.n_layer,
        n_head=recipe.n_head,
        n_embd=recipe.n_embd,
    )
    lm = TinyLM(cfg).to(device)
    if init is not None:
        if init.cfg != cfg:
            raise FairgenError(f"--init-from: its language model {init.cfg} differs from the recipe's {cfg}")
        lm.load_state_dict(init.state_dict())
    # As nanoGPT: weight decay on matrices and embeddings, none on LayerNorm gains and biases.
    matrices = [p for p in lm.parameters() if p.dim() >= 2]
    vectors = [p for p in lm.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": matrices, "weight_decay": recipe.weight_decay}, {"params": vectors, "weight_decay": 0.0}],
        lr=recipe.lm_lr,
        betas=(0.9, 0.95),
    )
    workers = min(recipe.loader_workers, (os.cpu_count() or 1) - 1) if device.type == "cuda" else 0
    batches = iter(
        torch.utils.data.DataLoader(
            _Batches(sampler, recipe.lm_batch),
            batch_size=None,
            num_workers=workers,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
        )
    )
    held_out = [
        {k: t.to(device) for k, t in b.items()} for b in sampler.conditioning_batches(min(256, recipe.lm_batch * 4))
    ]
    every = max(1, recipe.lm_steps // 20)
    start = time.time()
    for step in range(recipe.lm_steps):
        if step % every == 0 and step > 0:
            log({"stage": "lm-eval", "step": step, "text_gain": round(text_gain(lm, *held_out), 5)})
        lr = _lr(step, recipe.lm_steps, recipe.lm_lr, recipe.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        batch = {k: t.to(device, non_blocking=True) for k, t in next(batches).items()}
        with _autocast(device):
            loss = lm_loss(lm, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == recipe.lm_steps - 1:
            log(_step_record("lm", step, loss, lr, start))
        progress(1)
    log({"stage": "lm-eval", "step": recipe.lm_steps, "text_gain": round(text_gain(lm, *held_out), 5)})
    return lm.eval()


@torch.no_grad()
def text_gain(lm: TinyLM, with_text: dict[str, torch.Tensor], without: dict[str, torch.Tensor]) -> float:
    """Loss of the image codes without their prompts minus with them, nats per image token (mean over
    examples): how much of what the model draws comes from the prompt."""
    was_training = lm.training
    lm.eval()
    gain = (lm_loss(lm, without) - lm_loss(lm, with_text)).item()
    lm.train(was_training)
    return gain


def train(
    spec_path: str | Path | None,
    out: str | Path,
    recipe: Recipe,
    seed: int = 0,
    device: str = "cpu",
    tokenizer_from: str | Path | None = None,
    init_from: str | Path | None = None,
    echo: Callable[[dict], None] | None = None,
    progress_factory: Callable[[str, int], Callable[[int], None]] | None = None,
    sampling: dict[str, float] | None = None,
) -> TinyModel:
    """Train both stages and save the checkpoint to `out` (see adapter.py for the layout). Returns the
    TinyModel. tokenizer_from: reuse the tokenizer of an existing checkpoint and skip stage 1. init_from:
    continue training a checkpoint: its tokenizer, and its language model as the starting point (same
    architecture and vocabulary). sampling: the checkpoint's default sampling (config.json); None keeps
    init_from's (none for a fresh model)."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FairgenError(f"unknown device {device!r} (use cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FairgenError("--device cuda: no CUDA device is available")
    if sampling is not None:  # checked before hours of training, not when saving
        sampling = checked_sampling(sampling, "the requested default sampling")
    spec = WorldSpec.load(spec_path) if spec_path else WorldSpec.default()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FairgenError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train_log.jsonl"
    log_path.write_text("")

    def log(record: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if echo:
            echo(record)

    bar = progress_factory or (lambda name, total: lambda n: None)
    started = time.time()
    start_from = load(init_from, device=device) if init_from is not None else None
    if start_from is not None or tokenizer_from is not None:
        tok = (start_from or load(tokenizer_from, device=device)).tokenizer
        recipe = replace(recipe, tokenizer=tok.cfg)
    else:
        tok = train_tokenizer(
            recipe,
            list(training_concepts(spec, recipe.max_concepts)),
            seed,
            dev,
            log,
            bar("tokenizer", recipe.tok_steps),
        )
    sampler = build_sampler(spec, tok, recipe, seed, dev)
    if start_from is not None and start_from.vocab != sampler.vocab:
        raise FairgenError("--init-from: that checkpoint's vocabulary differs from this spec's (other concepts?)")
    lm = train_lm(
        sampler,
        sampler.vocab,
        recipe,
        seed,
        dev,
        log,
        bar("language model", recipe.lm_steps),
        init=start_from.lm if start_from is not None else None,
    )
    info = {
        "recipe": asdict(recipe),
        "seed": seed,
        "device": device,
        "init_from": start_from.training if start_from is not None else None,
        "spec_sha256": spec.sha256(),
        "params": {"tokenizer": tok.num_params(), "lm": lm.num_params()},
        "concepts": sampler.names,
        "train_seconds": round(time.time() - started, 1),
    }
    if sampling is None:
        sampling = start_from.default_sampling if start_from is not None else {}
    model = TinyModel(tok, lm, training=info, words=sampler.vocab.words, sampling=sampling)
    model.save(out)
    return model
