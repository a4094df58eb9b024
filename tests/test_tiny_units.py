"""fairgen-tiny pieces that need no training: vocabulary, padding, the per-image random streams, sampling
filters, batch invariance and LoRA on a randomly initialised model, checkpoint errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from PIL import Image

from fairgen.models.protocols import OTHER
from fairgen.models.tiny import TinyModel, load
from fairgen.models.tiny.model import LMConfig, TinyLM
from fairgen.models.sampling import Sampling, draw, filter_probs, seed_keys, uniforms
from fairgen.models.tiny.text import Vocab, image_positions, left_pad, lexicon
from fairgen.models.tiny.tokenizer import TokenizerConfig, VisionTokenizer
from fairgen.types import FairgenError, Prompt
from fairgen.world import render


@pytest.fixture(autouse=True)
def _single_thread():
    """One thread, as in test_tiny.py: two OpenMP threads on a busy 2-core machine are far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def random_model() -> TinyModel:
    """Untrained, tiny dims: enough to test plumbing, padding and determinism."""
    torch.manual_seed(0)
    tok = VisionTokenizer(TokenizerConfig(width=16))
    words = lexicon(["a nurse", "a female firefighter"])
    vocab = Vocab(tok.cfg.n_codes, tok.cfg.n_tokens, words)
    lm = TinyLM(
        LMConfig(vocab_size=vocab.size, n_image_tokens=vocab.n_image_tokens, n_layer=2, n_head=2, n_embd=32)
    )
    return TinyModel(tok, lm, words=words)


def test_vocab_formats() -> None:
    v = Vocab(n_codes=10, n_image_tokens=4)
    assert v.size == 256 + 6 + 10
    assert v.answer("ok") == [ord("o"), ord("k"), v.eos]
    codes = torch.tensor([0, 9, 3, 3])
    row = [v.bos, *v.image(codes), *v.text("Q?"), v.ans]
    assert row == v.question_prefix(codes, "Q?")
    assert image_positions([row], v)[0] == [4, 4, 0, 1, 2, 3, 4, 4, 4, 4]
    assert v.decode_text(row) == "<bos><boi><img:0><img:9><img:3><img:3><eoi>Q?<ans>"
    with pytest.raises(FairgenError):
        v.image(torch.tensor([1, 2]))


def test_vocab_words_are_single_tokens_after_the_image_codes() -> None:
    words = lexicon(["A photo of a nurse", "a female nurse, 2 of them"])
    assert words == tuple(sorted({"A", "photo", "of", "a", "nurse", "female", "them"}))
    v = Vocab(n_codes=10, n_image_tokens=4, words=words)
    assert v.word_offset == 256 + 6 + 10 and v.size == v.word_offset + len(words)
    ids = v.text("a female nurses, nurse-like; 护士")
    nurse, female = v.word_offset + words.index("nurse"), v.word_offset + words.index("female")
    # "nurses" is not a lexicon word: bytes; "nurse" inside "nurse-like" is a whole letter run: one token.
    assert ids[:4] == [v.word_offset + words.index("a"), ord(" "), female, ord(" ")]
    assert list(b"nurses, ") == ids[4:12] and ids[12] == nurse
    assert v.decode_text(ids) == "a female nurses, nurse-like; 护士"
    row = [v.bos, *v.text("a nurse"), v.boi, *(v.image_offset + torch.arange(4)).tolist(), v.eoi]
    # Word ids lie above the image codes, yet they are not image tokens.
    assert image_positions([row], v)[0] == [4, 4, 4, 4, 4, 0, 1, 2, 3, 4]
    assert Vocab(10, 4).text("a nurse") == list(b"a nurse")  # no lexicon: bytes only


