"""The image-token engine (models/engine.py) against transformers' own forward, on a tiny random Janus."""

from __future__ import annotations

import pytest
import torch

from fairgen import models
from fairgen.models.sampling import uniform_table
from fairgen.models.engine import ImageEngine, LlamaDecoder, in_batches, kv_bytes_per_image
from test_models_checkpoints import janus_dir  # noqa: F401  (session fixture)

PROMPTS = ["A photo of the face of a nurse, a person", "A photo of the face of a firefighter",
           "A chef"]
SEEDS = [5, 6, 7]
SAMPLING = {"cfg": 3.0, "temperature": 0.9, "top_p": 0.6}


@pytest.fixture(scope="module")
def janus(janus_dir):  # noqa: F811
    return models.load(f"janus:{janus_dir}", dtype="fp32")


def plain_varlen(q, k, v, cu_q, starts, max_k, used, scale):
    """The contract of kv_attention._flash (aten's variable-length flash attention, one query per row)
    written out plainly, row by row: query i attends to k[starts[i] : starts[i] + used[i]]. On CPU it
    stands in for the CUDA kernel so that the engine's bookkeeping (where each row's keys start, how many
    it reads, the flat view of the cache) is tested; the kernel itself is tested on a GPU below."""
    out = []
    for i in range(q.shape[0]):
        a, n = int(starts[i]), int(used[i])
        assert 0 < n <= max_k and int(cu_q[i + 1]) - int(cu_q[i]) == 1
        keys, values = (t[a:a + n].repeat_interleave(q.shape[1] // k.shape[1], 1) for t in (k, v))
        weights = torch.softmax(torch.einsum("hd,nhd->hn", q[i], keys) * scale, -1)
        out.append(torch.einsum("hn,nhd->hd", weights, values))
    return torch.stack(out)


def plain_triton(q, k, v, first, used, scale, block=64):
    """The contract of kv_attention_triton.decode (k, v one layer's cache [N, L, H_kv, hd]; row i reads
    columns first[i] .. first[i] + used[i] - 1) through plain_varlen."""
    n, length = k.shape[:2]
    starts = torch.arange(n, dtype=torch.int32) * length + first
    return plain_varlen(q, k.flatten(0, 1), v.flatten(0, 1), torch.arange(n + 1), starts, length, used, scale)


@pytest.fixture
def cpu_varlen(monkeypatch):
    """The varlen and triton attention paths on CPU, their kernels replaced by plain_varlen / plain_triton."""
    from fairgen.models import kv_attention, kv_attention_triton

    monkeypatch.setattr(kv_attention, "varlen_supported", lambda *a: True)
    monkeypatch.setattr(kv_attention, "triton_supported", lambda *a: True)
    monkeypatch.setattr(kv_attention, "_flash", plain_varlen)
    monkeypatch.setattr(kv_attention_triton, "decode", plain_triton)


def _engine(janus, prompts, seeds, bucket: int, stack: bool = False, attention: str = "bucket",
            **sampling) -> torch.Tensor:
    s = janus.defaults.resolve(sampling, "janus")
    ids, mask = janus._guidance_rows(prompts, s)
    decoder = LlamaDecoder(janus.language_model, mask, janus.n_image_tokens, bucket=bucket, stack=stack,
                           attention=attention)
    uniforms = uniform_table(seeds, janus.n_image_tokens, janus.device)
    engine = ImageEngine(decoder, janus.hf.model.generation_head,
                         lambda c: janus.hf.prepare_embeddings_for_image_generation(c.unsqueeze(1)), uniforms, s)
    return engine.run(janus.hf.get_input_embeddings()(ids))


def test_engine_tokens_equal_the_reference_path(janus):
    """Seeded sampling with guidance and top-p: the same codes as transformers' forward with its dynamic
    cache, for every bucket size (1 = a bucket boundary at every step), with and without stacked
    projections, in a batch and alone."""
    reference = janus.generate_tokens(PROMPTS, SEEDS, engine=False, **SAMPLING)
    assert torch.equal(janus.generate_tokens(PROMPTS, SEEDS, **SAMPLING), reference)
    for bucket in (1, 5, 64):
        for stack in (False, True):
            assert torch.equal(_engine(janus, PROMPTS, SEEDS, bucket, stack, **SAMPLING), reference)
    for i in range(len(PROMPTS)):
        alone = janus.generate_tokens(PROMPTS[i:i + 1], SEEDS[i:i + 1], **SAMPLING)
        assert torch.equal(alone[0], reference[i])


@pytest.mark.parametrize("stack", [False, True])
def test_a_repeated_prompt_is_prefilled_once(janus, stack):
    """Given the token ids, prefill runs each distinct prompt once and copies its keys and values to the
    rows that repeat it: the same last hidden states and cache (fp32, 1e-6) as every row run, and the
    same codes as the reference path for a batch of one prompt under several seeds, and its twins."""
    s = janus.defaults.resolve(SAMPLING, "janus")
    prompts, seeds = [PROMPTS[0], PROMPTS[1], PROMPTS[0], PROMPTS[0]], [5, 6, 7, 8]
    ids, mask = janus._guidance_rows(prompts, s)
    embeds = janus.hf.get_input_embeddings()(ids)
    every, once = (LlamaDecoder(janus.language_model, mask, 4, stack=stack) for _ in range(2))
    torch.testing.assert_close(once.prefill(embeds, ids), every.prefill(embeds), atol=1e-6, rtol=1e-6)
    for a, b in zip(once.kv, every.kv):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    reference = janus.generate_tokens(prompts, seeds, engine=False, **SAMPLING)
    assert torch.equal(janus.generate_tokens(prompts, seeds, **SAMPLING), reference)


def test_engine_tokens_equal_the_reference_path_without_grouped_heads(tmp_path):
    """Janus-Pro's decoder has as many key/value heads as query heads; the engine then calls attention
    without enable_gqa (engine.py says why) and still gives the reference path's codes."""
    from test_models_checkpoints import build_janus

    mha = models.load(f"janus:{build_janus(tmp_path / 'mha', kv_heads=4)}", dtype="fp32")
    assert mha.language_model.config.num_key_value_heads == mha.language_model.config.num_attention_heads
    reference = mha.generate_tokens(PROMPTS, SEEDS, engine=False, **SAMPLING)
    assert torch.equal(mha.generate_tokens(PROMPTS, SEEDS, **SAMPLING), reference)
    assert torch.equal(_engine(mha, PROMPTS, SEEDS, 5, **SAMPLING), reference)
    assert torch.equal(_engine(mha, PROMPTS, SEEDS, 5, stack=True, **SAMPLING), reference)


def test_varlen_bookkeeping_gives_the_reference_codes(janus, cpu_varlen):
    """The varlen decode path (each row reads the columns it has written, from after its padding: here the
    prompts differ in length, and the decoder has grouped KV heads) with its kernel's contract written out
    (plain_varlen): the reference path's codes, stacked and not; its span never changes, so one graph
    would serve every step."""
    reference = janus.generate_tokens(PROMPTS, SEEDS, engine=False, **SAMPLING)
    for stack, attention in ((False, "varlen"), (True, "varlen"), (True, "triton")):
        assert torch.equal(_engine(janus, PROMPTS, SEEDS, 5, stack, attention, **SAMPLING), reference)
    decoder = LlamaDecoder(janus.language_model, torch.ones(2, 3, dtype=torch.long), 9, bucket=2, attention="varlen")
    assert decoder.varlen and {decoder.span(c) for c in range(3, 12)} == {12}
    with pytest.raises(ValueError, match="attention must be"):
        LlamaDecoder(janus.language_model, torch.ones(2, 3, dtype=torch.long), 9, attention="flash")
    assert not LlamaDecoder(janus.language_model, torch.ones(2, 3, dtype=torch.long), 9, attention="bucket").varlen


def test_engine_without_guidance_and_greedy(janus):
    for sampling in ({"cfg": 1.0, "temperature": 1.0}, {"cfg": 1.0, "temperature": 0}, {"cfg": 5.0, "top_k": 3}):
        assert torch.equal(janus.generate_tokens(PROMPTS, SEEDS, **sampling),
                           janus.generate_tokens(PROMPTS, SEEDS, engine=False, **sampling))


@pytest.mark.parametrize("attention", ["bucket", "varlen", "triton"])
@pytest.mark.parametrize("stack", [False, True])
def test_teacher_forced_logits_match_the_transformers_forward(janus, stack, attention, request):
    """Feeding known codes through the engine's decode steps gives the generation head's logits of
    transformers' full forward (image_token_logits) at every position; with the masked buckets and with
    the varlen and triton bookkeeping (on CPU through plain_varlen and plain_triton)."""
    if attention != "bucket":
        request.getfixturevalue("cpu_varlen")
    codes = torch.randint(0, janus.hf.config.vq_config.num_embeddings, (len(PROMPTS), janus.n_image_tokens),
                          generator=torch.Generator().manual_seed(0))
    expected = janus.image_token_logits(PROMPTS, codes)
    ids, mask = janus._generation_inputs(PROMPTS)
    decoder = LlamaDecoder(janus.language_model, mask, janus.n_image_tokens, bucket=4, stack=stack,
                           attention=attention)
    assert decoder.attention == attention
    with torch.no_grad():
        hidden = decoder.prefill(janus.hf.get_input_embeddings()(ids))
        got = [janus.hf.model.generation_head(hidden)]
        for t in range(janus.n_image_tokens - 1):
            col = torch.tensor(ids.shape[1] + t)
            emb = janus.hf.prepare_embeddings_for_image_generation(codes[:, t:t + 1])
            hidden = decoder.step(emb, col, decoder.span(ids.shape[1] + t))
            got.append(janus.hf.model.generation_head(hidden))
    got = torch.stack(got, dim=1).float()
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_stacking_runs_a_lora_layer_as_itself(janus_dir):  # noqa: F811
    """With LoRA injected by peft into q_proj, a stacked decoder runs q, k and v as the modules (the
    adapter's product runs) and still stacks gate|up; its codes equal the reference path's, which differ
    from the model's without the adapter."""
    from peft import LoraConfig, get_peft_model

    model = models.load(f"janus:{janus_dir}", dtype="fp32")
    lm = model.language_model
    plain = _engine(model, PROMPTS, SEEDS, 5, stack=True, **SAMPLING)
    targets = [t for t in model.lora_targets if t.endswith("self_attn.q_proj")]
    get_peft_model(model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    decoder = LlamaDecoder(lm, torch.ones(1, 3, dtype=torch.long), 4, stack=True)
    assert all(qkv is None and gate_up is not None for qkv, gate_up in decoder.stacked)
    reference = model.generate_tokens(PROMPTS, SEEDS, engine=False, **SAMPLING)
    assert not torch.equal(reference, plain)
    assert torch.equal(_engine(model, PROMPTS, SEEDS, 5, stack=True, **SAMPLING), reference)


def test_stacking_in_place_moves_the_weights_and_keeps_the_parameters(janus_dir):  # noqa: F811
    """stack_in_place makes the modules' weights consecutive rows of one tensor without a copy kept: the
    same Parameter objects with the same values, the stacked weight a view of them (a write through a
    module shows in it), the modules' outputs unchanged, and a second call moves nothing."""
    from fairgen.models.engine import stack_in_place

    model = models.load(f"janus:{janus_dir}", dtype="fp32")
    attn = model.language_model.layers[0].self_attn
    mods = [attn.q_proj, attn.k_proj, attn.v_proj]
    params = [m.weight for m in mods]
    values = [p.detach().clone() for p in params]
    x = torch.randn(3, params[0].shape[1])
    before = [m(x) for m in mods]
    weight, bias = stack_in_place(mods)
    assert bias is None and [m.weight for m in mods] == params
    assert torch.equal(weight, torch.cat(values)) and all(torch.equal(p, v) for p, v in zip(params, values))
    assert all(p.untyped_storage().data_ptr() == weight.untyped_storage().data_ptr() for p in params)
    assert all(torch.equal(m(x), b) for m, b in zip(mods, before))
    with torch.no_grad():
        attn.k_proj.weight[0, 0] = 7.0
    assert weight[params[0].shape[0], 0] == 7.0
    again, _ = stack_in_place(mods)
    assert again.data_ptr() == weight.data_ptr()


def test_residual_in_the_gemm_is_the_sum():
    """_plus (x + linear(y) as one GEMM adding x) equals the sum it replaces, fp32; a layer that is not a
    plain bias-free Linear runs as itself."""
    from fairgen.models.engine import _plus

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 1, 8, generator=g), torch.randn(5, 1, 12, generator=g)
    for linear in (torch.nn.Linear(12, 8, bias=False), torch.nn.Linear(12, 8)):
        torch.testing.assert_close(_plus(x, linear, y), x + linear(y), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_equals_transformers_rotary(dtype):
    """The engine's rotary product is transformers' apply_rotary_pos_emb exactly, in fp32 and in bf16."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    from fairgen.models.engine import _rope, _signed

    config = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(3, 4, 5, 16, generator=g, dtype=dtype), torch.randn(3, 2, 5, 16, generator=g, dtype=dtype)
    positions = torch.randint(0, 500, (3, 5), generator=g)
    cos, sin = LlamaRotaryEmbedding(config)(q, positions)
    want_q, want_k = apply_rotary_pos_emb(q, k, cos, sin)  # head-major [N, H, n, hd]; the engine's token-major
    signed = _signed(cos, sin)
    assert torch.equal(_rope(q.transpose(1, 2), *signed), want_q.transpose(1, 2))
    assert torch.equal(_rope(k.transpose(1, 2), *signed), want_k.transpose(1, 2))


def test_norm_equals_llama_rmsnorm():
    """transformers' LlamaRMSNorm as one F.rms_norm: equal in fp32, within one bf16 ulp in bf16; any other
    norm module is called as it is."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from fairgen.models.engine import _norm

    norm = LlamaRMSNorm(64, eps=1e-6)
    g = torch.Generator().manual_seed(1)
    norm.weight.data = torch.randn(64, generator=g)
    x = torch.randn(6, 1, 64, generator=g)
    with torch.no_grad():
        assert torch.equal(_norm(norm, x), norm(x))
        got, want = _norm(norm.bfloat16(), x.bfloat16()).float(), norm(x.bfloat16()).float()
    ulp = 2.0 ** (torch.floor(torch.log2(want.abs().clamp(min=1e-30))) - 7)  # bf16: 8 significant bits
    assert ((got - want).abs() <= ulp).all()
    layer = torch.nn.LayerNorm(64)
    assert torch.equal(_norm(layer, x), layer(x))


def test_in_batches_halves_on_out_of_memory_and_loses_no_row():
    calls = []

    def run(a: int, b: int) -> torch.Tensor:
        calls.append(b - a)
        if b - a > 3:  # a device that holds at most 3 rows
            raise torch.OutOfMemoryError("CUDA out of memory")
        return torch.arange(a, b)

    out = in_batches(run, 10, 8)
    assert torch.equal(out, torch.arange(10))
    assert calls[:3] == [5, 4, 2] and max(calls[3:]) <= 2  # 10 at 8 is two chunks of 5, then halving
    calls.clear()
    assert torch.equal(in_batches(lambda a, b: calls.append(b - a) or torch.arange(a, b), 122, 98), torch.arange(122))
    assert calls == [61, 61]  # near-equal chunks, not 98 + 24

    def always(a: int, b: int) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        in_batches(always, 4, 4)


def test_kv_bytes_per_image(janus):
    cfg = janus.language_model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    expected = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 100 * 4 * 2
    assert kv_bytes_per_image(janus.language_model, 100, 2) == expected


@pytest.mark.gpu
def test_cuda_graphs_replay_the_eager_engine(janus_dir):  # noqa: F811
    """On CUDA, the captured per-bucket graphs (the default there) give the codes of the eager engine."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = models.load(f"janus:{janus_dir}", device="cuda", dtype="fp32")
    assert model.graphs
    eager = model.generate_tokens(PROMPTS, SEEDS, graphs=False, **SAMPLING)
    assert torch.equal(model.generate_tokens(PROMPTS, SEEDS, **SAMPLING), eager)
    optioned = models.load(f"janus:{janus_dir}", device="cuda", dtype="fp32",
                           graphs="false")  # as --model-option gives it
    assert not optioned.graphs and torch.equal(optioned.generate_tokens(PROMPTS, SEEDS, **SAMPLING), eager)


@pytest.mark.gpu
@pytest.mark.parametrize("attention", ["varlen", "triton"])
@pytest.mark.parametrize("kv_heads", [2, 1])
@pytest.mark.parametrize("stack", [False, True])
def test_varlen_attention_matches_the_masked_path_on_cuda(kv_heads, stack, attention):
    """On CUDA in bf16, a random Llama with 128-wide heads (as 7B's; 2 query heads over 2 or 1 KV heads),
    left-padded rows of unequal prompts, 150 decode steps (across bucket boundaries): the varlen paths'
    (aten's flash, the Triton kernel) logits equal the masked SDPA path's to bf16 rounding, and are as
    close to an fp32 run as it is (the difference is the kernels' summation order, not a wrong key)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from transformers import LlamaConfig, LlamaForCausalLM

    from fairgen.models import kv_attention

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=kv_heads, vocab_size=512)
    full = LlamaForCausalLM(config).to("cuda").eval()
    half = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    half.load_state_dict(full.state_dict())
    assert kv_attention.choose(attention, torch.device("cuda"), torch.bfloat16, 128) == attention, \
        f"torch {torch.__version__}: {attention} cannot run"
    pads, prompt, new = [0, 3, 1, 0, 5, 2], 7, 150
    mask = torch.tensor([[0] * p + [1] * (prompt - p) for p in pads], device="cuda")
    embeds = torch.randn(len(pads), prompt + new, 256, device="cuda")

    def logits(model, attention):
        decoder = LlamaDecoder(model.model, mask, new, stack=stack and attention != "fp32",
                               attention="bucket" if attention == "fp32" else attention)
        assert decoder.attention == ("bucket" if attention == "fp32" else attention)
        x = embeds.to(model.dtype)
        with torch.no_grad():
            out = [decoder.prefill(x[:, :prompt])]
            for c in range(prompt, prompt + new - 1):
                out.append(decoder.step(x[:, c:c + 1], torch.tensor(c, device="cuda"), decoder.span(c)))
            return model.lm_head(torch.stack(out, 1)).float()

    truth, varlen, masked = logits(full, "fp32"), logits(half, attention), logits(half, "bucket")
    torch.testing.assert_close(varlen, masked, atol=3e-2, rtol=3e-2)
    err_varlen, err_masked = (varlen - truth).abs().mean(), (masked - truth).abs().mean()
    assert err_varlen <= 1.25 * err_masked + 1e-4, (err_varlen, err_masked)


@pytest.mark.gpu
def test_auto_batch_counts_the_allocators_cache_as_free(janus):
    """Memory an earlier call left in torch's caching allocator is free for the next batch: freeing a
    tensor (the allocator keeps its block) leaves auto_batch's answer unchanged."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fairgen.models.engine import auto_batch

    lm = janus.language_model.to("cuda")
    try:
        before = auto_batch(lm, 1000, 2, cap=10**9)
        block = torch.empty(2**30, dtype=torch.uint8, device="cuda")
        assert auto_batch(lm, 1000, 2, cap=10**9) < before
        del block  # back to the allocator's cache, not to the device
        assert auto_batch(lm, 1000, 2, cap=10**9) == pytest.approx(before, rel=0.01)
    finally:
        lm.to("cpu")


@pytest.mark.gpu
def test_graph_calls_leave_the_free_memory_as_it_was(janus_dir):  # noqa: F811
    """After a first call, further graph-captured calls keep no memory: the batch auto_batch finds is the
    same after them (on 2026-12-06 a new side stream per capture kept a cuBLAS workspace each, so that
    the largest batch no longer fitted in one call after a few calls)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from fairgen.models.engine import free_bytes

    model = models.load(f"janus:{janus_dir}", device="cuda", dtype="fp32")
    model.generate_tokens(PROMPTS, SEEDS, **SAMPLING)
    before = free_bytes(torch.device("cuda"))
    for _ in range(3):
        model.generate_tokens(PROMPTS, SEEDS, **SAMPLING)
    assert free_bytes(torch.device("cuda")) >= before - 2**20


@pytest.mark.gpu
def test_audit_with_a_gpu_judge_beside_the_graph_capture(janus_dir, tmp_path):  # noqa: F811
    """An audit perceives batch i in a worker thread while the engine captures and replays batch i+1's
    graphs; a judge perception backend on the same GPU runs there without breaking the capture, and the
    results equal an eager run's."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    import fairgen

    prompts = [fairgen.Prompt(id=c, text=f"A photo of the face of a {c}, a person", concept=c) for c in ("nurse", "pilot")]
    judge = f"judge:model=janus:{janus_dir},face=whole"
    runs = {}
    for graphs in (True, False):
        model = models.load(f"janus:{janus_dir}", device="cuda", dtype="fp32", graphs=graphs)
        runs[graphs] = fairgen.audit(model, suite=prompts, images_per_prompt=6, batch_size=3, perception_backend=judge,
                                     out=tmp_path / f"graphs{graphs}").results
    assert runs[True]["summary"] == runs[False]["summary"]


def test_choose_resolves_each_attention_to_what_can_run(monkeypatch):
    """On CPU every request runs the masked buckets; where a path can run it is the one asked for, and auto
    is the first of kv_attention.AUTO that can run."""
    from fairgen.models import kv_attention

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert {kv_attention.choose(a, cpu, torch.bfloat16, 128) for a in ("auto", "varlen", "triton", "bucket")} == {"bucket"}
    assert not kv_attention.varlen_supported(cuda, torch.float32, 128)  # flash has no fp32
    assert not kv_attention.varlen_supported(cuda, torch.bfloat16, 100)  # nor a width that is not a multiple of 8
    monkeypatch.setattr(kv_attention, "varlen_supported", lambda *a: True)
    monkeypatch.setattr(kv_attention, "triton_supported", lambda *a: False)
    assert [kv_attention.choose(a, cuda, torch.bfloat16, 128) for a in ("varlen", "triton", "bucket")] == \
        ["varlen", "bucket", "bucket"]
    assert kv_attention.AUTO[-1] == "bucket"  # auto always finds one that runs
    assert kv_attention.choose("auto", cuda, torch.bfloat16, 128) == next(a for a in kv_attention.AUTO if a != "triton")
    monkeypatch.setattr(kv_attention, "AUTO", ("triton", "varlen", "bucket"))
    assert kv_attention.choose("auto", cuda, torch.bfloat16, 128) == "varlen"
    monkeypatch.setattr(kv_attention, "triton_supported", lambda *a: True)
    assert kv_attention.choose("auto", cuda, torch.bfloat16, 128) == "triton"
