"""The run directory (docs/architecture.md, "Run directory"): manifest, images, perception records, results — atomic and resumable.

Layout:
  <out>/manifest.json, <out>/images/<prompt_id>/<sample:05d>.png, <out>/perception.jsonl,
  <out>/results.json, <out>/results.csv, <out>/report.html

Crash safety: files are written to a temporary name in the same directory and renamed into place, so a
file is either complete or absent. perception.jsonl is appended one whole batch per write(); a process
killed mid-write can leave a partial last line, which the next open cuts off (that record is then redone).

Several processes (docs/distributed.md): process r of a distributed audit appends its records to its own
shard <out>/perception-<r>.jsonl, under the same rules; the main process merges the shards into
perception.jsonl (settle_records), which leaves the run directory as one process would have written it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import tempfile
import threading
from concurrent.futures import Future
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from PIL import Image

from .types import FairgenError, Perception

RECORDS = "perception.jsonl"
SHARD_GLOB = "perception-*.jsonl"  # process r's records: perception-<r>.jsonl
MANIFEST = "manifest.json"


def derive_seed(run_seed: int, prompt_id: str, sample: int) -> int:
    """Seed of image `sample` of a prompt: a hash of (run seed, prompt id, sample), in [0, 2**63).

    It depends on nothing else, so an image is the same whatever the batch size or order of work.
    """
    digest = hashlib.blake2b(f"{run_seed}\x1f{prompt_id}\x1f{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> None:
    """Write data to path via a temporary file in the same directory and a rename.

    The rename makes the file complete-or-absent for any process crash. durable=True also fsyncs, so it
    survives a power loss; images skip that (an fsync per image dominates a fast audit's time) and are
    instead checked when read back on resume.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be shared
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def strict(obj: Any) -> Any:
    """obj with every NaN or infinite float replaced by None: JSON has no NaN, and a reader that meets a
    bare NaN fails (Python writes one unless told not to)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON (strict(obj); no NaN or Infinity ever written)."""
    return json.dumps(strict(obj), allow_nan=False, ensure_ascii=False, **kwargs)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (dumps(obj, indent=1) + "\n").encode())


CACHED_HASH_BYTES = 64 << 20  # files this large have their sha256 remembered (file_sha256)
_HASH_CACHE_LOCK = threading.Lock()


