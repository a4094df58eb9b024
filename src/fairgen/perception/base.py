"""The perception protocol (docs/architecture.md, "Protocols"): detect the face, classify perceived attributes."""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

from PIL import Image

from ..types import Perception


@runtime_checkable
class PerceptionBackend(Protocol):
    """A face detector plus attribute classifiers.

    name: the backend's name as given to --perception.
    attributes: the attributes it measures (keys of types.ATTRIBUTES); others are "not measured".
    Optional: process_safe = True says the backend may be pickled to a worker process and perceive there
    with the same results (CPU only, no open handles): audits then perceive in their host worker
    processes (hostwork.py). Without it (GPU backends, plugins) perception stays in the main process.
    """

    name: str
    attributes: tuple[str, ...]

    def provenance(self) -> dict[str, Any]:
        """What identifies the backend's weights for the run manifest."""
        ...

    def perceive(self, images: Sequence[Image.Image]) -> list[Perception]:
        """One Perception per image, in order; never drops an image."""
        ...
