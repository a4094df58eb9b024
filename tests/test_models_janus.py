"""janus: a tiny random Janus saved with save_pretrained and loaded back through `janus:<dir>`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import fairgen
from conftest import write_suite
from fairgen import models
from fairgen.models import OTHER
from fairgen.types import FairgenError, Prompt
from test_models_checkpoints import emu3_dir, janus_dir, random_images  # noqa: F401  (session fixtures)

PROMPTS = ["A photo of the face of a nurse, a person", "A photo of the face of a firefighter"]
QUESTION = ("What is the gender of a nurse? Possible answers: male, female, unknown. "
            "Answer with a single word.")


@pytest.fixture(scope="module")
def janus(janus_dir):  # noqa: F811
    return models.load(f"janus:{janus_dir}")


def test_greedy_generation_matches_transformers(janus):
    """Under greedy decoding the adapter's sampler is upstream's model.generate(generation_mode="image"),
    token for token, including the guidance batch and left padding of prompts of different lengths."""
    ours = janus.generate_tokens(PROMPTS, [1, 2], cfg=3.0, temperature=0)
    ids, mask = janus._generation_inputs(PROMPTS)
    # Upstream reads <begin_of_image> from generation_kwargs, which converted checkpoints carry.
    janus.hf.generation_config.generation_kwargs = {"boi_token_id": janus.boi_id}
    upstream = janus.hf.generate(input_ids=ids, attention_mask=mask, generation_mode="image", do_sample=False,
                                 guidance_scale=3.0)
    assert torch.equal(ours, upstream)


def test_generate_is_seeded_per_image(janus):
    a = janus.generate_tokens(PROMPTS, [11, 12], cfg=3.0, temperature=0.9, top_p=0.6)
    b = janus.generate_tokens(PROMPTS, [11, 12], cfg=3.0, temperature=0.9, top_p=0.6)
    alone = janus.generate_tokens(PROMPTS[1:], [12], cfg=3.0, temperature=0.9, top_p=0.6)
    other_seed = janus.generate_tokens(PROMPTS, [13, 14], cfg=3.0, temperature=0.9, top_p=0.6)
    assert torch.equal(a, b)
    assert torch.equal(a[1], alone[0])  # an image's randomness is its own, not the batch's
    assert not torch.equal(a, other_seed)
    images = janus.generate(PROMPTS, [11, 12], cfg=3.0, temperature=0.9, top_p=0.6)
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert np.array_equal(np.asarray(images[0]), np.asarray(janus.decode_tokens(a[:1])[0]))


def test_bad_sampling_settings_are_input_errors(janus):
    with pytest.raises(FairgenError, match="top_p"):
        janus.generate(PROMPTS[:1], [0], top_p=1.5)
    with pytest.raises(FairgenError, match="unknown sampling"):
        janus.generate(PROMPTS[:1], [0], guidance=2.0)
    with pytest.raises(FairgenError, match="seeds"):
        janus.generate(PROMPTS, [0])


@pytest.mark.parametrize("with_image", [False, True])
def test_answer_distribution_is_exact_and_consistent(janus, with_image):
    """Options renormalise to 1; the raw mass they hold (1 - OTHER) equals the sum of each option scored
    alone, so batching and padding of the options change nothing."""
    image = random_images(1)[0] if with_image else None
    options = ["male", "female", "unknown"]
    dist = janus.answer_distribution(image, QUESTION, options)
    assert set(dist) == {*options, OTHER}
    assert sum(dist[o] for o in options) == pytest.approx(1.0, abs=1e-9)
    alone = [1.0 - janus.answer_distribution(image, QUESTION, [o])[OTHER] for o in options]
    assert 0.0 <= dist[OTHER] <= 1.0
    assert 1.0 - dist[OTHER] == pytest.approx(sum(alone), rel=1e-6)
    for o, raw in zip(options, alone):
        assert dist[o] == pytest.approx(raw / sum(alone), rel=1e-6)


def test_answer_distribution_rejects_bad_options(janus):
    with pytest.raises(FairgenError, match="distinct"):
        janus.answer_distribution(None, QUESTION, ["male", "male"])


def test_image_token_logprob_is_batch_invariant(janus):
    """Scored together (left padding) or one by one, each image's mean log-probability is the same."""
    images = random_images(2)
    together = janus.image_token_logprob(PROMPTS, images).detach()
    alone = torch.cat([janus.image_token_logprob([p], [im]).detach() for p, im in zip(PROMPTS, images)])
    assert together.shape == (2,)
    assert torch.allclose(together, alone, atol=1e-5)
    assert bool((together < 0).all())


def test_lora_trains_only_the_language_model(janus_dir):  # noqa: F811
    """LoRA on lora_targets wraps LM layers only (never the SigLIP tower, whose layers also have q_proj), and
    image_token_logprob's gradient reaches the LoRA weights and nothing else."""
    from peft import LoraConfig, get_peft_model

    model = models.load(f"janus:{janus_dir}")
    assert all(t.startswith("model.language_model.layers.") for t in model.lora_targets)
    assert any(t.endswith("self_attn.q_proj") for t in model.lora_targets)
    peft_model = get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_targets))
    wrapped = {n for n, m in model.lora_root.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == set(model.lora_targets)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and ".language_model." in n for n in trainable)
    lp = model.image_token_logprob(PROMPTS, random_images(2))
    lp.mean().backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all(g is not None for n, g in grads.items() if "lora_B" in n)
    assert any(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n)
    frozen = [p for p in peft_model.parameters() if not p.requires_grad]
    assert all(p.grad is None for p in frozen)


