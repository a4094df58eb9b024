"""vila-u: the native port on a tiny random checkpoint in the official layout, held to upstream's own outputs
(tests/fixtures/vila_u_upstream.json, made by tests/fixtures/vila_u_upstream.py from upstream's code)."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fairgen import models
from fairgen.models import OTHER
from fairgen.models import vila_u_checkpoint as layout
from fairgen.types import FairgenError
from test_engine import cpu_varlen  # noqa: F401  (fixture)

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "vila_u_upstream.json").read_text())
PROMPTS = FIXTURE["prompts"]


@pytest.fixture(scope="session")
def vila_u_dir(tmp_path_factory) -> Path:
    return layout.write_random(tmp_path_factory.mktemp("vila-u") / "ckpt", corpus=layout.TEST_CORPUS)


@pytest.fixture(scope="module")
def vila(vila_u_dir):
    torch.set_num_threads(1)
    return models.load(f"vila-u:{vila_u_dir}", device="cpu")


def fixture_image() -> Image.Image:
    """The image the fixture encodes: torch's seeded uint8 noise at the tower's size."""
    g = torch.Generator().manual_seed(FIXTURE["image_seed"])
    side = int(round((len(FIXTURE["encoded_codes"][0]) // 4) ** 0.5)) * 8
    return Image.fromarray(torch.randint(0, 256, (1, side, side, 3), generator=g, dtype=torch.uint8)[0].numpy())


def test_checkpoint_is_the_one_the_fixture_was_made_from(vila_u_dir):
    """The writer is deterministic: otherwise the fixture describes other weights (regenerate it)."""
    found = {str(f.relative_to(vila_u_dir)): hashlib.sha256(f.read_bytes()).hexdigest()
             for f in sorted(vila_u_dir.rglob("*.safetensors"))}
    assert found == FIXTURE["checkpoint_sha256"], "checkpoint writer changed: rerun tests/fixtures/vila_u_upstream.py"


@pytest.mark.parametrize("engine", [True, False])
def test_greedy_codes_match_upstream(vila, engine):
    """Upstream's generate (guidance 3.0, its prompt and unconditional row, left padding) under argmax
    sampling, code for code, with fairgen's engine and with the reference loop."""
    ids, mask = vila._generation_rows(PROMPTS, 3.0)
    rows = [r[m.bool()].tolist() for r, m in zip(ids.cpu(), mask.cpu())]
    assert rows == FIXTURE["generation_rows"]
    codes = vila.generate_tokens(PROMPTS, [0, 1], cfg=3.0, temperature=0, engine=engine)
    assert codes.tolist() == torch.tensor(FIXTURE["greedy_codes"]).flatten(1).tolist()


def test_encoding_and_teacher_forced_logits_match_upstream(vila):
    image = fixture_image()
    codes = vila.encode_image([image])
    assert codes.tolist() == FIXTURE["encoded_codes"]
    z = vila.understanding_embeddings([image])
    assert torch.allclose(z, torch.tensor(FIXTURE["quantised_features"]), atol=1e-5)
    with torch.no_grad():
        feats = vila.projector(z)
        logits = vila.image_token_logits(PROMPTS[:1], codes)
    assert torch.allclose(feats, torch.tensor(FIXTURE["projected_features"]), atol=1e-5)
    expected = torch.tensor(FIXTURE["teacher_forced_logits"]).flatten(1, 2)
    assert logits.shape == expected.shape
    assert (logits - expected).abs().max() < 1e-4


def test_decoded_pixels_match_upstream(vila):
    """fp32: upstream's decoder with its bf16 cast made an fp32 one, to float precision. bf16 (the only way
    upstream's decoder runs as released): closer to upstream's bf16 output than that is to its own fp32
    output (bf16 rounding through a randomly initialised decoder: about 0.005 of a 0.15 mean level)."""
    codes = torch.tensor(FIXTURE["greedy_codes"])
    grid = vila.code_grid(codes.flatten(1))
    pixels = vila.vae.decode(grid)
    assert (pixels - torch.tensor(FIXTURE["decoded_pixels_fp32"])).abs().max() < 1e-4
    bf16 = copy.deepcopy(vila.vae).to(torch.bfloat16).decode(grid).float()
    upstream_bf16, upstream_fp32 = (torch.tensor(FIXTURE[k]) for k in ("decoded_pixels_bf16", "decoded_pixels_fp32"))
    assert (bf16 - upstream_bf16).abs().mean() < (upstream_bf16 - upstream_fp32).abs().mean()


