"""The conformance suite's fixtures: one tiny offline instance per model family.

Each file in fixtures/ describes one family (docs/architecture.md, "Adding a model family"):
    checkpoint(root: Path) -> str   writes a tiny checkpoint under root, returns its spec string
    OPTIONS: dict                   options for models.load (the device is always "cpu")
    SAMPLING: dict (optional)       extra generate() settings (e.g. diffusers' steps)
    REQUIRES: str (optional)        a package the family needs; the family is skipped without it
The suite loads every instance through fairgen.models.load, as a user's spec would be.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from fairgen import models

HERE = Path(__file__).parent
PLUGIN_SITE = HERE / "plugin_site"


def _fixture_modules() -> dict[str, ModuleType]:
    out = {}
    for path in sorted((HERE / "fixtures").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"conformance_fixture_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out[path.stem] = module
    return out


FAMILY_FIXTURES = _fixture_modules()


@pytest.fixture(scope="session")
def plugin_site():
    """The test plugin package on sys.path (and PYTHONPATH, for CLI subprocesses), as pip would leave it
    (the package beside its *.dist-info)."""
    before = os.environ.get("PYTHONPATH")
    sys.path.insert(0, str(PLUGIN_SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PLUGIN_SITE), before]))
    importlib.invalidate_caches()
    yield PLUGIN_SITE
    sys.path.remove(str(PLUGIN_SITE))
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before
    importlib.invalidate_caches()


@dataclass
class Case:
    """One family's conformance instance: its spec and options, the loaded model, generate() settings."""

    name: str
    spec: str
    options: dict[str, Any]
    sampling: dict[str, Any] = field(default_factory=dict)
    model: Any = None

    def fresh(self) -> Any:
        """Another instance, for tests that change the model (LoRA injection)."""
        return models.load(self.spec, device="cpu", **self.options)


@pytest.fixture(scope="module", params=sorted(FAMILY_FIXTURES))
def case(request, tmp_path_factory, plugin_site) -> Case:
    module = FAMILY_FIXTURES[request.param]
    if getattr(module, "REQUIRES", None) and importlib.util.find_spec(module.REQUIRES) is None:
        pytest.skip(f"{request.param} needs {module.REQUIRES}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models on a shared machine: one thread is faster
    spec = module.checkpoint(tmp_path_factory.mktemp(request.param))
    c = Case(request.param, spec, dict(module.OPTIONS), dict(getattr(module, "SAMPLING", {})))
    c.model = c.fresh()
    yield c
    torch.set_num_threads(threads)
