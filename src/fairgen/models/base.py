"""Kept for code written against earlier releases: the protocols now live in protocols.py, one per
capability (docs/architecture.md, "Protocols")."""

from .protocols import OTHER, Model

UnifiedModel = Model

__all__ = ["OTHER", "UnifiedModel"]
