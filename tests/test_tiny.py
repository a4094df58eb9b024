"""fairgen-tiny trained for real: the smoke recipe (tokenizer + LM on six concepts) once per test session,
on CPU, then the acceptance checks of issue 4 on it."""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fairgen.models.protocols import OTHER
from fairgen.models.tiny import TinyModel, load
from fairgen.models.tiny.cli import tiny_app
from fairgen.models.tiny.data import GROUPS, probe_question
from fairgen.models.tiny.train import RECIPES, train
from fairgen.types import FairgenError, Prompt
from fairgen.world import read, render


@contextmanager
def _one_thread():
    """On a busy 2-core machine, two OpenMP threads waiting on each other made training and generation
    5-10x slower (measured); one thread is at most 2x slower on an idle machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> TinyModel:
    with _one_thread():
        return train(None, tmp_path_factory.mktemp("tiny") / "smoke", RECIPES["smoke"], seed=0)


@pytest.fixture(autouse=True)
def _single_thread():
    with _one_thread():
        yield


def _losses(model: TinyModel, stage: str) -> list[float]:
    lines = (model.directory / "train_log.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["stage"] == stage]


def test_losses_fall(smoke: TinyModel) -> None:
    for stage in ("tokenizer", "lm"):
        loss = _losses(smoke, stage)
        assert np.mean(loss[-3:]) < 0.5 * np.mean(loss[:2]), (stage, loss)


def test_tokenizer_round_trips_read_back(smoke: TinyModel) -> None:
    rng = np.random.default_rng(123)
    n, ok = 200, 0
    originals = [
        render(*GROUPS[int(rng.integers(len(GROUPS)))], f"held-out {i}", 10**7 + i) for i in range(n)
    ]
    for original, back in zip(originals, smoke.decode_tokens(smoke.encode_image(originals))):
        truth, got = read(original), read(back)
        ok += got.face and got.label() == truth.label() and got.concept_read == truth.concept_read
    assert ok / n >= 0.95


def test_answer_distribution_over_multi_token_options(smoke: TinyModel) -> None:
    image = render("female", "indian", "young", "nurse", 5)
    for img in (image, None):
        out = smoke.answer_distribution(
            img, probe_question("race", "nurse"), ["white", "black", "asian", "indian", "unknown"]
        )
        assert abs(sum(v for k, v in out.items() if k != OTHER) - 1) < 1e-6
        assert 0.0 <= out[OTHER] <= 1.0


def test_batch_invariance_with_guidance_and_top_p(smoke: TinyModel) -> None:
    settings = {"cfg": 3.0, "temperature": 0.9, "top_p": 0.6}
    prompts = [
        "A photo of the face of a nurse, a person",
        "A photo of the face of a female CEO, a person",
        "A headshot of an accountant, a person",
        "x",
        "A photo of the face of a nurse, a person",
        "A photo of the face of an old Asian male judge, a person",
        "",
        "A close-up photo of a chef's face",
    ]
    seeds = list(range(100, 108))
    batch = smoke.generate(prompts, seeds, **settings)
    alone = [smoke.generate([p], [s], **settings)[0] for p, s in zip(prompts, seeds)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(alone, batch))


def test_cli_train_reuses_tokenizer_and_logs(smoke: TinyModel, tmp_path) -> None:
    out = tmp_path / "cli"
    result = CliRunner().invoke(
        tiny_app,
        [
            "train",
            "--recipe",
            "smoke",
            "--steps",
            "3",
            "--out",
            str(out),
            "--tokenizer-from",
            str(smoke.directory),
            "--seed",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["stage"] == "lm"] == [0, 2]
    # The text-gain check runs on every 1/20 of the run, and at the end.
    assert [r["step"] for r in records if r["stage"] == "lm-eval"] == [1, 2, 3]
    model = load(out)
    assert torch.equal(
        model.encode_image([render("male", "white", "old", "judge", 1)]),
        smoke.encode_image([render("male", "white", "old", "judge", 1)]),
    )
    bad = CliRunner().invoke(tiny_app, ["train", "--recipe", "nope", "--out", str(out)])
    assert bad.exit_code != 0
    bad = CliRunner().invoke(tiny_app, ["train", "--recipe", "smoke", "--top-p", "1.5", "--out", str(tmp_path / "p")])
    assert bad.exit_code != 0 and "top_p" in str(bad.exception) and not (tmp_path / "p").exists()

    # --init-from continues the smoke model: its first loss is the trained model's, far below a fresh LM's.
    cont = tmp_path / "cont"
    args = ["train", "--recipe", "smoke", "--steps", "1", "--out", str(cont), "--seed", "1"]
    result = CliRunner().invoke(tiny_app, [*args, "--init-from", str(smoke.directory)])
    assert result.exit_code == 0, result.output
    first = [json.loads(line) for line in (cont / "train_log.jsonl").read_text().splitlines()][0]
    fresh = [r for r in records if r["stage"] == "lm"][0]
    assert first["stage"] == "lm" and first["loss"] < 0.7 * fresh["loss"]
    assert load(cont).training["init_from"]["seed"] == 0 and load(cont).default_sampling == {}
    # --top-p is recorded as the new checkpoint's default sampling; continuing it keeps it.
    result = CliRunner().invoke(tiny_app, [*args[:-4], "--out", str(tmp_path / "p"), "--init-from", str(cont), "--top-p", "0.8"])
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "p").default_sampling == {"top_p": 0.8}
    result = CliRunner().invoke(tiny_app, [*args[:-4], "--out", str(tmp_path / "q"), "--init-from", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert load(tmp_path / "q").default_sampling == {"top_p": 0.8}


def test_checkpoint_default_sampling(smoke: TinyModel, tmp_path) -> None:
    """A checkpoint's `sampling` is what generate() uses for arguments not given; arguments given win;
    run manifests record the defaults; a bad `sampling` is refused with one line."""
    from fairgen.audit import audit
    from fairgen.models.tiny.adapter import RAW_SAMPLING

    ckpt = tmp_path / "ckpt"
    shutil.copytree(smoke.directory, ckpt)  # not smoke.save(): that would move the shared fixture
    config = json.loads((ckpt / "config.json").read_text())
    assert "sampling" not in config and smoke.default_sampling == {}
    (ckpt / "config.json").write_text(json.dumps({**config, "sampling": {"top_p": 0.3}}))
    model = load(ckpt)
    assert model.default_sampling == {"top_p": 0.3} and model.config()["sampling"] == {"top_p": 0.3}

    prompts, seeds = ["A photo of the face of a nurse, a person"] * 16, list(range(16))
    default = model.generate_tokens(prompts, seeds)
    assert torch.equal(default, smoke.generate_tokens(prompts, seeds, top_p=0.3))
    raw = model.generate_tokens(prompts, seeds, **RAW_SAMPLING)
    assert torch.equal(raw, smoke.generate_tokens(prompts, seeds))
    assert not torch.equal(default, raw)  # nucleus 0.3 cuts this model's tail on some of 16 x 64 tokens

    nurse = Prompt(id="nurse", text=prompts[0], concept="nurse")
    run = audit(model, [nurse], images_per_prompt=2, out=tmp_path / "run", sampling={"cfg": 2.0})
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert run.results["sampling"] == {"cfg": 2.0}  # as given; the defaults it completes are the model's:
    assert manifest["model_provenance"]["default_sampling"] == {**RAW_SAMPLING, "top_p": 0.3}

    for bad in ({"top_k": 5}, {"top_p": "high"}, {"top_p": 1.5}):
        (ckpt / "config.json").write_text(json.dumps({**config, "sampling": bad}))
        with pytest.raises(FairgenError, match="sampling|top_p"):
            load(ckpt)


def test_eval_measures_default_and_raw_sampling(smoke: TinyModel, tmp_path) -> None:
    from fairgen.models.tiny.adapter import RAW_SAMPLING
    from fairgen.models.tiny.evaluate import evaluate
    from fairgen.world import WorldSpec

    numbers = evaluate(smoke, WorldSpec.default(), images=4, concepts=2, batch_size=64)
    assert numbers["sampling"] == numbers["raw"]["sampling"] == RAW_SAMPLING
    assert numbers["raw"]["face_rate"] == numbers["face_rate"]  # no default sampling: measured once
    assert numbers["explicit_images_per_group"] == 2  # 2 prompts x 4 // 4 images, every test prompt
    assert set(numbers["explicit_followed_by_group"]["race"]) == {"white", "black", "asian", "indian"}

    shutil.copytree(smoke.directory, tmp_path / "c")
    config = json.loads((tmp_path / "c" / "config.json").read_text())
    (tmp_path / "c" / "config.json").write_text(json.dumps({**config, "sampling": {"top_p": 0.3}}))
    numbers = evaluate(load(tmp_path / "c"), WorldSpec.default(), images=4, concepts=2, batch_size=64)
    assert numbers["sampling"] == {**RAW_SAMPLING, "top_p": 0.3}
    assert numbers["raw"]["sampling"] == RAW_SAMPLING
    for key in ("face_rate", "concept_match", "race_share_error", "explicit_followed"):
        assert key in numbers and key in numbers["raw"]


def test_resume_with_other_weights_is_refused(smoke: TinyModel, tmp_path) -> None:
    """The same model spec with other weights (e.g. a new packaged checkpoint) must not extend an old run."""
    from fairgen.audit import audit

    ckpt = tmp_path / "ckpt"
    shutil.copytree(smoke.directory, ckpt)
    nurse = Prompt(id="nurse", text="A photo of the face of a nurse, a person", concept="nurse")
    audit(f"tiny:{ckpt}", [nurse], images_per_prompt=2, out=tmp_path / "run")
    audit(f"tiny:{ckpt}", [nurse], images_per_prompt=3, out=tmp_path / "run")  # same weights: resumes
    model = load(ckpt)
    with torch.no_grad():
        next(model.lm.parameters()).add_(0.01)
    model.save(ckpt)
    with pytest.raises(FairgenError, match=r"a different model_provenance\.sha256"):
        audit(f"tiny:{ckpt}", [nurse], images_per_prompt=4, out=tmp_path / "run")


def test_eval_cli_understanding_is_read_from_the_images(tmp_path) -> None:
    """`fairgen tiny eval` on the packaged model: every render's attributes are answered right (accuracy 1 on
    8 random renders of 16 groups; a model that ignored the image gives one answer to all of them, right
    only on the renders of that one group), and the numbers reach the JSON file and stdout alike."""
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(tiny_app, ["eval", "--images", "8", "--concepts", "1", "--out", str(out)])
    assert result.exit_code == 0, result.output
    numbers = json.loads(out.read_text())
    assert json.loads(result.stdout) == numbers
    assert numbers["understanding_accuracy"] == {"gender": 1.0, "race": 1.0, "age": 1.0}
    assert numbers["images_per_prompt"] == 8 and numbers["prompts"] == 1
