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
    keys = {"family", "spec", "description", "capabilities", "options", "requirements", "usable", "note", "origin"}
    assert all(set(r) == keys for r in rows.values())
    assert rows["janus"]["usable"] is True and "transformers>=" in rows["janus"]["requirements"]
    assert {"dtype", "device_map", "graphs"} == set(rows["janus"]["options"])
    assert "lm_hooks" in rows["tiny"]["capabilities"] and rows["folder"]["capabilities"] == ["source"]
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


def test_entry_point_family_gets_device_dtype_and_options_like_a_builtin(plugin_site):
    """The test package's family (tests/models/plugin_site) is built by the registry with the device, the
    dtype and its own options, converted from --model-option strings as a built-in's are."""
    import torch

    model = models.load("testfamily:abc", device="cpu", dtype="bf16", width=16, seed=3)
    assert model.built_with == {"arg": "abc", "device": "cpu", "dtype": "bf16", "width": 16, "seed": 3}
    assert next(model.lm.parameters()).dtype == torch.bfloat16 and model.lm.cfg.n_embd == 16
    assert model.spec == "testfamily:abc" and models.family("testfamily").origin.startswith("entry point")
    strings = models.parse_options(["dtype=float32", "width=24"])
    assert models.load("testfamily", **strings).built_with == {"arg": "", "device": None, "dtype": "fp32",
                                                               "width": 24, "seed": 0}
    with pytest.raises(FairgenError, match="unknown option.*graphs; known: dtype, width, seed"):
        models.load("testfamily", graphs="true")
    with pytest.raises(FairgenError, match="option dtype takes one of bf16, fp16, fp32"):
        models.load("testfamily", dtype="int8")
    with pytest.raises(FairgenError, match="option width takes an integer"):
        models.load("testfamily", width="wide")
    # a built-in family's options go through the same checks
    with pytest.raises(FairgenError, match="option graphs takes true or false"):
        models.load("janus:/nonexistent", graphs="maybe")


def test_models_json_lists_the_registry(plugin_site, cli):
    proc = cli("models", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["family"]: r for r in json.loads(proc.stdout)}
    assert rows["testfamily"]["options"].keys() == {"dtype", "width", "seed"}
    assert rows["testfamily"]["usable"] is True and "entry point" in rows["testfamily"]["origin"]
    assert rows["emu3"]["options"].keys() == {"dtype", "device_map", "image_area", "negative_prompt"}
    assert set(rows["world"]["capabilities"]) == {"generate"}


def test_a_bare_class_plugin_refuses_a_device(plugin_path):
    with pytest.raises(FairgenError, match="bare class, which takes no device"):
        models.load("wrapped:x", device="cpu")


def test_family_entries_are_checked():
    from fairgen.models.registry import Family

    with pytest.raises(FairgenError, match="unknown capabilities"):
        Family(name="x", constructor=dict, spec="x", description="", capabilities=frozenset({"fly"}))
    with pytest.raises(FairgenError, match="needs an argument"):
        models.load("janus")
    with pytest.raises(FairgenError, match="takes no argument"):
        models.load("world:x")