@pytest.mark.parametrize("kind", ["image", "text"])
def test_option_logprobs_match_upstream(vila, kind):
    case = FIXTURE["options"][kind]
    options = [row["option"] for row in case["options"]]
    image = fixture_image() if kind == "image" else None
    context, tail = vila._context(image, FIXTURE["question"])
    assert [vila._continuation(tail, o) for o in options] == [row["continuation"] for row in case["options"]]
    ours = vila.option_logprobs(image, FIXTURE["question"], options)
    assert np.allclose(ours.numpy(), [row["logprob"] for row in case["options"]], atol=1e-6, rtol=1e-6)
    dist = vila.answer_distribution(image, FIXTURE["question"], options)
    assert sum(dist[o] for o in options) == pytest.approx(1.0) and 0.0 <= dist[OTHER] <= 1.0


def test_sampling_is_seeded_per_image_and_engine_equals_reference(vila):
    a = vila.generate_tokens(PROMPTS, [11, 12])
    assert torch.equal(a, vila.generate_tokens(PROMPTS, [11, 12]))
    assert torch.equal(a[1], vila.generate_tokens(PROMPTS[1:], [12])[0])  # its own stream, not the batch's
    assert not torch.equal(a, vila.generate_tokens(PROMPTS, [13, 14]))
    assert torch.equal(a, vila.generate_tokens(PROMPTS, [11, 12], engine=False))
    assert a.shape == (2, vila.n_image_tokens) and int(a.max()) < vila.vae.quantizer.codebook.shape[1]
    images = vila.generate(PROMPTS, [11, 12], top_k=5)
    assert [im.size for im in images] == [(32, 32)] * 2


def test_defaults_are_upstreams(vila):
    assert (vila.defaults.cfg, vila.defaults.temperature, vila.defaults.top_k, vila.defaults.top_p) == (3.0, 1.0, 900, 0.96)
    with pytest.raises(FairgenError, match="top_p"):
        vila.generate(PROMPTS[:1], [0], top_p=2.0)


def test_image_logprob_is_differentiable_through_lora(vila):
    from peft import LoraConfig, inject_adapter_in_model

    model = copy.copy(vila)
    model.root = copy.deepcopy(vila.root)
    model.llm, model.projector = model.root["llm"], model.root["mm_projector"]
    model.vae, model.depth = model.root["vision_tower"]["rqvaesiglip"], model.root["vision_tower"]["rqtransformer"]
    inject_adapter_in_model(LoraConfig(target_modules=model.lora_targets, r=2, init_lora_weights=False), model.root)
    image = fixture_image()
    logp = model.image_token_logprob(PROMPTS[:1], [image])
    logp.sum().backward()
    grads = [p.grad for n, p in model.root.named_parameters() if "lora_" in n]
    assert grads and all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert all(n.startswith("llm.model.layers.") for n, p in model.root.named_parameters() if "lora_" in n)
    with torch.no_grad():
        logits = model.image_token_logits(PROMPTS[:1], model.encode_image([image]))
    mean = torch.log_softmax(logits, -1).gather(-1, model.encode_image([image])[..., None]).mean()
    assert float(mean) == pytest.approx(float(logp.detach()), abs=1e-5)


def test_caption_logprob_is_the_answer_score(vila):
    image = fixture_image()
    score = vila.caption_logprob([image], ["female"], "Describe the image.")
    raw, n = vila._answer_logprobs(image, "Describe the image.", ["female"])
    assert float(score[0]) == pytest.approx(float(raw[0] / n[0]), abs=1e-6)


def test_round_trip_and_hooks(vila):
    image = fixture_image()
    codes = vila.encode_image([image])
    back = vila.decode_tokens(codes)[0]
    assert back.size == image.size
    assert vila.tokenizer_embeddings([image]).shape == (1, 32, 4, 4)
    assert vila.image_start_hidden(PROMPTS).shape == (2, 32)
    assert vila.provenance()["family"] == "vila-u" and vila.provenance()["sha256"]


