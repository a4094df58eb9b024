"""Data-parallel training's arithmetic (fix/train.py), checked directly: each process's weighted share of
a batch's loss, `_batch_losses`, has gradients that sum to the one-process gradient of the whole batch
(tight tolerance, so a wrong weight or a sum of per-process means cannot hide behind the optimizer), and
`_sum_gradients` sums real gradients over two real processes (gloo)."""

from __future__ import annotations

import socket
from contextlib import contextmanager

import pytest
import torch

from fairgen import models
from fairgen.distributed import Processes
from fairgen.fix.batches import Batch
from fairgen.fix.train import UNDERSTANDING, Stage, _batch_losses, _sum_gradients
from fairgen.models.tiny import TinyModel
from fairgen.types import ATTRIBUTES
from fairgen.world import render

from conftest import FIX_CONCEPTS

PROMPTS = ["a photo of the face of an accountant", "a photo of the face of a baker"]
# (neutral prompt, attribute) of each unit: unequal shares for two processes (rank 0: units 0 and 2, six
# images and two sets; rank 1: unit 1, four images and one set), and one prompt with both attributes.
UNITS = [(0, "gender"), (1, "race"), (0, "race")]


@pytest.fixture(scope="module")
def model(mini) -> TinyModel:
    """conftest's trained fairgen-tiny (its tokenizer tells the renders apart; a random one gives every image
    the same codes) with its language model in float64, every weight trainable."""
    torch.set_num_threads(1)
    model = models.load(f"tiny:{mini}")
    model.lm.double()
    for p in model.lm.parameters():
        p.requires_grad_(True)
    return model


@pytest.fixture(scope="module")
def batch() -> Batch:
    rows, prompts, explicit, images, pi, ai, gi, unit_rows = [], [], [], [], [], [], [], []
    for p, attr in UNITS:
        groups = ATTRIBUTES[attr]
        for g, group in enumerate(groups):
            rows.append(len(rows))
            prompts.append(PROMPTS[p])
            explicit.append(PROMPTS[p].replace(" a ", f" a {group} "))
            gender = group if attr == "gender" else "female"
            race = group if attr == "race" else "white"
            images.append(render(gender, race, "young", FIX_CONCEPTS[p], len(rows)))
            pi.append(p), ai.append(list(ATTRIBUTES).index(attr)), gi.append(g)
        unit_rows.append(len(groups))
    return Batch(rows=rows, prompts=prompts, explicit_prompts=explicit, prompt_ids=[f"c{p}" for p in pi],
                 images=images, prompt_index=torch.tensor(pi), attribute_index=torch.tensor(ai),
                 group_index=torch.tensor(gi), unit_rows=unit_rows)


def _grads(model: TinyModel, loss: torch.Tensor) -> list[torch.Tensor]:
    params = list(model.lm.parameters())
    for p in params:
        p.grad = None
    loss.backward()
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def _nudged(model: TinyModel):
    """A stand-in for the model without its adapter, which the contrast term compares with: the same
    weights plus fixed noise for the time of the block, then the very tensors it had (swapped through
    .data, so the graph already built on them stays valid)."""

    @contextmanager
    def reference():
        params = list(model.lm.parameters())
        saved = [p.data for p in params]
        gen = torch.Generator().manual_seed(1)
        for p in params:
            p.data = p.data + 0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype)
        try:
            yield
        finally:
            for p, s in zip(params, saved):
                p.data = s

    return reference


