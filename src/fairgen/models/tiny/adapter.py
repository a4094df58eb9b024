"""TinyModel: fairgen-tiny behind the model protocols (models/protocols.py), and its checkpoints.

A checkpoint is a directory:
    config.json             {"format": "fairgen-tiny", "version": 1, "tokenizer": {...}, "lm": {...},
                             "words": [...] (the vocabulary's word tokens; absent: bytes only),
                             "sampling": {...} (the checkpoint's default sampling, as a Hugging Face
                             generation_config.json; absent: RAW_SAMPLING),
                             "training": {...}}
    tokenizer.safetensors   the vision tokenizer's weights
    lm.safetensors          the language model's weights
    train_log.jsonl         (written by training; not needed to load)
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from ...store import file_sha256
from ...types import FairgenError, Prompt, prompt_text
from ..protocols import OTHER
from ..sampling import Sampling
from .model import LMConfig, TinyLM
from .sampling import generate_codes
from .text import Vocab, left_pad
from .tokenizer import TokenizerConfig, VisionTokenizer, to_images, to_tensor

FORMAT, VERSION = "fairgen-tiny", 1
WEIGHT_FILES = ("tokenizer.safetensors", "lm.safetensors")
# Where the packaged default checkpoint lives (`--model tiny`).
PACKAGED = Path(__file__).resolve().parent.parent / "tiny_weights"
# Plain conditional sampling from the learned distribution: what generate() does unless the checkpoint's
# config.json or the caller says otherwise (top_p 1.0: nucleus sampling off).
RAW_SAMPLING: dict[str, float] = {"cfg": 1.0, "temperature": 1.0, "top_p": 1.0}


class TinyModel:
    """fairgen-tiny: a vision tokenizer (tokenizer.py) and a decoder-only transformer (model.py) over one
    vocabulary (text.py). All methods run on the device the model was loaded to.

    Default sampling: RAW_SAMPLING (cfg 1.0, temperature 1.0, no top-k, no top-p: the learned
    distribution), updated by the checkpoint's `sampling` (`default_sampling`); the packaged checkpoint
    sets top_p 0.8 (docs/tiny.md says why and what it does to rd). Arguments given to generate() win.
    """

    def __init__(
        self,
        tokenizer: VisionTokenizer,
        lm: TinyLM,
        training: dict | None = None,
        directory: Path | None = None,
        words: Sequence[str] = (),
        sampling: Mapping[str, float] | None = None,
    ) -> None:
        self.tokenizer, self.lm = tokenizer.eval(), lm.eval()
        self.default_sampling = checked_sampling(sampling or {})
        self.vocab = Vocab(tokenizer.cfg.n_codes, tokenizer.cfg.n_tokens, tuple(words))
        if lm.cfg.vocab_size != self.vocab.size or lm.cfg.n_image_tokens != self.vocab.n_image_tokens:
            raise FairgenError("fairgen-tiny: language model and tokenizer do not match")
        self.training = training or {}
        self.directory = directory
        self.spec = "tiny" if directory is None or directory == PACKAGED else f"tiny:{directory}"
        # Names inside lora_root, taken before any peft wrapping (which would prefix them).
        self.lora_targets: list[str] = lm.linear_names

    @property
    def lora_root(self) -> torch.nn.Module:
        """The language model: the module peft wraps (LoraConfig(target_modules=self.lora_targets))."""
        return self.lm

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "tokenizer": self.tokenizer.cfg.to_dict(),
            "lm": self.lm.cfg.to_dict(),
            "words": list(self.vocab.words),
            **({"sampling": self.default_sampling} if self.default_sampling else {}),
            "training": self.training,
        }

    def provenance(self) -> dict[str, Any]:
        """sha256 of each weight file and of config.json (empty for a model not saved or loaded from disk),
        and the sampling settings generate() uses for arguments not given (as janus and emu3 record them)."""
        defaults = {**RAW_SAMPLING, **self.default_sampling}
        if self.directory is None:
            return {"family": "tiny", "path": None, "sha256": {}, "default_sampling": defaults}
        names = (*WEIGHT_FILES, "config.json")
        return {
            "family": "tiny",
            "path": str(self.directory),
            "sha256": {n: file_sha256(self.directory / n) for n in names},
            "default_sampling": defaults,
        }

    # -- vision tokenizer ------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_image(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (resized to 64x64 if needed) -> codes LongTensor[B, T] (T = 64 for the 8x8 grid)."""
        if len(images) == 0:
            return torch.empty(0, self.vocab.n_image_tokens, dtype=torch.long, device=self.device)
        return self.tokenizer.encode(to_tensor(list(images)).to(self.device))

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor) -> list[Image.Image]:
        """Codes LongTensor[B, T] (or [T]) -> 64x64 RGB PIL images."""
        tokens = torch.as_tensor(tokens, device=self.device).long()
        tokens = tokens.unsqueeze(0) if tokens.dim() == 1 else tokens
        if (
            tokens.shape[1] != self.vocab.n_image_tokens
            or tokens.min() < 0
            or tokens.max() >= self.vocab.n_codes
        ):
            raise FairgenError(
                f"image tokens must be [B, {self.vocab.n_image_tokens}] codes in 0..{self.vocab.n_codes - 1}"
            )
        # One image at a time: a conv's rounding can depend on the batch size, and an image must not.
        return [to_images(self.tokenizer.decode(t[None]))[0] for t in tokens]

    # -- generation ------------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> list[Image.Image]:
        """One 64x64 image per (prompt, seed), the whole batch in one pass. An image depends only on its
        prompt, seed and the settings, never on the rest of the batch (per-image random streams, padding
        that changes nothing). sampling: cfg, temperature, top_p, top_k; a setting not given (or None)
        takes the checkpoint's default (`default_sampling`), else RAW_SAMPLING."""
        codes = self.generate_tokens(prompts, seeds, **sampling)
        return self.decode_tokens(codes) if len(codes) else []

    @property
    def defaults(self) -> Sampling:
        """The settings generate() uses for those not given: the checkpoint's default over RAW_SAMPLING."""
        return Sampling(**{**RAW_SAMPLING, **self.default_sampling})

    def generate_tokens(self, prompts: Sequence[Prompt | str], seeds: Sequence[int], **sampling: Any) -> torch.Tensor:
        """The codes generate() decodes: LongTensor[B, T] (T = 64), one row per (prompt, seed)."""
        if len(prompts) != len(seeds):
            raise FairgenError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
        if any(isinstance(s, bool) or not isinstance(s, Integral) or s < 0 for s in seeds):
            raise FairgenError("generate: seeds must be non-negative integers")
        s = self.defaults.resolve(sampling, "fairgen-tiny")
        texts = [prompt_text(p) for p in prompts]
        if not texts:
            return torch.empty(0, self.vocab.n_image_tokens, dtype=torch.long, device=self.device)
        return generate_codes(self.lm, self.vocab, texts, [int(x) for x in seeds], s)

    # -- understanding ---------------------------------------------------------------------------------
    @torch.no_grad()
    def answer_distribution(
        self, image: Image.Image | None, question: str, options: Sequence[str]
    ) -> dict[str, float]:
        """Exact answer probabilities: each option's full sequence (its bytes + end-of-answer) scored given
        <bos> [image] question <ans>, renormalised over the options; the mass of every other answer
        is under models.protocols.OTHER."""
        options = list(options)
        if not options or len(set(options)) != len(options) or any(not str(o) for o in options):
            raise FairgenError("answer_distribution: options must be distinct non-empty strings")
        codes = self.encode_image([image])[0] if image is not None else None
        prefix = self.vocab.question_prefix(codes, question)
        rows = [prefix + self.vocab.answer(str(o)) for o in options]
        if max(len(r) for r in rows) > self.lm.cfg.block_size:
            raise FairgenError(
                f"question too long for fairgen-tiny (at most {self.lm.cfg.block_size} tokens)"
            )
        ids, valid, pos, img = left_pad(rows, self.vocab, self.device)
        logp = torch.log_softmax(self.lm(ids, pos, img, valid).float(), dim=-1)
        scores = []
        for b, r in enumerate(rows):
            n = len(r) - len(prefix)  # answer tokens, the last of each row
            steps = logp[b, -n - 1 : -1].gather(1, ids[b, -n:, None]).sum()
            scores.append(steps.double().exp().item())
        inside = sum(scores)
        out = {o: s / inside if inside > 0 else 1.0 / len(options) for o, s in zip(options, scores)}
        out[OTHER] = min(1.0, max(0.0, 1.0 - inside))
        return out

    def caption_logprob(self, images: Sequence[Image.Image], texts: Sequence[str], question: str) -> torch.Tensor:
        """Mean log-probability per token (float32 [B]) of texts[i] as the answer to `question` about
        images[i] (its bytes and end-of-answer), in answer_distribution's format
        <bos> <boi> img <eoi> question <ans> text <eos>, left-padded; differentiable w.r.t. the LM."""
        if len(images) != len(texts) or not texts:
            raise FairgenError(f"caption_logprob: {len(images)} images but {len(texts)} texts")
        codes = self.encode_image(list(images))
        answers = [self.vocab.answer(t) for t in texts]
        rows = [self.vocab.question_prefix(c, question) + a for c, a in zip(codes, answers)]
        if max(len(r) for r in rows) > self.lm.cfg.block_size:
            raise FairgenError(f"caption too long for fairgen-tiny (at most {self.lm.cfg.block_size} tokens "
                               "with the image)")
        ids, valid, pos, img = left_pad(rows, self.vocab, self.device)
        logp = torch.log_softmax(self.lm(ids, pos, img, valid)[:, :-1].float(), dim=-1)
        token_logp = logp.gather(2, ids[:, 1:, None]).squeeze(2)  # [B, L-1]: log p of token t+1
        length = ids.shape[1]
        n = torch.tensor([len(a) for a in answers], device=ids.device)
        scored = torch.arange(1, length, device=ids.device)[None, :] >= (length - n)[:, None]  # the answers
        return (token_logp * scored).sum(1) / n

    def image_token_logprob(
        self, prompts: Sequence[Prompt | str], images: Sequence[Image.Image] | torch.Tensor
    ) -> torch.Tensor:
        """Mean log-probability per image token of each image given its prompt: Tensor[B], differentiable
        with respect to the language model (and any LoRA adapter on it). images: PIL images or codes
        LongTensor[B, T]. The distribution is over image codes only, as in generation."""
        if len(prompts) != len(images):
            raise FairgenError(f"image_token_logprob: {len(prompts)} prompts but {len(images)} images")
        codes = (
            images.to(self.device) if isinstance(images, torch.Tensor) else self.encode_image(list(images))
        )
        logits = self.image_token_logits(prompts, codes)
        return F.log_softmax(logits, dim=-1).gather(2, codes[:, :, None]).squeeze(2).mean(1)

    # -- language-model internals (locate's LM audit) --------------------------------------------------
    def image_token_logits(self, prompts: Sequence[Prompt | str], tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits of every image position: float32 [B, T, n_codes]; row t is the distribution
        generation samples code t from (no guidance, temperature 1) given the prompt and codes 0..t-1.
        tokens: codes LongTensor[B, T]. Differentiable with respect to the language model."""
        if len(prompts) != len(tokens):
            raise FairgenError(f"image_token_logits: {len(prompts)} prompts but {len(tokens)} token rows")
        T, off = self.vocab.n_image_tokens, self.vocab.image_offset
        rows = [
            self.vocab.generation_prefix(prompt_text(p)) + (c + off).tolist() for p, c in zip(prompts, tokens)
        ]
        if max(len(r) for r in rows) > self.lm.cfg.block_size:
            raise FairgenError(
                f"prompt too long for fairgen-tiny: at most {self.lm.cfg.block_size - T - 2} bytes"
            )
        ids, valid, pos, img = left_pad(rows, self.vocab, self.device)
        h = self.lm.hidden(ids, pos, img, valid)[:, -T - 1 : -1]  # the positions that predict the image codes
        return self.lm.logits(h)[..., off : off + self.vocab.n_codes].float()

    @torch.no_grad()
    def image_start_hidden(self, prompts: Sequence[Prompt | str]) -> torch.Tensor:
        """The LM's last hidden state (after the final LayerNorm) at <boi>, the position that predicts the
        first image code: float32 [B, n_embd]."""
        rows = [self.vocab.generation_prefix(prompt_text(p)) for p in prompts]
        ids, valid, pos, img = left_pad(rows, self.vocab, self.device)
        return self.lm.hidden(ids, pos, img, valid)[:, -1].float()

    @torch.no_grad()
    def tokenizer_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The quantised code vectors of each image on the token grid: float32 [B, len(levels), 8, 8]
        (what the decoder reads)."""
        return self.tokenizer._values(self.encode_image(images)).float()

    @torch.no_grad()
    def understanding_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the language model reads for an image it is asked about: the input embeddings of its codes,
        float32 [B, T, n_embd] (one tokenizer serves both paths, as in VILA-U and Emu3)."""
        return self.lm.wte(self.encode_image(images) + self.vocab.image_offset).float()

    # -- checkpoints -----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write config.json and the safetensors weight files to `directory` (created if needed)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.tokenizer.state_dict().items()},
            str(path / "tokenizer.safetensors"),
        )
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in _plain_state(self.lm).items()},
            str(path / "lm.safetensors"),
        )
        (path / "config.json").write_text(json.dumps(self.config(), indent=2) + "\n")
        self.directory = path
        self.spec = f"tiny:{path}"


def _plain_state(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LM's own weights, without any LoRA layers peft injected (save merges nothing)."""
    state = lm.state_dict()
    if not any("lora_" in k for k in state):
        return state
    raise FairgenError("save: the language model carries a LoRA adapter; save the adapter with peft instead")


def load(directory: str | Path | None = None, device: str | None = "cpu") -> TinyModel:
    """Load a checkpoint directory (None or "": the packaged default) onto `device` (None: the CPU).

    A missing, unknown or corrupt checkpoint raises FairgenError. This is the `tiny` family's constructor
    (registry.py): load(arg, device)."""
    device = device or "cpu"
    path = Path(directory).expanduser() if directory else PACKAGED
    if not (path / "config.json").is_file():
        if directory is None:
            raise FairgenError(
                "no packaged fairgen-tiny checkpoint; train one with `fairgen tiny train --spec "
                "SPEC --out DIR` and use --model tiny:DIR"
            )
        raise FairgenError(f"not a fairgen-tiny checkpoint: {path} (no config.json)")
    try:
        config = json.loads((path / "config.json").read_text())
        if config.get("format") != FORMAT or config.get("version") != VERSION:
            raise FairgenError(f"{path}: not a {FORMAT} v{VERSION} checkpoint")
        sampling = checked_sampling(config.get("sampling", {}), str(path))
        tcfg = TokenizerConfig(**{**config["tokenizer"], "levels": tuple(config["tokenizer"]["levels"])})
        tokenizer, lm = VisionTokenizer(tcfg), TinyLM(LMConfig(**config["lm"]))
        for module, name in ((tokenizer, WEIGHT_FILES[0]), (lm, WEIGHT_FILES[1])):
            if not (path / name).is_file():
                raise FairgenError(f"{path}: missing {name}")
            module.load_state_dict(load_file(str(path / name)))
    except FairgenError:
        raise
    except (
        json.JSONDecodeError,
        KeyError,
        TypeError,
        ValueError,
        RuntimeError,
        SafetensorError,
        OSError,
    ) as e:
        raise FairgenError(f"corrupt fairgen-tiny checkpoint {path}: {str(e).splitlines()[0]}") from None
    try:
        dev = torch.device(device)
        tokenizer.to(dev), lm.to(dev)
    except (RuntimeError, AssertionError) as e:
        raise FairgenError(f"cannot use device {device!r}: {str(e).splitlines()[0]}") from None
    return TinyModel(tokenizer, lm, config.get("training"), path, config.get("words", ()), sampling)


def checked_sampling(sampling: Mapping[str, Any], where: str = "fairgen-tiny") -> dict[str, float]:
    """A checkpoint's default sampling: a dict of cfg / temperature / top_p (numbers), checked."""
    if not isinstance(sampling, Mapping) or set(sampling) - set(RAW_SAMPLING):
        raise FairgenError(f"{where}: default sampling may set only {sorted(RAW_SAMPLING)} (got {sampling!r})")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in sampling.values()):
        raise FairgenError(f"{where}: default sampling values must be numbers (got {sampling!r})")
    out = {k: float(v) for k, v in sampling.items()}
    Sampling(**{**RAW_SAMPLING, **out}).check(where)
    return out