def test_bad_checkpoints_are_input_errors(tmp_path, vila_u_dir):
    with pytest.raises(FairgenError, match="no config.json|neither"):
        models.load(f"vila-u:{tmp_path}")
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(vila_u_dir, broken)
    shutil.rmtree(broken / "vision_tower")
    with pytest.raises(FairgenError, match="vision_tower"):
        models.load(f"vila-u:{broken}")
    with pytest.raises(FairgenError, match="unknown option"):
        models.load(f"vila-u:{vila_u_dir}", device_map="auto")


def test_audit_locate_fix_through_the_cli(vila_u_dir, tmp_path):
    """The three commands end to end on the tiny checkpoint, on the CPU, as the CLI runs them (in process:
    the commands' code, not four interpreter start-ups), then an audit with the adapter fix trained."""
    from typer.testing import CliRunner

    from conftest import write_suite
    from fairgen.cli import app

    torch.set_num_threads(1)
    suite = write_suite(tmp_path / "test.yaml", ["nurse"])
    train = write_suite(tmp_path / "train.yaml", ["nurse", "firefighter"])
    spec = f"vila-u:{vila_u_dir}"

    def cli(*args: str) -> None:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == 0, (result.output[-2000:], result.exception)

    cli("audit", "--model", spec, "--suite", str(suite), "-n", "2", "--perception", "world", "--preset", "paper",
        "--out", str(tmp_path / "audit"))
    results = json.loads((tmp_path / "audit" / "results.json").read_text())
    assert results["prompts"][0]["n_images"] == 2
    manifest = json.loads((tmp_path / "audit" / "manifest.json").read_text())
    assert manifest["model_provenance"]["family"] == "vila-u"
    cli("locate", "--model", spec, "--suite", str(suite), "--audit", str(tmp_path / "audit"), "--labelled", "world:8",
        "--sequences", "2", "--batch-size", "8", "--out", str(tmp_path / "loc"))
    findings = json.loads((tmp_path / "loc" / "findings.json").read_text())
    assert {"understanding", "tokenizer", "language_model", "verdicts"} <= set(findings)
    cli("fix", "--model", spec, "--train-suite", str(train), "--test-suite", str(suite), "--method", "bpo",
        "--data-source", "world", "--perception", "world", "--images-per-group", "1", "--sft-steps", "2",
        "--bpo-steps", "2", "--units-per-batch", "2", "-n", "1", "--explicit-concepts", "1", "--explicit-images", "1",
        "--check-suites", "none", "--device", "cpu", "--dtype", "fp32", "--out", str(tmp_path / "fix"))
    log = [json.loads(line) for line in (tmp_path / "fix" / "train_log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["sft", "sft", "bpo", "bpo"]
    adapter = tmp_path / "fix" / "adapter"
    cli("audit", "--model", spec, "--adapter", str(adapter), "--suite", str(suite), "-n", "1", "--perception", "world",
        "--out", str(tmp_path / "tuned"))
    tuned = json.loads((tmp_path / "tuned" / "manifest.json").read_text())
    assert tuned["config"]["adapter"] == str(adapter)


@pytest.mark.parametrize("temperature", [0.8, 1.0])
def test_top_k_sampler_draws_what_filtering_the_whole_row_draws(temperature):
    """sampling.sample's top-k path (on the k kept logits) against the full-row rule it shortcuts."""
    from fairgen.models.sampling import Sampling, draw, filter_probs, sample

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 512, generator=g) * 3
    u = torch.rand(2000, generator=g, dtype=torch.float64)
    s = Sampling(cfg=1.0, temperature=temperature, top_p=0.9, top_k=40)
    full = draw(filter_probs(torch.softmax(logits / s.temperature, -1), s.top_k, s.top_p), u)
    assert torch.equal(sample(logits, s, u), full)


def test_bf16_tower_encodes_and_decodes(vila):
    """The tower in bf16 (a GPU's default): the quantiser works in the weights' dtype, as upstream's."""
    model = copy.copy(vila)
    model.vae, model.dtype = copy.deepcopy(vila.vae).to(torch.bfloat16), torch.bfloat16
    codes = model.encode_image([fixture_image()])
    assert codes.shape == (1, vila.n_image_tokens)
    assert (codes == vila.encode_image([fixture_image()])).float().mean() > 0.5  # bf16 rounding flips a few
    assert model.decode_tokens(codes)[0].size == (32, 32)


def test_lora_depth_option_adds_the_depth_transformer(vila_u_dir):
    from peft import LoraConfig, inject_adapter_in_model

    model = models.load(f"vila-u:{vila_u_dir}", device="cpu", lora_depth="true")
    depth = [n for n in model.lora_targets if n.startswith("vision_tower.rqtransformer.")]
    assert depth and len(model.lora_targets) == len(depth) + 14  # 2 LM layers x 7 linears
    inject_adapter_in_model(LoraConfig(target_modules=model.lora_targets, r=2, init_lora_weights=False), model.root)
    model.image_token_logprob(PROMPTS[:1], [fixture_image()]).sum().backward()
    grads = {n: p.grad for n, p in model.root.named_parameters() if "lora_" in n}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".rqtransformer." in n)