def test_left_pad_positions_start_at_first_real_token() -> None:
    v = Vocab(n_codes=10, n_image_tokens=4)
    ids, valid, pos, _ = left_pad([[1, 2, 3], [7]], v)
    assert ids[1].tolist() == [v.pad, v.pad, 7]
    assert valid.tolist() == [[True, True, True], [False, False, True]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_uniform_streams_are_pure_functions_of_seed_and_position() -> None:
    keys = seed_keys([0, 1, 2**40 + 1, 2**40 + 1])
    u = uniforms(keys, 5)
    assert u[2] == u[3] and u[0] != u[1]
    assert torch.equal(u, uniforms(seed_keys([0, 1, 2**40 + 1, 2**40 + 1]), 5))
    many = uniforms(seed_keys(list(range(20000))), 3)
    assert float(many.min()) > 0 and float(many.max()) < 1
    assert abs(float(many.mean()) - 0.5) < 0.01
    hist = torch.histc(many.float(), bins=10, min=0, max=1) / len(many)
    assert float((hist - 0.1).abs().max()) < 0.01


def test_filters_and_draw() -> None:
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])

    def kept(**kw) -> list[bool]:
        return (filter_probs(p, **kw) > 0)[0].tolist()

    assert kept(top_k=2, top_p=None) == [True, True, False, False]
    assert kept(top_k=None, top_p=0.6) == [True, True, False, False]
    assert kept(top_k=None, top_p=0.5) == [True, False, False, False]
    assert kept(top_k=3, top_p=0.9) == [True, True, True, False]
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75]]).repeat(3, 1)
    u = torch.tensor([1e-9, 0.2499, 0.9999999], dtype=torch.float64)
    assert draw(probs, u).tolist() == [1, 1, 3]
    with pytest.raises(FairgenError):
        Sampling(top_p=0.0).check()


def test_nucleus_on_host_is_the_full_sort_row_for_row() -> None:
    """The CPU top-p path (candidates first, whole-row sort only where the cut is in doubt) keeps exactly the
    tokens the whole-row sort keeps: flat and peaked rows (nucleus beyond and within the candidates),
    equal probabilities (rounded logits) at the cut, rows shorter than the candidates, uniform rows."""
    from fairgen.models.sampling import _nucleus, _nucleus_on_host

    g = torch.Generator().manual_seed(0)
    rows = [torch.zeros(3, 1000), torch.full((2, 70), -1.0)]
    for v in (1000, 65, 10):
        for scale in (0.3, 2.0, 8.0):
            x = torch.randn(300, v, generator=g) * scale
            rows += [x, (x * 2).round() / 2]
    for x in rows:
        probs = torch.softmax(x, -1)
        for top_p in (0.05, 0.6, 0.8, 0.95):
            assert torch.equal(_nucleus_on_host(probs, top_p), _nucleus(probs, top_p))


def test_generation_is_batch_invariant_and_seeded(random_model: TinyModel) -> None:
    settings = {"cfg": 3.0, "temperature": 1.0, "top_p": 0.9}
    prompts = [
        "A photo of the face of a nurse, a person",
        "x",
        Prompt("p", "A headshot of a CEO, a person", "CEO"),
        "A photo of the face of a nurse, a person",
        "",
        "y" * 60,
        "A close-up photo of a judge's face",
        "z",
    ]
    seeds = [11, 3, 5, 12, 0, 99, 2**33, 7]
    batch = random_model.generate(prompts, seeds, **settings)
    for i in (0, 2, 3, 5):  # 0 and 3 share a prompt: its keys and values are computed once (sampling.py)
        alone = random_model.generate([prompts[i]], [seeds[i]], **settings)[0]
        assert np.array_equal(np.asarray(alone), np.asarray(batch[i]))
    assert not np.array_equal(np.asarray(batch[0]), np.asarray(batch[3]))  # same prompt, other seed
    assert batch[0].size == (64, 64) and batch[0].mode == "RGB"
    with pytest.raises(FairgenError):
        random_model.generate(["a"], [1, 2])
    with pytest.raises(FairgenError):
        random_model.generate(["a"], [-1])
    with pytest.raises(FairgenError, match="unknown sampling setting"):
        random_model.generate(["a"], [1], batch_size=8)