def test_tokenizer_round_trip_and_embeddings(janus):
    codes = janus.generate_tokens(PROMPTS[:1], [3], temperature=0)
    images = janus.decode_tokens(codes)
    again = janus.encode_image(images)
    assert again.shape == (1, 16) and again.dtype == torch.long
    assert int(again.max()) < 64
    emb = janus.understanding_embeddings(random_images(3))
    assert emb.shape == (3, 16, 32) and emb.dtype == torch.float32


def test_provenance_hashes_the_checkpoint(janus, janus_dir):  # noqa: F811
    prov = janus.provenance()
    assert prov["family"] == "janus" and prov["dtype"] == "float32"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(prov["sha256"])
    assert all(len(h) == 64 for h in prov["sha256"].values())
    assert prov["default_sampling"] == {"cfg": 5.0, "temperature": 1.0, "top_p": 1.0, "top_k": None}


def test_audit_through_the_cli(janus_dir, tmp_path, cli):  # noqa: F811
    """`fairgen audit --model janus:<dir>` end to end: random weights draw no faces, which the world reader
    reports (the right answer), and the manifest records the checkpoint's hashes."""
    suite = write_suite(tmp_path / "suite.yaml", ["nurse", "firefighter"])
    out = tmp_path / "run"
    proc = cli("audit", "--model", f"janus:{janus_dir}", "--suite", str(suite), "-n", "2", "--perception", "world",
               "--preset", "paper", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert [p["n_images"] for p in results["prompts"]] == [2, 2]
    assert all(p["n_faces"] == 0 for p in results["prompts"])
    assert len(list((out / "images").rglob("*.png"))) == 4
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.safetensors" in json.dumps(manifest)


def test_bad_checkpoints_are_one_line_errors(janus_dir, emu3_dir, tmp_path, monkeypatch):  # noqa: F811
    broken = tmp_path / "no-weights"
    shutil.copytree(janus_dir, broken)
    (broken / "model.safetensors").unlink()
    cases = {
        "no-weights": (str(broken), "safetensors"),
        "missing": (str(tmp_path / "nowhere"), "neither a directory"),
        "not-a-checkpoint": (str(tmp_path), "config.json"),
        "other-family": (str(emu3_dir), "'emu3' checkpoint"),
    }
    for name, (arg, message) in cases.items():
        with pytest.raises(FairgenError, match=message) as err:
            models.load(f"janus:{arg}")
        assert "\n" not in str(err.value), name
    with pytest.raises(FairgenError, match="unknown option"):
        models.load(f"janus:{janus_dir}", image_area=64)
    with pytest.raises(FairgenError, match="graphs takes true or false"):
        models.load(f"janus:{janus_dir}", graphs="maybe")
    with pytest.raises(FairgenError, match="needs the model on a CUDA device"):
        models.load(f"janus:{janus_dir}", device="cpu", graphs="true")
    with pytest.raises(FairgenError, match="not spread by device_map='auto'"):
        models.load(f"janus:{janus_dir}", device_map="auto", graphs="true")
    assert models.load(f"janus:{janus_dir}", device="cpu").graphs is False  # CUDA graphs: a CUDA default
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(FairgenError, match=r"transformers>=5\.23"):
        models.load(f"janus:{janus_dir}")


def test_cli_reports_bad_checkpoint_with_exit_2(tmp_path, cli):
    proc = cli("audit", "--model", f"janus:{tmp_path / 'nowhere'}", "--suite", "occupations:test", "-n", "1",
               "--perception", "world", "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: janus: ")


def test_python_api_audits_a_loaded_model(janus, tmp_path):
    res = fairgen.audit(model=janus, suite=[Prompt("p", PROMPTS[0], "nurse")], images_per_prompt=1,
                        perception_backend="world", out=tmp_path / "run", sampling={"cfg": 2.0})
    assert res.results["prompts"][0]["n_images"] == 1


def test_cli_audit_passes_model_options(janus_dir, tmp_path, cli):  # noqa: F811
    """`fairgen audit --model-option KEY=VALUE` reaches the family's loader: the dtype is the one the
    manifest records; a bad value, or an option for a family that takes none, is one line and exit 2."""
    from conftest import write_suite

    suite = write_suite(tmp_path / "one.yaml", ["nurse"])
    base = ["audit", "--suite", str(suite), "-n", "2", "--perception", "world"]
    proc = cli(*base, "--model", f"janus:{janus_dir}", "--model-option", "dtype=bf16",
               "--out", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["model_provenance"]["dtype"] == "bfloat16"
    for model, option, message in ((f"janus:{janus_dir}", "graphs=maybe", "graphs takes true or false"),
                                   ("world", "dtype=bf16", "unknown option(s) dtype; known: world_spec"),
                                   (f"janus:{janus_dir}", "dtype", "expects KEY=VALUE")):
        bad = cli(*base, "--model", model, "--model-option", option, "--out", str(tmp_path / "bad"))
        assert bad.returncode == 2 and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1


def test_a_checkpoint_without_chat_template_uses_janus_pro_s(janus, janus_dir, tmp_path):  # noqa: F811
    """Issue 24 (Found 9): a processor without a chat template fell through to a raw ValueError; it now gets
    Janus-Pro's own template, so prompts and images equal those of the checkpoint that ships it."""
    import json
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(janus_dir, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    (bare / "chat_template.json").unlink(missing_ok=True)
    config = json.loads((bare / "processor_config.json").read_text())
    config.pop("chat_template", None)
    (bare / "processor_config.json").write_text(json.dumps(config))
    model = models.load(f"janus:{bare}")
    assert not model.processor.chat_template
    assert torch.equal(model._generation_inputs(PROMPTS)[0], janus._generation_inputs(PROMPTS)[0])
    assert torch.equal(model.generate_tokens(PROMPTS, [3, 4], cfg=3.0, temperature=0),
                       janus.generate_tokens(PROMPTS, [3, 4], cfg=3.0, temperature=0))
