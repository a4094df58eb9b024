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
    """

    name: str
    attributes: tuple[str, ...]

    def provenance(self) -> dict[str, Any]:
        """What identifies the backend's weights for the run manifest."""
        ...

    def perceive(self, images: Sequence[Image.Image]) -> list[Perception]:
        """One Perception per image, in order; never drops an image."""
        ...
