"""Shared test helpers."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

# Weight digests the tests compute are remembered in a throwaway cache, not the user's (store.file_sha256).
os.environ.setdefault("FAIRGEN_CACHE_DIR", str(Path(tempfile.mkdtemp(prefix="fairgen-test-cache-"))))


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m fairgen ARGS` as a user would; returns the completed process (text mode)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "fairgen", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def write_suite(path: Path, concepts: list[str]) -> Path:
    """A user suite YAML with one neutral prompt per concept."""
    prompts = [{"id": c.replace(" ", "-"), "text": f"A photo of the face of a {c}, a person", "concept": c} for c in concepts]
    path.write_text(yaml.safe_dump({"name": path.stem, "prompts": prompts}))
    return path


def write_spec(path: Path, concepts: dict[str, dict]) -> Path:
    """A world spec YAML with a balanced default and the given concept distributions."""
    spec = {
        "default": {
            "gender": {"female": 0.5, "male": 0.5},
            "race": {"white": 0.25, "black": 0.25, "asian": 0.25, "indian": 0.25},
            "age": {"young": 0.5, "old": 0.5},
        },
        "concepts": concepts,
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def cli():
    return run_cli


FIX_CONCEPTS = ["accountant", "architect", "baker"]  # the first concepts of the default spec: all skewed male


@pytest.fixture(scope="session")
def mini(tmp_path_factory):
    """A fairgen-tiny checkpoint that has learned the skews of FIX_CONCEPTS (tokenizer barely trained; about
    8 s on one CPU thread): the fix tests' model."""
    from dataclasses import replace

    import torch

    from fairgen.models.tiny.tokenizer import TokenizerConfig
    from fairgen.models.tiny.train import RECIPES, train

    torch.set_num_threads(1)
    recipe = replace(RECIPES["smoke"], tokenizer=TokenizerConfig(width=16), tok_images=256, tok_steps=60,
                     n_layer=1, n_head=2, n_embd=32, renders_per_group=1, max_concepts=3, lm_steps=120, warmup=10)
    out = tmp_path_factory.mktemp("fix") / "mini"
    train(None, out, recipe, seed=0)
    return out


@pytest.fixture(scope="session")
def suites_dir(tmp_path_factory):
    """train.yaml (the first two FIX_CONCEPTS) and test.yaml (the third), one prompt per concept."""
    d = tmp_path_factory.mktemp("suites")
    write_suite(d / "train.yaml", FIX_CONCEPTS[:2])
    write_suite(d / "test.yaml", FIX_CONCEPTS[2:])
    return d
