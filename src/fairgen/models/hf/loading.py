"""Finding, checking and loading a transformers checkpoint, and what identifies it (provenance)."""

from __future__ import annotations

import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from ...distributed import launch_rank
from ...store import file_sha256, in_background
from ...types import FairgenError
from ..sampling import Sampling
from .checks import first_line


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
            raise FairgenError(f"{family}: cannot fetch {arg} from the Hugging Face hub ({first_line(e)}); "
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
        raise FairgenError(f"{family}: cannot load {path}: {first_line(e)}") from None
    if device_map is None:
        model.to(device)
    return model.eval(), processor


class Fingerprint:
    """Provenance of a checkpoint directory: sha256 of its config, tokenizer and weight files. In the
    process that records provenance (rank 0 of a distributed run, or the only one), hashing starts in a
    background thread when the fingerprint is made (at model load, so it overlaps the load); elsewhere on
    first use. Files hash one per core at a time (hashlib runs without the GIL: a sharded checkpoint
    hashes in parallel), and `sha256` waits for them. Weights keep their digests in the user's cache
    (store.file_sha256); docs/performance.md, "Costs the code is shaped by", has the hashing rates."""

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


def generation_defaults(generation_config: Any, recommended: Sampling) -> Sampling:
    """A checkpoint's default sampling: its generation_config.json's guidance_scale, temperature, top_p and
    top_k where set, else the family's published recommendation."""
    gc = generation_config

    def pick(value: Any, fallback: Any) -> Any:
        return fallback if value is None else value

    return Sampling(cfg=float(pick(gc.guidance_scale, recommended.cfg)),
                    temperature=float(pick(gc.temperature, recommended.temperature)),
                    top_p=float(pick(gc.top_p, recommended.top_p)), top_k=pick(gc.top_k, recommended.top_k))


def linear_names(root: torch.nn.Module, prefix: str) -> list[str]:
    """Full names of the nn.Linear modules of `root` under `prefix` (e.g. 'model.language_model.layers.')."""
    return [n for n, m in root.named_modules() if n.startswith(prefix) and isinstance(m, torch.nn.Linear)]
