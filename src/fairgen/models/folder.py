"""`folder:<dir>`: audit images already on disk instead of generating them.

Mapping rules (README "Auditing images on disk"):
  fairgen's own:  <dir>/images/<prompt_id>/<sample>.png (a run directory) or <dir>/<prompt_id>/<sample>.png;
                  used when any subfolder is named after a prompt id of the suite.
  Shen et al.'s:  <dir>/prompt_<i>/img_<j>.jpg|png, prompt i = the i-th prompt of the suite counted from 0.
                  Folders numbered from 1 (no prompt_0) are refused as ambiguous, as is a prompt_<i> beyond
                  the suite.
Images of a prompt are the files (never folders) with an image suffix, in numeric order of their names;
sample k is the k-th. A file that cannot be decoded (unreadable, truncated, a dangling link) is recorded as
unreadable and the audit goes on. What did not map (subfolders matching no prompt, prompts without a folder)
is in `coverage()`, which the audit reports in the console, results.json and the report.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..types import FairgenError, Prompt

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_SHEN_DIR = re.compile(r"^prompt_(\d+)$")
_NUMBER = re.compile(r"(\d+)")


def _numeric_key(path: Path) -> tuple[int, str]:
    numbers = _NUMBER.findall(path.stem)
    return (int(numbers[-1]) if numbers else -1, path.name)


class FolderModel:
    """Images on disk behind the model protocol's reading side (it cannot generate)."""

    def __init__(self, root: str | Path, device: str | None = None) -> None:
        """root: the folder (`folder:<dir>`). device: accepted like every family's; reading uses none."""
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FairgenError(f"folder model: {root} is not a directory")
        self.root = root.resolve()  # records name absolute files: reports resolve wherever they are read
        self.spec = f"folder:{root}"
        self._files: dict[str, list[Path]] = {}
        self._layout: str | None = None
        self._unmatched: list[str] = []

    def bind(self, prompts: Sequence[Prompt]) -> None:
        """Match the folder's subdirectories to the suite's prompts (called once per audit)."""
        base = self.root / "images" if (self.root / "images").is_dir() else self.root
        subdirs = {d.name: d for d in base.iterdir() if d.is_dir()}
        by_id = {p.id: subdirs[p.id] for p in prompts if p.id in subdirs}
        shen = {int(m.group(1)): d for name, d in subdirs.items() if (m := _SHEN_DIR.match(name))}
        if by_id:
            self._layout = "fairgen"
            dirs = by_id
        elif shen:
            self._layout = "shen"
            if 0 not in shen:
                raise FairgenError(
                    f"folder {self.root}: prompt_<i> folders start at prompt_{min(shen)}, not prompt_0; fairgen "
                    "counts prompts from 0, so the mapping is ambiguous: rename them from prompt_0 or name "
                    "the folders by prompt id"
                )
            if max(shen) >= len(prompts):
                raise FairgenError(
                    f"folder {self.root} has prompt_{max(shen)} but the suite has only {len(prompts)} prompts "
                    "(prompt_0 is the first)"
                )
            dirs = {prompts[i].id: d for i, d in shen.items()}
        else:
            raise FairgenError(
                f"folder {self.root} holds neither <prompt_id>/ folders of this suite nor prompt_<i>/ folders"
            )
        used = {d.name for d in dirs.values()}
        self._unmatched = sorted(name for name in subdirs if name not in used)
        self._files = {
            pid: sorted((f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir()),
                        key=_numeric_key)
            for pid, d in dirs.items()
        }

    def coverage(self, prompts: Sequence[Prompt], asked: int) -> dict[str, Any]:
        """How the folder met the plan: {"layout", "unmatched_folders": [names], "prompts_without_images":
        [ids], "prompts_short": {id: images found} (fewer than `asked`)}."""
        counts = {p.id: self.available(p) for p in prompts}
        return {"layout": self._layout, "unmatched_folders": list(self._unmatched),
                "prompts_without_images": [pid for pid, n in counts.items() if n == 0],
                "prompts_short": {pid: n for pid, n in counts.items() if 0 < n < asked}}

    def available(self, prompt: Prompt) -> int:
        """How many images the folder holds for this prompt."""
        return len(self._files.get(prompt.id, []))

    def source(self, prompt: Prompt, sample: int) -> Path:
        """The file of sample `sample` of `prompt`."""
        return self._files[prompt.id][sample]

    def read(self, prompt: Prompt, sample: int) -> tuple[Image.Image | None, str | None]:
        """(image, None), or (None, why) when the file cannot be decoded."""
        path = self.source(prompt, sample)
        try:
            with Image.open(path) as im:
                im.load()  # decode now: a truncated file fails here, not later
                return im.convert("RGB"), None
        except (OSError, SyntaxError, ValueError) as e:
            return None, f"unreadable: {type(e).__name__}: {e}"

    def provenance(self) -> dict[str, Any]:
        """Layout and a hash over the file list (names, sizes and modification times: a replaced file
        changes it), cheap even for large folders."""
        import hashlib

        h = hashlib.sha256()
        for pid in sorted(self._files):
            for f in self._files[pid]:
                try:
                    st = f.stat()
                except OSError:  # a dangling link: its own target's name
                    st = f.lstat()
                h.update(f"{pid}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
        return {"folder": str(self.root), "layout": self._layout, "listing_sha256": h.hexdigest()}


__all__ = ["FolderModel"]