@pytest.mark.parametrize("stage, anchor, contrast", [
    (Stage("bpo", 1, alpha=0.7, beta=1.3, lr=1e-3), 0.4, 0.9),  # every term at once: sft, bpo, anchor, contrast
    (Stage("bpo", 1, alpha=0.0, beta=1.0, lr=1e-3), 0.0, 0.0),  # the paper's stage 2: bpo alone
    (Stage(UNDERSTANDING, 1, alpha=1.0, beta=0.0, lr=1e-3), 0.0, 0.0),  # image -> text captions
])
def test_summed_shard_gradients_equal_the_full_batch_gradient(model, batch, stage, anchor, contrast):
    torch.manual_seed(0)
    losses = lambda procs: _batch_losses(model, batch, stage, anchor, procs, contrast, _nudged(model))  # noqa: E731
    full_loss, full_terms = losses(Processes())
    full = _grads(model, full_loss)
    shards = [losses(Processes(rank, 2)) for rank in range(2)]
    summed = [sum(g) for g in zip(*[_grads(model, loss) for loss, _ in shards])]
    assert max(float(g.abs().max()) for g in full) > 1e-3  # a gradient worth comparing
    for g_full, g_sum in zip(full, summed):
        torch.testing.assert_close(g_sum, g_full, rtol=0, atol=1e-6)
    # The logged terms add up the same way, and the loss is the stage's weighted sum of them.
    assert set(shards[0][1]) == set(full_terms)
    for name, value in full_terms.items():
        assert float(shards[0][1][name] + shards[1][1][name]) == pytest.approx(float(value), rel=1e-6)
    if stage.name == UNDERSTANDING:
        assert float(full_loss.detach()) == pytest.approx(float(full_terms["caption"]), rel=1e-6)
    else:
        want = (stage.alpha * full_terms["sft"] + stage.beta * full_terms["bpo"] + anchor * full_terms.get("anchor", 0)
                + contrast * full_terms.get("contrast", 0))
        assert not contrast or float(full_terms["contrast"]) > 1e-4  # some gaps shrank: a term worth checking
        assert float(full_loss.detach()) == pytest.approx(float(want), rel=1e-6)
        # and each term is the plain loss function's on the whole batch, not a rescaled one
        with torch.no_grad():
            logp = model.image_token_logprob(batch.prompts, batch.images)
        assert float(full_terms["sft"]) == pytest.approx(float(-logp.mean()), rel=1e-6)
    # One process's own share is not the whole: the shares differ, so a wrong weighting would show.
    share = _grads(model, losses(Processes(0, 2))[0])
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(share, full))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gradients(rank: int) -> list[torch.Tensor | None]:
    """Rank-dependent gradients: float32, bfloat16 (summed in float32, returned in its dtype) and one that
    rank 1 lacks (it counts as zeros there)."""
    gen = torch.Generator().manual_seed(100 + rank)
    shapes = [((3, 4), torch.float32), ((5,), torch.bfloat16), ((2, 2), torch.float32)]
    return [None if (rank == 1 and k == 2) else torch.randn(shape, generator=gen).to(dtype)
            for k, (shape, dtype) in enumerate(shapes)]


def _with_gradients(grads: list[torch.Tensor | None]) -> list[torch.nn.Parameter]:
    dtypes = [torch.float32, torch.bfloat16, torch.float32]
    params = [torch.nn.Parameter(torch.zeros(s, dtype=d)) for s, d in zip([(3, 4), (5,), (2, 2)], dtypes)]
    for p, g in zip(params, grads):
        p.grad = g
    return params


# Rank 1, in its own process: the same _sum_gradients on its own gradients (read from a file).
RANK1 = """
import sys, torch, torch.distributed as dist
from fairgen import models
from fairgen.distributed import Processes
from fairgen.fix.train import _sum_gradients
port, folder = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=1, world_size=2)
grads, dtypes = torch.load(f"{folder}/in1.pt", weights_only=True)
params = [torch.nn.Parameter(torch.zeros(g.shape if g is not None else (2, 2), dtype=d)) for g, d in zip(grads, dtypes)]
for p, g in zip(params, grads):
    p.grad = g
_sum_gradients(params, Processes(1, 2))
torch.save([p.grad for p in params], f"{folder}/out1.pt")
dist.destroy_process_group()
"""


def test_sum_gradients_sums_over_two_real_processes(tmp_path):
    """Rank 0 here, rank 1 in a second process, joined by gloo: both end with the elementwise sum."""
    import os
    import subprocess
    import sys

    import torch.distributed as dist

    per_rank = [_gradients(rank) for rank in range(2)]
    want = [sum(g[k].float() if g[k] is not None else torch.zeros(2, 2) for g in per_rank) for k in range(3)]
    torch.save((per_rank[1], [torch.float32, torch.bfloat16, torch.float32]), tmp_path / "in1.pt")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", RANK1, str(port), str(tmp_path)], env=env,
                             stderr=subprocess.PIPE, text=True)
    assert not dist.is_initialized()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=2)
    try:
        params = _with_gradients(per_rank[0])
        _sum_gradients(params, Processes(0, 2))
    finally:
        dist.destroy_process_group()
    assert child.wait(timeout=300) == 0, child.stderr.read()[-2000:]
    for got in ([p.grad for p in params], torch.load(tmp_path / "out1.pt", weights_only=True)):
        for g, w, like in zip(got, want, per_rank[0]):
            assert g.dtype == like.dtype
            torch.testing.assert_close(g.float(), w.to(g.dtype).float(), rtol=0, atol=1e-6)
    # One process: the gradients stay exactly as they are (the same tensors).
    params = _with_gradients(_gradients(0))
    before = [p.grad for p in params]
    _sum_gradients(params, Processes())
    assert all(p.grad is b for p, b in zip(params, before))