def test_answer_distribution_is_normalised(random_model: TinyModel) -> None:
    image = render("female", "black", "old", "nurse", 3)
    for img in (image, None):
        out = random_model.answer_distribution(
            img, "What is the race? Answer.", ["white", "black", "asian", "indian"]
        )
        assert abs(sum(v for k, v in out.items() if k != OTHER) - 1) < 1e-6
        assert 0.0 <= out[OTHER] <= 1.0
    with pytest.raises(FairgenError):
        random_model.answer_distribution(None, "q", ["a", "a"])


def test_answer_distribution_equals_each_option_scored_alone_by_hand(random_model: TinyModel) -> None:
    """Each option's probability from one unpadded row (<bos> [image] question <ans> answer <eos>) through the
    LM, the log-probability of every answer token read at the position before it and summed by hand: the
    batched, left-padded scoring must give these numbers (a shifted position or a padding leak would not).
    (That the answer depends on the image is tested on the trained packaged model, test_perception_judge.py:
    this random tokenizer gives every render the same codes.)"""
    m = random_model
    options = ["white", "black", "asian", "indian person"]  # unequal lengths: the batch is padded
    question = "What is the race? Answer."
    for image in (None, render("female", "black", "old", "nurse", 3)):
        codes = m.encode_image([image])[0] if image is not None else None
        prefix = m.vocab.question_prefix(codes, question)
        hand = []
        for o in options:
            row = prefix + m.vocab.answer(o)
            ids, valid, pos, img = left_pad([row], m.vocab)
            with torch.no_grad():
                logits = m.lm(ids, pos, img, valid)[0].double()
            hand.append(sum(float(torch.log_softmax(logits[t - 1], 0)[row[t]]) for t in range(len(prefix), len(row))))
        out = m.answer_distribution(image, question, options)
        inside = sum(np.exp(hand))
        for o, lp in zip(options, hand):
            assert out[o] == pytest.approx(np.exp(lp) / inside, rel=1e-4)
        assert out[OTHER] == pytest.approx(1 - inside, abs=1e-9)
        assert max(hand) - min(hand) > 0.05  # options the model tells apart


def test_lora_attaches_to_lm_linears_only_and_gets_gradients(random_model: TinyModel, tmp_path) -> None:
    random_model.save(tmp_path)
    model = load(tmp_path)
    peft_lm = get_peft_model(
        model.lora_root, LoraConfig(r=4, lora_alpha=8, target_modules=model.lora_targets)
    )
    wrapped = {
        n.removeprefix("base_model.model.") for n, m in peft_lm.named_modules() if hasattr(m, "lora_A")
    }
    assert wrapped == set(model.lora_targets)
    assert all(".attn." in n or ".mlp." in n for n in wrapped)
    # peft initialises B = 0 (the adapter starts as a no-op); nudge it so A gets a gradient too.
    with torch.no_grad():
        for n, p in peft_lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    images = [render("male", "asian", "young", "judge", s) for s in (1, 2)]
    logp = model.image_token_logprob(["A photo of the face of a judge, a person", "A judge"], images)
    assert logp.shape == (2,) and bool(torch.all(logp < 0))
    logp.sum().backward()
    grads = [p.grad for n, p in peft_lm.named_parameters() if "lora_" in n]
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads)
    assert all(p.grad is None for n, p in peft_lm.named_parameters() if "lora_" not in n)


