"""What the transformers-based families (janus.py, emu3.py) share: finding and loading a checkpoint,
provenance, per-image seeded sampling, a KV-cached decoder loop and exact option scoring.

Functions, not a base class: each family file reads top to bottom as its own adapter (diffusers' style),
calling these helpers where the work is the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..distributed import launch_rank
from ..store import file_sha256, in_background
from ..types import FairgenError

# Janus image generation crashes in `_prepare_static_cache` with transformers 5.17; 5.23 is the earliest release
# checked to work with the Janus and Emu3 code fairgen calls (the `cache=` keyword among them); tested on 5.24.
MIN_TRANSFORMERS = "5.23"
# Files a checkpoint is fetched and fingerprinted by. Only safetensors weights: never pickles.
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.jinja", "*.txt", "*.model")
_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
           "fp32": torch.float32, "float32": torch.float32}


def transformers_problem(family: str) -> str | None:
    """Why the installed transformers cannot run `family` (one line), or None when it can."""
    import transformers
    from packaging.version import Version

    found = transformers.__version__
    if Version(found) < Version(MIN_TRANSFORMERS):
        return f"{family} needs transformers>={MIN_TRANSFORMERS} (found {found}): pip install 'transformers>={MIN_TRANSFORMERS}'"
    return None


def require_transformers(family: str) -> None:
    """Raise FairgenError when the installed transformers cannot run `family`."""
    problem = transformers_problem(family)
    if problem:
        raise FairgenError(problem)


def resolve_checkpoint(family: str, arg: str, index_file: str = "config.json") -> tuple[Path, str | None]:
    """The local directory of a checkpoint given as a directory or a Hugging Face hub id, and its hub commit
    (None for a plain directory). Hub checkpoints are fetched once into the hub cache, safetensors only."""
    if not arg:
        raise FairgenError(f"model spec {family}:<hf id or directory> needs a checkpoint")
    path = Path(arg).expanduser()
    revision = None
    if not path.exists():
        if arg.count("/") != 1 or arg.startswith((".", "/", "~")):
            raise FairgenError(f"{family}: {arg} is neither a directory nor a Hugging Face hub id (owner/name)")
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(arg, allow_patterns=list(CHECKPOINT_PATTERNS)))
        except Exception as e:  # noqa: BLE001  (offline, unknown repo, gated repo: one answer for the user)
            raise FairgenError(f"{family}: cannot fetch {arg} from the Hugging Face hub ({_first_line(e)}); "
                               "give a local directory instead") from None
        revision = path.name if path.parent.name == "snapshots" else None
    if not path.is_dir():
        raise FairgenError(f"{family}: {path} is not a directory")
    if not (path / index_file).is_file():
        raise FairgenError(f"{family}: {path} holds no {index_file} (not a saved checkpoint directory)")
    if not any(path.rglob("*.safetensors")):
        raise FairgenError(f"{family}: {path} holds no *.safetensors weights (fairgen loads safetensors only)")
    return path, revision


def check_model_type(family: str, path: Path, expected: str) -> None:
    """Raise FairgenError unless config.json names `expected` as its model_type."""
    found = json.loads((path / "config.json").read_text()).get("model_type")
    if found != expected:
        raise FairgenError(f"{family}: {path} is a {found!r} checkpoint, not a transformers {expected!r} one")


def resolve_device(device: str | None) -> torch.device:
    """The device asked for, else the first CUDA GPU when there is one, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Weights dtype: as asked, else bfloat16 on GPU and float32 on CPU (CPU bf16 matmuls are slow)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise FairgenError(f"unknown dtype {dtype!r}; known: {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def load_pretrained(family: str, path: Path, model_cls: Any, processor_cls: Any, dtype: torch.dtype,
                    device: torch.device, device_map: str | dict | None) -> tuple[Any, Any]:
    """(model, processor) from a checkpoint directory, in eval mode, on `device` (or spread by accelerate's
    `device_map` when one is given)."""
    try:
        processor = processor_cls.from_pretrained(path)
        model = model_cls.from_pretrained(path, dtype=dtype, device_map=device_map, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FairgenError(f"{family}: cannot load {path}: {_first_line(e)}") from None
    if device_map is None:
        model.to(device)
    return model.eval(), processor


class Fingerprint:
    """Provenance of a checkpoint directory: sha256 of its config, tokenizer and weight files. In the
    process that records provenance (rank 0 of a distributed run, or the only one), hashing starts in a
    background thread when the fingerprint is made (at model load, so it overlaps the load); elsewhere on
    first use. Files hash one per core at a time (hashlib runs without the GIL: a sharded checkpoint
    hashes in parallel), and `sha256` waits for them. Weights keep their digests in the user's cache
    (store.file_sha256): hashing runs at about 1-2 GB/s per core, 13 s for a 7B checkpoint in one file
    on an H100 host."""

    def __init__(self, path: Path, source: str, revision: str | None) -> None:
        self.path, self.source, self.revision = path, source, revision
        self._digests: Future | None = in_background(self._hash) if launch_rank() == 0 else None

    def _hash(self) -> dict[str, str]:
        files = sorted({f for pattern in CHECKPOINT_PATTERNS for f in self.path.rglob(pattern) if f.is_file()})
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # shards in parallel
            return dict(zip((str(f.relative_to(self.path)) for f in files), pool.map(file_sha256, files)))

    @property
    def sha256(self) -> dict[str, str]:
        """{file relative to the checkpoint: sha256 hex digest}; waits for the background hashing."""
        if self._digests is None:
            self._digests = in_background(self._hash)
        return self._digests.result()

    def as_dict(self) -> dict[str, Any]:
        import transformers

        return {"source": self.source, "path": str(self.path), "revision": self.revision,
                "transformers": transformers.__version__, "sha256": self.sha256}


@dataclass(frozen=True)
class Sampling:
    """Image-token sampling settings.

    cfg: classifier-free guidance scale on logits (1 = no guidance, no unconditional rows).
    temperature: 0 = greedy. top_p: nucleus threshold in (0, 1] (1 = off). top_k: keep the k most likely
    codes (None = off).
    """

    cfg: float
    temperature: float
    top_p: float = 1.0
    top_k: int | None = None

    @classmethod
    def parse(cls, family: str, defaults: Sampling, given: dict[str, Any]) -> Sampling:
        """Settings from generate()'s keyword arguments over the family's defaults; bad values: FairgenError."""
        unknown = set(given) - {"cfg", "temperature", "top_p", "top_k"}
        if unknown:
            raise FairgenError(f"{family}: unknown sampling setting(s) {sorted(unknown)}; "
                               "known: cfg, temperature, top_p, top_k")
        s = cls(**{**asdict(defaults), **{k: v for k, v in given.items() if v is not None}})
        if s.cfg < 0 or s.temperature < 0:
            raise FairgenError(f"{family}: cfg and temperature must be >= 0 (got {s.cfg}, {s.temperature})")
        if not 0.0 < s.top_p <= 1.0:
            raise FairgenError(f"{family}: top_p must be in (0, 1] (got {s.top_p})")
        if s.top_k is not None and s.top_k < 1:
            raise FairgenError(f"{family}: top_k must be >= 1 (got {s.top_k})")
        return s

    def guide(self, logits: torch.Tensor) -> torch.Tensor:
        """[2B, V] logits, conditional rows first, -> guided [B, V] (as upstream Janus and Emu3 do, on
        logits); [B, V] unchanged when cfg is 1."""
        if self.cfg == 1.0:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + self.cfg * (cond - uncond)


class SeededDraws:
    """Per-image random streams: image i's uniform numbers come from its own torch.Generator seeded with
    seeds[i] (on the CPU, so the same numbers come on any device). An image's randomness therefore depends
    only on its seed, not on what else is in the batch or where it sits. All `steps` numbers are drawn up
    front and moved to the device once, so the sampling loop never waits on the host."""

    def __init__(self, seeds: Sequence[int], steps: int, device: torch.device) -> None:
        rows = [torch.rand(steps, generator=torch.Generator().manual_seed(int(s) & 0xFFFF_FFFF_FFFF_FFFF),
                           dtype=torch.float64) for s in seeds]
        self.uniforms = torch.stack(rows).to(device)  # [B, steps]

    def sample(self, logits: torch.Tensor, s: Sampling, step: int) -> torch.Tensor:
        """Token `step` of every row from guided logits [B, V] -> LongTensor[B] (sample_codes)."""
        return sample_codes(logits, s, self.uniforms[:, step])


def sample_codes(logits: torch.Tensor, s: Sampling, u: torch.Tensor) -> torch.Tensor:
    """One code per row from guided logits [B, V] -> LongTensor[B]: temperature, top-k, top-p, then an
    inverse-CDF draw with each row's uniform number u (float64 [B]). Only device ops, no host sync."""
    logits = logits.float()
    if s.temperature == 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_k is not None and s.top_k < logits.shape[-1]:
        return _sample_top_k(logits, s, u)
    probs = torch.softmax(logits, dim=-1)
    if s.top_p < 1.0:  # keep the smallest set of most likely tokens holding top_p of the mass
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        ahead = sorted_p.cumsum(-1) - sorted_p
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, ahead < s.top_p)
        probs = probs.masked_fill(~keep, 0.0)
    cdf = probs.double().cumsum(-1)
    target = (u * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp(max=probs.shape[-1] - 1)


def _sample_top_k(logits: torch.Tensor, s: Sampling, u: torch.Tensor) -> torch.Tensor:
    """sample_codes' rule when top-k is on, computed on the k kept logits only: softmax over them, the
    top-p cut on their (already sorted) probabilities, then the same inverse-CDF draw over the kept codes
    in vocabulary order. The same distribution and draw as masking the full row (up to float rounding
    and the order of exactly tied logits), without sorting and summing all V entries (VILA-U: k = 900 of
    16384, four draws per image position)."""
    values, index = logits.topk(s.top_k, dim=-1)  # descending
    probs = torch.softmax(values, dim=-1)
    if s.top_p < 1.0:
        ahead = probs.cumsum(-1) - probs
        probs = probs.masked_fill(ahead >= s.top_p, 0.0)
    order = index.argsort(-1)  # back to vocabulary order, as the full-row draw walks it
    index, probs = index.gather(-1, order), probs.gather(-1, order)
    cdf = probs.double().cumsum(-1)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).clamp(max=s.top_k - 1)
    return index.gather(-1, pick).squeeze(-1)


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, L] from an attention mask: 0 at each row's first real token, so left padding
    changes no position (what transformers' generate does)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class CachedDecoder:
    """Feeds a decoder-only transformers LM a growing sequence of input embeddings with a KV cache.

    The first call is the prefill with `mask` ([N, L], 0 on left padding); each later call appends n
    always-valid positions. Returns the last hidden states [N, n, D].
    """

    def __init__(self, lm: torch.nn.Module, mask: torch.Tensor) -> None:
        from transformers import DynamicCache

        self.lm, self.mask = lm, mask
        self.cache = DynamicCache(config=lm.config)
        self.next_pos: torch.Tensor | None = None

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        n = embeds.shape[1]
        if self.next_pos is None:
            pos = positions(self.mask)
        else:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], n)], dim=1)
            pos = self.next_pos + torch.arange(n, device=self.mask.device)
        out = self.lm(inputs_embeds=embeds, attention_mask=self.mask, position_ids=pos, cache=self.cache,
                      use_cache=True)
        self.next_pos = pos[:, -1:] + 1
        return out.last_hidden_state