def test_fix_checkpointing_reaches_the_lm_layers(vila_u_dir):
    """`fairgen fix`'s gradient checkpointing reaches the LLM through lora_root (its decoder layers are
    checkpointed inside the block, not after it), and the LoRA gradients are those computed without it."""
    from peft import LoraConfig, inject_adapter_in_model

    from fairgen.fix.train import _checkpointing

    model = models.load(f"vila-u:{vila_u_dir}", device="cpu")
    inject_adapter_in_model(LoraConfig(target_modules=model.lora_targets, r=2, init_lora_weights=False), model.root)
    layer = model.llm.model.layers[0]
    image = fixture_image()

    def grads(on: bool) -> tuple[dict[str, torch.Tensor], bool]:
        model.root.zero_grad(set_to_none=True)
        with _checkpointing(model, on):
            engaged = bool(layer.gradient_checkpointing and layer.training)
            model.image_token_logprob(PROMPTS[:1], [image]).mean().backward()
        return {n: p.grad.clone() for n, p in model.root.named_parameters() if p.grad is not None}, engaged

    (plain, off), (checkpointed, on) = grads(False), grads(True)
    assert (off, on) == (False, True)
    assert plain.keys() == checkpointed.keys() and plain
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
    assert not layer.gradient_checkpointing and not layer.training  # switched off again afterwards