def test_checkpoint_round_trip_and_errors(random_model: TinyModel, tmp_path) -> None:
    random_model.save(tmp_path / "ck")
    again = load(tmp_path / "ck")
    assert again.vocab == random_model.vocab and again.vocab.words
    prov = again.provenance()
    assert set(prov["sha256"]) == {"tokenizer.safetensors", "lm.safetensors", "config.json"}
    a = random_model.generate(["a nurse"], [4])[0]
    assert np.array_equal(np.asarray(a), np.asarray(again.generate(["a nurse"], [4])[0]))
    with pytest.raises(FairgenError, match="not a fairgen-tiny checkpoint"):
        load(tmp_path / "missing")
    (tmp_path / "ck" / "lm.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(FairgenError, match="corrupt"):
        load(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(FairgenError):
        load(tmp_path / "ck")


def test_tokenizer_api_shapes(random_model: TinyModel) -> None:
    codes = random_model.encode_image(
        [render("female", "white", "young", "dancer", 1), Image.new("RGB", (128, 128))]
    )
    assert codes.shape == (2, 64) and codes.dtype == torch.long
    assert len(random_model.decode_tokens(codes)) == 2
    with pytest.raises(FairgenError):
        random_model.decode_tokens(torch.full((1, 64), 10**6))


def test_locate_hooks_agree_with_generation_and_scoring(random_model: TinyModel) -> None:
    prompts, seeds = ["A photo of the face of a judge, a person", "x"], [3, 4]
    codes = random_model.generate_tokens(prompts, seeds)
    images = random_model.generate(prompts, seeds)
    assert all(
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(random_model.decode_tokens(codes), images)
    )
    logits = random_model.image_token_logits(prompts, codes)
    assert logits.shape == (2, 64, random_model.vocab.n_codes)
    mean = torch.log_softmax(logits, -1).gather(2, codes[:, :, None]).squeeze(2).mean(1)
    assert torch.allclose(mean, random_model.image_token_logprob(prompts, codes))
    assert random_model.image_start_hidden(prompts).shape == (2, random_model.lm.cfg.n_embd)
    assert random_model.tokenizer_embeddings(images).shape == (2, 4, 8, 8)
    assert random_model.understanding_embeddings(images).shape == (2, 64, random_model.lm.cfg.n_embd)


def _sampler(counter_share: float):
    from fairgen.models.tiny.data import GROUPS, ExampleSampler, Mixture, training_concepts
    from fairgen.world import WorldSpec

    spec = WorldSpec.default()
    concepts = training_concepts(spec)
    pool = torch.zeros(len(concepts), len(GROUPS), 1, 4, dtype=torch.long)
    return spec, ExampleSampler(spec, concepts, pool, torch.zeros(1, 4, dtype=torch.long), Vocab(8, 4),
                                Mixture(counter_share=counter_share), seed=0)


def test_counter_requests_go_where_the_word_changes_the_image() -> None:
    """Asked for "White", a counter-stereotype draw picks concepts whose people are rarely white: of the
    default spec's concepts, most of those draws land where the white share is below a half (a uniform
    draw lands there for only the few such concepts)."""
    spec, sampler = _sampler(1.0)
    rng = np.random.default_rng(0)
    white = sampler.shares["race"][:, 0]
    drawn = np.array([sampler._counter_concept({"race": "white"}, rng) for _ in range(4000)])
    assert (white[drawn] < 0.5).mean() > 0.5 > 4 * (white < 0.5).mean()
    # Weights multiply over the request: "female" and "Black" together avoid mostly-female concepts too.
    both = np.array([sampler._counter_concept({"gender": "female", "race": "black"}, rng) for _ in range(4000)])
    female = sampler.shares["gender"][:, 0]
    assert female[both].mean() < female.mean()


def test_counter_share_zero_keeps_the_old_data_stream() -> None:
    """Recipes without counter draws (full, anneal) draw exactly the batches they drew before counter draws
    existed: the digest was computed with the code before the change (commit 5c6a09d)."""
    import hashlib

    from fairgen.models.tiny.data import GROUPS, ExampleSampler, Mixture, training_concepts
    from fairgen.world import WorldSpec

    spec = WorldSpec.default()
    concepts = training_concepts(spec)
    pool = torch.randint(0, 8, (len(concepts), len(GROUPS), 2, 4), generator=torch.Generator().manual_seed(0))
    sampler = ExampleSampler(spec, concepts, pool, torch.zeros(1, 4, dtype=torch.long), Vocab(8, 4), Mixture(), seed=0)
    b = sampler.batch(256)
    digest = hashlib.sha256(b["ids"].numpy().tobytes() + b["weight"].numpy().tobytes()).hexdigest()[:16]
    assert digest == "d069140a03295ea6"
