"""Plugins: a model package found through the `fairgen.models` entry point group, `plugin:<module>:<Class>`,
and the family listing."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from conftest import write_suite
from fairgen import models
from fairgen.types import FairgenError

# A plugin that wraps "upstream code" (here: fairgen's own world renderer, so the audit has a known answer).
PLUGIN = '''
from fairgen.models.world import WorldModel


class WrappedModel:
    capabilities = frozenset({"generate"})

    def __init__(self, arg=""):
        self.spec = f"wrapped:{arg}"
        self.arg = arg
        self.world = WorldModel()

    def provenance(self):
        return {"plugin": "wrapped", "arg": self.arg}

    def generate(self, prompts, seeds, **sampling):
        return self.world.generate(prompts, seeds)


class NotAModel:
    def __init__(self, arg=""):
        pass
'''


@pytest.fixture
def plugin_path(tmp_path, monkeypatch) -> Path:
    """A package with an installed-style *.dist-info (entry_points.txt) on sys.path, as pip would leave it."""
    root = tmp_path / "site"
    (root / "wrapped_models").mkdir(parents=True)
    (root / "wrapped_models" / "__init__.py").write_text(PLUGIN)
    info = root / "wrapped_models-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wrapped-models\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [fairgen.models]
        wrapped = wrapped_models:WrappedModel
        broken = wrapped_models:Missing
        notamodel = wrapped_models:NotAModel
        world = wrapped_models:WrappedModel
        """))
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", str(root))  # for the CLI subprocess
    return root


def test_entry_point_spec_builds_class_with_argument(plugin_path):
    model = models.load("wrapped:/some/checkpoint")
    assert model.spec == "wrapped:/some/checkpoint" and model.arg == "/some/checkpoint"
    assert models.load("wrapped").arg == ""
    assert type(models.load("world")).__name__ == "WorldModel"  # built-in names win


def test_bad_plugins_are_input_errors(plugin_path):
    with pytest.raises(FairgenError, match="cannot load plugin 'broken'"):
        models.load("broken:x")
    with pytest.raises(FairgenError, match="does not implement the model protocol"):
        models.load("notamodel:x")
    with pytest.raises(FairgenError, match="known families: .*wrapped"):
        models.load("nosuchfamily:x")
    with pytest.raises(FairgenError, match="takes no options"):
        models.load("wrapped:x", dtype="bf16")


def test_plugin_module_class_spec(plugin_path):
    assert models.load("plugin:wrapped_models:WrappedModel").spec == "wrapped:"
    with pytest.raises(FairgenError, match="expected plugin:<module>:<Class>"):
        models.load("plugin:WrappedModel")


def test_describe_lists_families_and_plugins(plugin_path):
    rows = {r["family"]: r for r in models.describe()}
    assert {"world", "tiny", "folder", "janus", "emu3", "diffusers", "plugin", "wrapped"} <= set(rows)
    assert all(set(r) == {"family", "spec", "description", "needs", "usable", "note"} for r in rows.values())
    assert rows["janus"]["usable"] is True and "transformers>=" in rows["janus"]["needs"]
    assert rows["wrapped"]["usable"] is True
    world_plugin = [r for r in models.describe() if r["family"] == "world" and "plugin" in r["description"]]
    assert world_plugin and world_plugin[0]["usable"] is False  # shadowed by the built-in


def test_describe_reports_old_transformers(monkeypatch):
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    rows = {r["family"]: r for r in models.describe()}
    assert rows["janus"]["usable"] is False and "pip install" in rows["janus"]["note"]


def test_plugin_is_audited_through_the_cli(plugin_path, tmp_path, cli):
    suite = write_suite(tmp_path / "suite.yaml", ["nurse", "firefighter"])
    out = tmp_path / "run"
    proc = cli("audit", "--model", "wrapped:v1", "--suite", str(suite), "-n", "3", "--perception", "world",
               "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["model"] == "wrapped:v1"
    assert all(p["n_faces"] == 3 for p in results["prompts"])  # the wrapped renderer draws faces
    manifest = json.loads((out / "manifest.json").read_text())
    assert '"plugin": "wrapped"' in json.dumps(manifest)