def _depth_inputs(vila, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(LM hidden states [rows, D_lm], codes [rows, depth], each depth's input [rows, depth, dim]) for random
    hidden states and codes: in_mlp_2(hidden), then in_mlp_1 of the running code sums, as generation forms them."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, vila.llm.config.hidden_size, generator=g)
    codes = torch.randint(0, vila.vae.quantizer.codebook.shape[1], (rows, vila.depth_codes), generator=g)
    running = vila.depth.in_mlp_1(vila.vae.quantizer.embed(codes).cumsum(-2)[:, :-1])
    return hidden, codes, torch.cat([vila.depth.in_mlp_2(hidden).unsqueeze(1), running], 1)


@torch.no_grad()
def test_cached_depth_pass_equals_recomputing_every_depth(vila):
    """The engine's depth transformer (one token per depth over a KV cache; its attention as plain products
    and a softmax; query|key|value stacked, or as the three modules where they are not plain Linear
    layers) against upstream's algorithm (all depths so far recomputed, attention by SDPA) and the
    teacher-forced forward the fixture holds to upstream: the same logits at every depth, fp32. The cache
    starts as NaN, so a read of a depth not yet written shows; a cache that missed earlier depths (a zeroed
    one) gives other logits."""
    hidden, codes, inputs = _depth_inputs(vila, 6, seed=3)
    teacher = vila.depth(hidden.unsqueeze(1), vila.vae.quantizer.embed(codes).unsqueeze(1))[:, 0]  # [6, depth, V]
    from dataclasses import replace

    heads = vila.depth.head_transformer.blocks[0].attn.heads
    stacked = vila.depth.new_cache(6)
    assert stacked.kv[0].shape == (2, 6, heads, vila.depth_codes, vila.depth.pos_emb_d.shape[-1] // heads)
    assert all(qkv is not None for qkv in stacked.qkv)
    modules = replace(vila.depth.new_cache(6), qkv=[None] * len(stacked.qkv))  # as with LoRA on the blocks
    for cache in (stacked, modules):
        for kv in cache.kv:
            kv.fill_(float("nan"))
        for d in range(vila.depth_codes):
            cached = vila.depth.cached_logits(inputs[:, d : d + 1], cache, d)
            recomputed = vila.depth.step_logits(inputs[:, : d + 1])
            assert torch.isfinite(cached).all()
            assert (cached - recomputed).abs().max() < 1e-6  # logits are ~0.1 in size here
            assert (cached - teacher[:, d]).abs().max() < 1e-6
    wrong = replace(stacked, kv=[torch.zeros_like(kv) for kv in stacked.kv])
    stale = vila.depth.cached_logits(inputs[:, -1:], wrong, vila.depth_codes - 1)
    assert (stale - teacher[:, -1]).abs().max() > 1e-2


@torch.no_grad()
def test_cached_draws_are_the_reference_draws(vila):
    """Codes drawn with the cache (the engine) and without it (the reference) for the same uniforms: identical,
    over many rows, guided and sampled (top-k and top-p on), and when one cache serves position after position."""
    from fairgen.models.sampling import Sampling

    s = Sampling(cfg=3.0, temperature=1.0, top_p=0.9, top_k=20)
    rows = 64
    cache = vila.depth.new_cache(2 * rows)
    g = torch.Generator().manual_seed(5)
    for position in range(3):
        hidden = torch.randn(2 * rows, vila.llm.config.hidden_size, generator=g) * 2
        u = torch.rand(rows, vila.depth_codes, generator=g, dtype=torch.float64)
        cached, reference = vila._draw(hidden, u, s, cache), vila._draw(hidden, u, s)
        assert torch.equal(cached, reference), position
        assert len(set(cached[:, -1].tolist())) > 5  # a real spread of codes, not one code everywhere


@pytest.mark.gpu
def test_cuda_graphs_replay_the_eager_engine(vila_u_dir, monkeypatch):
    """On CUDA (where the LM's projections are stacked in place), the captured graphs give the eager
    engine's codes: with a bucket of 4 columns too (a capture every few steps, the warm-up run as the
    step itself, the last span not captured) and graphs of a call sharing one memory pool."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fairgen.models import engine

    model = models.load(f"vila-u:{vila_u_dir}", device="cuda", dtype="fp32")
    assert model.graphs and engine.should_stack(model.language_model)
    for bucket in (4, engine.BUCKET):
        monkeypatch.setattr(engine, "BUCKET", bucket)
        eager = model.generate_tokens(PROMPTS, [0, 1], graphs=False)
        assert torch.equal(model.generate_tokens(PROMPTS, [0, 1]), eager), bucket


def test_varlen_bookkeeping_gives_the_reference_codes(vila, cpu_varlen, monkeypatch):  # noqa: F811
    """DepthEngine over the varlen decode path (its kernel's contract written out, test_engine.plain_varlen;
    the guidance row's prompt is shorter, so rows are padded): upstream's algorithm's codes."""
    from fairgen.models import engine

    reference = vila.generate_tokens(PROMPTS, [11, 12], engine=False)
    for attention in ("varlen", "triton"):
        monkeypatch.setattr(engine, "ATTENTION", attention)
        assert torch.equal(vila.generate_tokens(PROMPTS, [11, 12]), reference), attention


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["varlen", "triton"])
def test_varlen_graph_replays_the_eager_engine_in_bf16(monkeypatch, attention):
    """On CUDA in bf16 with 128-wide heads (as 7B's), where the engine reads attention by varlen flash (or the Triton kernel): one
    graph captured per engine call serves every position, and its codes are the eager engine's."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fairgen.models import engine, kv_attention
    from fairgen.models.vila_u import VilaUModel

    shapes = {**layout.TINY, "lm": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                        num_attention_heads=2, num_key_value_heads=2)}
    parts = layout.random_parts(shapes, layout.tiny_tokenizer(layout.TEST_CORPUS), seed=0, device="cuda",
                                dtype=torch.bfloat16)
    model = VilaUModel.from_parts(parts, "vila-u:random-small")
    assert kv_attention.choose(attention, model.device, torch.bfloat16, 128) == attention, torch.__version__
    monkeypatch.setattr(engine, "ATTENTION", attention)
    captures = []
    capture = engine.ImageEngine._capture
    monkeypatch.setattr(engine.ImageEngine, "_capture", lambda self, *a: captures.append(a[0]) or capture(self, *a))
    eager = model.generate_tokens(PROMPTS, [0, 1], graphs=False)
    assert not captures
    assert torch.equal(model.generate_tokens(PROMPTS, [0, 1]), eager)
    assert len(captures) == 1
    assert len(set(eager.flatten().tolist())) > 5