def cache_dir() -> Path:
    """fairgen's per-user cache: $FAIRGEN_CACHE_DIR, else $XDG_CACHE_HOME/fairgen, else ~/.cache/fairgen."""
    if os.environ.get("FAIRGEN_CACHE_DIR"):
        return Path(os.environ["FAIRGEN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fairgen"


def file_sha256(path: Path) -> str:
    """sha256 hex digest of a file. The digest of a file of CACHED_HASH_BYTES or more (model weights, whose
    hashing takes seconds: docs/performance.md) is kept in cache_dir()/sha256.json under the file's resolved path,
    with its size, modification time and inode, and reused while those are unchanged, as git's index
    does: a checkpoint is hashed once, not at every audit."""
    st = os.stat(path)
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino]
    key = str(Path(path).resolve())
    store = cache_dir() / "sha256.json"
    cached = st.st_size >= CACHED_HASH_BYTES
    if cached:
        entry = _json_object(store).get(key)
        if isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("sha256"), str):
            return entry["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    if cached:
        with _HASH_CACHE_LOCK:  # one writer per process; another process's entry may be lost (and recomputed)
            known = _json_object(store)  # read again: entries written meanwhile stay
            known[key] = {"stamp": stamp, "sha256": digest}
            try:
                atomic_write_json(store, known)
            except OSError:  # e.g. a read-only home: the digest is still right, only not remembered
                pass
    return digest


def in_background(fn: Callable[[], Any]) -> Future:
    """fn() started in a daemon thread (a process stopped by an error does not wait for it); its result or
    error in the Future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as e:  # raised where the result is read
            future.set_exception(e)

    threading.Thread(target=run, name=f"fairgen-{getattr(fn, '__name__', 'background')}", daemon=True).start()
    return future


def _json_object(path: Path) -> dict:
    """The JSON object in a file; {} where it is missing, unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def versions() -> dict[str, str]:
    """Versions of what produced a run, for the manifest."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("fairgen", "torch", "transformers", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def perception_record(prompt_id: str, sample: int, seed: int, seen: Perception,
                      source: str | None = None) -> dict[str, Any]:
    """One perception.jsonl line (docs/architecture.md, "Run directory"); `source` is the image file when images are read in place."""
    rec: dict[str, Any] = {
        "prompt_id": prompt_id,
        "sample": sample,
        "seed": seed,
        "face": bool(seen.face),
        "box": list(seen.box) if seen.box else None,
        "probs": seen.probs,
        "label": seen.label(),
    }
    if seen.concept_read is not None:
        rec["concept_read"] = seen.concept_read
    if seen.error:
        rec["error"] = seen.error
    if source is not None:
        rec["source"] = source
    return rec


# Config keys a resumed run may gain where it had none: a calibration changes no image or record, so one
# can be applied to a finished run (docs/calibration.md); changing or dropping it is refused like the rest.
ADDABLE = frozenset({"calibration_sha256"})
# Provenance keys that say where files lie or which package versions ran, not what the files hold: they may
# change between sessions of one run (a checkpoint moved, a package upgraded) without changing any image.
LOCATION_KEYS = frozenset({"path", "dir", "weights", "source", "folder", "versions", "transformers"})


def identity(provenance: Any) -> Any:
    """Provenance without LOCATION_KEYS (at any depth): what must match for a run to be resumed."""
    if isinstance(provenance, Mapping):
        return {k: identity(v) for k, v in provenance.items() if k not in LOCATION_KEYS}
    return provenance


def first_difference(old: Any, new: Any, where: str) -> str | None:
    """The dotted path of the first difference between two JSON-like values, with both sides shown briefly
    ("prompts.ceo.text ('a nurse' -> 'a CEO')"); None when they are equal."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in sorted(set(old) | set(new), key=str):
            found = first_difference(old.get(key), new.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if strict(old) == strict(new):  # a value read back from JSON equals the value written
        return None
    return f"{where or 'value'} ({_brief(old)} -> {_brief(new)})"


def _brief(value: Any, limit: int = 48) -> str:
    text = repr(value) if not isinstance(value, (list, tuple)) else json.dumps(strict(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _record(line: bytes, path: Path, number: int) -> dict[str, Any]:
    """One complete line of a records file; FairgenError naming the line when it is not a record (a crash
    leaves at most a partial last line, cut off before this: anything else means the file was edited)."""
    try:
        rec = json.loads(line)
        int(rec["sample"])
        str(rec["prompt_id"])
        return rec
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise FairgenError(f"{path} line {number} is not a perception record (was the file edited?); "
                           "delete the line or use another --out") from None


class RunStore:
    """One run directory. Open it with `RunStore.open(out, config)`."""

    def __init__(self, root: Path):
        self.root = root
        self.images = root / "images"

    @classmethod
    def open(cls, out: str | Path, config: Mapping[str, Any], provenance: Mapping[str, Any]) -> "RunStore":
        """Create the run directory, or reopen it to resume the same run.

        config: what defines the run's results (model, suite with its prompt texts, seeds, sampling,
        perception, calibration ...); reopening with a different config, or with a provenance entry that
        differs in anything but where its files lie (identity()), is refused with a line naming the first
        difference, so a resumed run never mixes two configurations, two world specs, two folders' files
        or two sets of weights. Nothing is written when it is refused. A provenance
        entry may be None at first and recorded later (`record`), as long as nothing of the run is on
        disk before it is: then a run stopped in between has nothing to mix.
        `images_per_prompt` may grow: the new images extend the plan.
        """
        root = Path(out)
        if root.exists() and not root.is_dir():
            raise FairgenError(f"output path {root} exists and is not a directory")
        store = cls(root)
        manifest_path = root / MANIFEST
        if manifest_path.exists():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise FairgenError(f"{manifest_path} is not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
            if not isinstance(manifest, dict):
                raise FairgenError(f"{manifest_path} is not a fairgen manifest")
            old = {k: v for k, v in dict(manifest.get("config") or {}).items() if k != "images_per_prompt"}
            new = {k: v for k, v in config.items() if k != "images_per_prompt"}
            for key in ADDABLE:  # given now, absent before: applies to the run's records, changes none
                if old.get(key) is None:
                    old.pop(key, None)
                    new.pop(key, None)
            where = first_difference(old, new, "")
            if where is not None:
                raise FairgenError(f"{root} holds a run made with a different {where}; use another --out, or "
                                   "the same inputs to resume (only --images-per-prompt may change)")
            for key, value in provenance.items():  # the same spec with other files: never mix their images
                was = manifest.get(key)
                if value is not None and was is not None:
                    where = first_difference(identity(was), identity(value), key)
                    if where is not None:
                        raise FairgenError(f"{root} holds a run made with a different {where}; use another "
                                           "--out, or the same inputs to resume")
            for path in [root / RECORDS, *store.shards()]:  # an edited records file: refused before any write
                if path.exists():
                    data = path.read_bytes()
                    for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), 1):
                        if line.strip():
                            _record(line, path, number)
            manifest["config"] = dict(config)
            manifest["resumed"] = manifest.get("resumed", []) + [now()]
            manifest.pop("finished", None)
        else:
            if root.exists() and any(p.name != ".gitkeep" for p in root.iterdir()):
                raise FairgenError(f"output directory {root} is not empty and holds no fairgen run")
            manifest = {"config": dict(config), "started": now(), "versions": versions()}
        manifest.update(provenance)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FairgenError(f"cannot create output directory {root}: {e.strerror}") from None
        store.write_json(MANIFEST, manifest)
        return store

    # --- images -------------------------------------------------------------------------------------
    def image_path(self, prompt_id: str, sample: int) -> Path:
        return self.images / prompt_id / f"{sample:05d}.png"

    def save_image(self, image: Image.Image, prompt_id: str, sample: int) -> None:
        import io

        buf = io.BytesIO()
        # zlib level 1, not PIL's 6: the same pixels (PNG is lossless) in files ~30 % larger, encoded ~1.5x
        # faster (1.56x on fairgen-tiny's audit images, one core)
        image.save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(self.image_path(prompt_id, sample), buf.getvalue(), durable=False)

    def load_image(self, prompt_id: str, sample: int) -> Image.Image | None:
        """A previously generated image, or None when absent or not decodable (e.g. lost in a power cut)."""
        path = self.image_path(prompt_id, sample)
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except (OSError, SyntaxError, ValueError):
            return None

    # --- perception records ------------------------------------------------------------------------
    def load_records(self) -> dict[tuple[str, int], dict[str, Any]]:
        """All complete records, keyed by (prompt_id, sample); cuts off a partial last line left by a crash."""
        path = self.root / RECORDS
        if not path.exists():
            return {}
        data = path.read_bytes()
        good_end = data.rfind(b"\n") + 1
        records: dict[tuple[str, int], dict[str, Any]] = {}
        for number, line in enumerate(data[:good_end].splitlines(), 1):
            if line.strip():
                rec = _record(line, path, number)
                records.setdefault((rec["prompt_id"], int(rec["sample"])), rec)
        if good_end < len(data):
            with open(path, "r+b") as f:
                f.truncate(good_end)
        return records

    def shard_path(self, rank: int) -> Path:
        """The records file of process `rank` of a distributed audit."""
        return self.root / f"perception-{rank}.jsonl"

    def append_records(self, records: Iterable[Mapping[str, Any]], shard: int | None = None) -> None:
        """Append records as JSON lines in one write, flushed to disk: to perception.jsonl, or with `shard`
        to that process's shard file."""
        blob = "".join(dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
        if not blob:
            return
        with open(self.root / RECORDS if shard is None else self.shard_path(shard), "ab") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())

    def shards(self) -> list[Path]:
        """The shard files present, by rank."""
        ranked = ((p.stem.rpartition("-")[2], p) for p in self.root.glob(SHARD_GLOB))
        return [p for _, p in sorted((int(r), p) for r, p in ranked if r.isdigit())]

    def shard_record_count(self) -> int:
        """Complete records in the shard files now (read while processes append: for progress only)."""
        return sum(path.read_bytes().count(b"\n") for path in self.shards())

    def settle_records(self, order: Sequence[tuple[str, int]]) -> None:
        """Make perception.jsonl the canonical records file: fold in the shard files (then removed), keep one
        record per key, the keys of `order` (the plan) in that order and then any others as found. That is
        what one uninterrupted process writes, so the file does not depend on how the run was split into
        processes and sessions. A file already canonical, with no shards, is left untouched.

        Records keep their bytes; the first copy of a key wins (perception.jsonl's, then the lowest rank's).
        The file is replaced atomically before the shards go, so a crash in between loses nothing.
        """
        shards = self.shards()
        lines: dict[tuple[str, int], bytes] = {}
        in_file: list[tuple[str, int]] = []  # perception.jsonl's keys as they stand, duplicates included
        for path in [self.root / RECORDS, *shards]:
            if not path.exists():
                continue
            data = path.read_bytes()
            for number, line in enumerate(data[: data.rfind(b"\n") + 1].splitlines(), 1):
                if line.strip():
                    rec = _record(line, path, number)
                    key = (rec["prompt_id"], int(rec["sample"]))
                    lines.setdefault(key, line + b"\n")
                    if path.name == RECORDS:
                        in_file.append(key)
        position = {key: i for i, key in enumerate(order)}
        canonical = sorted(lines, key=lambda key: position.get(key, len(position)))  # stable: others as found
        if not shards and canonical == in_file:
            return
        atomic_write_bytes(self.root / RECORDS, b"".join(lines[key] for key in canonical))
        for path in shards:
            path.unlink()

    # --- other files -------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        atomic_write_json(self.root / name, obj)

    def write_text(self, name: str, text: str) -> None:
        atomic_write_bytes(self.root / name, text.encode())

    def record(self, **entries: Any) -> None:
        """Set top-level entries of the manifest (e.g. a provenance made after the run opened)."""
        manifest = json.loads((self.root / MANIFEST).read_text())
        manifest.update(entries)
        self.write_json(MANIFEST, manifest)

    def finish(self) -> None:
        """Stamp the manifest as finished."""
        self.record(finished=now())