def continuation_text(processor: Any, messages: list[dict], option: str, chat_template: str | None) -> str:
    """What the chat template appends after the generation prompt when the assistant answers `option`
    (e.g. " male" for Janus): the answer exactly as the model saw answers in training."""
    prefix = processor.apply_chat_template(messages, add_generation_prompt=True, chat_template=chat_template)
    answered = messages + [{"role": "assistant", "content": [{"type": "text", "text": option}]}]
    full = processor.apply_chat_template(answered, add_generation_prompt=False, chat_template=chat_template)
    if not full.startswith(prefix):
        raise FairgenError("the chat template does not extend the prompt with the answer; cannot score options")
    return full[len(prefix):]


def pad_continuations(continuations: list[list[int]], pad_id: int, like: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded with pad_id: (ids [K, longest] in like's dtype and device, valid [K, longest]
    bool, False on padding)."""
    longest = max(len(c) for c in continuations)
    cont = torch.full((len(continuations), longest), pad_id, dtype=like.dtype, device=like.device)
    valid = torch.zeros((len(continuations), longest), dtype=torch.bool, device=like.device)
    for i, c in enumerate(continuations):
        cont[i, :len(c)] = torch.tensor(c, dtype=like.dtype)
        valid[i, :len(c)] = True
    return cont, valid


@torch.no_grad()
def option_logprobs(model: Any, context: dict[str, torch.Tensor], continuations: list[list[int]],
                    pad_id: int) -> torch.Tensor:
    """Log-probability (float64 [K]) of each token continuation after one context, in one batched forward.

    context: the processor's output for one row (input_ids [1, L], attention_mask, pixel_values, ...),
    on the model's device. Rows are the context followed by a continuation, right-padded, so every row's
    positions are those of an unpadded sequence.
    """
    k = len(continuations)
    cont, valid = pad_continuations(continuations, pad_id, context["input_ids"])
    longest = cont.shape[1]
    inputs = {name: t.repeat(k, *[1] * (t.dim() - 1)) for name, t in context.items() if torch.is_tensor(t)}
    inputs["input_ids"] = torch.cat([inputs["input_ids"], cont], dim=1)
    inputs["attention_mask"] = torch.cat([inputs["attention_mask"], valid.long()], dim=1)
    # Logits only where a continuation token is predicted: the last context position onwards.
    logits = model(**inputs, logits_to_keep=longest + 1).logits[:, :longest]
    logp = torch.log_softmax(logits.double(), dim=-1).gather(-1, cont.unsqueeze(-1)).squeeze(-1)
    return (logp * valid).sum(-1)


def option_distribution(options: Sequence[str], logprobs: torch.Tensor, other_key: str) -> dict[str, float]:
    """{option: probability renormalised over the options, other_key: mass outside all of them}."""
    total = torch.logsumexp(logprobs, dim=0)
    out = {o: float(torch.exp(lp - total)) for o, lp in zip(options, logprobs)}
    out[other_key] = float(max(0.0, 1.0 - torch.exp(total).item()))
    return out


def check_options(family: str, options: Sequence[str]) -> None:
    """Options must be distinct, non-empty strings."""
    if not options or any(not isinstance(o, str) or not o.strip() for o in options) or len(set(options)) != len(options):
        raise FairgenError(f"{family}: answer options must be distinct non-empty strings (got {list(options)!r})")


def to_pil(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> list[Image.Image]:
    """Decoder output [B, 3, H, W], normalised with the image processor's mean/std, -> RGB images. The
    conversion to 8 bits runs where the pixels are (a GPU's batch crosses to the host as bytes, a quarter
    of its float32 size, and the host does no per-pixel arithmetic: 0.8 s per batch of 67 at 384x384
    on an H100 host when the host did it)."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(1, -1, 1, 1)
    x = (pixels.detach().float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [Image.fromarray(a, "RGB") for a in x.permute(0, 2, 3, 1).contiguous().cpu().numpy()]


def linear_names(root: torch.nn.Module, prefix: str) -> list[str]:
    """Full names of the nn.Linear modules of `root` under `prefix` (e.g. 'model.language_model.layers.')."""
    return [n for n, m in root.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)]


def parse_flag(family: str, name: str, value: Any) -> bool:
    """An on/off model option: a bool, or true/false/1/0/yes/no/on/off as a string or int (--model-option)."""
    if isinstance(value, bool):
        return value
    words = {"true": True, "1": True, "yes": True, "on": True,
             "false": False, "0": False, "no": False, "off": False}
    flag = words.get(str(value).strip().lower())
    if flag is None:
        raise FairgenError(f"{family}: option {name} takes true or false (got {value!r})")
    return flag


def check_batch(family: str, prompts: Sequence[Any], seeds_or_images: Sequence[Any], what: str) -> None:
    if len(prompts) != len(seeds_or_images):
        raise FairgenError(f"{family}: {len(prompts)} prompts but {len(seeds_or_images)} {what}")
    if not prompts:
        raise FairgenError(f"{family}: empty batch")


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
