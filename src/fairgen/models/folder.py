"""`folder:<dir>`: audit images already on disk instead of generating them.

Two layouts are recognised:
  fairgen's own:  <dir>/images/<prompt_id>/<sample>.png (a run directory) or <dir>/<prompt_id>/<sample>.png
  Shen et al.'s:  <dir>/prompt_<i>/img_<j>.jpg|png, prompt i = the i-th prompt of the suite (0-based;
                  folders numbered exactly 1..P are taken as 1-based)
Images of a prompt are taken in numeric order of their file names; sample k is the k-th. A file that
cannot be decoded (unreadable, truncated) is recorded as unreadable and the audit goes on.
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
        self.root = root
        self.spec = f"folder:{root}"
        self._files: dict[str, list[Path]] = {}
        self._layout: str | None = None

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
            offset = 1 if sorted(shen) == list(range(1, len(prompts) + 1)) else 0
            if max(shen) - offset >= len(prompts):
                raise FairgenError(
                    f"folder {self.root} has prompt_{max(shen)} but the suite has only {len(prompts)} prompts"
                )
            dirs = {prompts[i - offset].id: d for i, d in shen.items()}
        else:
            raise FairgenError(
                f"folder {self.root} holds neither <prompt_id>/ folders of this suite nor prompt_<i>/ folders"
            )
        self._files = {
            pid: sorted((f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES), key=_numeric_key)
            for pid, d in dirs.items()
        }

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
        """Layout and a hash over the file list (names and sizes), cheap even for large folders."""
        import hashlib

        h = hashlib.sha256()
        for pid in sorted(self._files):
            for f in self._files[pid]:
                h.update(f"{pid}/{f.name}:{f.stat().st_size}\n".encode())
        return {"folder": str(self.root), "layout": self._layout, "listing_sha256": h.hexdigest()}


__all__ = ["FolderModel"]
