"""The balanced preference loss (fix/loss.py): values by hand, gradients, the K-group form, and pairing."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from PIL import Image

from fairgen.fix.batches import BatchPlan, partners
from fairgen.fix.data import COLUMNS, BalancedSet
from fairgen.fix.loss import (bpo_loss, combined_loss, contrast_loss, log_odds, pair_loss, same_prompt_pairs,
                              sft_loss)
from fairgen.types import ATTRIBUTES


BROKEN_BATCH = "^BPO batch holds two images of one group for the same prompt and attribute$"


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_log_odds_by_hand_and_stable() -> None:
    p = torch.tensor([0.5, 0.25, 0.9, 1e-30], dtype=torch.float64)
    expected = [0.0, math.log(1 / 3), math.log(9), math.log(1e-30)]
    assert torch.allclose(log_odds(p.log()), torch.tensor(expected, dtype=torch.float64))
    # Near p = 1 a naive log(p) - log(1 - p) loses everything to rounding; expm1 keeps it.
    tiny = torch.tensor([-1e-5], dtype=torch.float32)
    assert torch.isfinite(log_odds(tiny)).all()
    assert abs(log_odds(tiny).item() - math.log((1 - 1e-5) / 1e-5)) < 1e-3


def test_pair_loss_by_hand() -> None:
    # p_i = 0.5 (odds 0), p_j = 0.25 (log-odds log(1/3)): sigma(log 3) = 0.75, loss = log(1 + 0.25^2).
    loss = pair_loss(torch.tensor(math.log(0.5)), torch.tensor(math.log(0.25)))
    assert loss.item() == pytest.approx(math.log(1 + 0.25**2), rel=1e-6)
    # mean per-token log-probs of -2.0 and -2.5: by hand through the formula
    oi, oj = -2.0 - math.log(1 - math.exp(-2.0)), -2.5 - math.log(1 - math.exp(-2.5))
    want = math.log(1 + (_sigmoid(oi - oj) - 0.5) ** 2)
    assert pair_loss(torch.tensor(-2.0, dtype=torch.float64), torch.tensor(-2.5, dtype=torch.float64)).item() == pytest.approx(want)
    # symmetric, and bounded by log(1 + 1/4)
    a, b = torch.tensor(-1.0), torch.tensor(-30.0)
    assert pair_loss(a, b).item() == pytest.approx(pair_loss(b, a).item())
    assert pair_loss(a, b).item() < math.log(1.25)


def test_zero_loss_and_zero_gradient_at_balance() -> None:
    logp = torch.full((4,), -3.2, requires_grad=True)
    loss = bpo_loss(logp, torch.zeros(4, dtype=torch.long))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, torch.zeros(4))


def test_gradient_pushes_the_likelier_group_down() -> None:
    logp = torch.tensor([-2.0, -3.0], requires_grad=True)  # group 0 likelier
    bpo_loss(logp, torch.tensor([0, 0])).backward()
    assert logp.grad[0] > 0 > logp.grad[1]  # descent lowers group 0 and raises group 1
    # and a gradient step shrinks the gap
    with torch.no_grad():
        stepped = logp - 10.0 * logp.grad
    assert (stepped[0] - stepped[1]).abs() < 1.0


def test_k2_of_the_k_group_form_equals_the_pair_form() -> None:
    a, b = torch.tensor(-1.7), torch.tensor(-2.9)
    k_form = bpo_loss(torch.stack([a, b]), torch.tensor([3, 3]))
    assert k_form.item() == pytest.approx(pair_loss(a, b).item(), rel=1e-6)


def test_k_groups_average_all_pairs_and_sets_weigh_equally() -> None:
    logp = torch.tensor([-1.0, -2.0, -3.0, -4.0, -2.0, -2.5])
    prompt = torch.tensor([0, 0, 0, 0, 1, 1])
    race_pairs = [pair_loss(logp[i], logp[j]) for i in range(4) for j in range(i + 1, 4)]
    want = (torch.stack(race_pairs).mean() + pair_loss(logp[4], logp[5])) / 2
    assert bpo_loss(logp, prompt).item() == pytest.approx(want.item(), rel=1e-6)


def test_pairs_never_cross_prompts_or_attributes() -> None:
    prompt = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0, 0, 0])
    attribute = torch.tensor([0, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    group = torch.tensor([0, 1, 0, 1, 2, 3, 0, 1, 2, 3])
    i, j = same_prompt_pairs(prompt, attribute, group)
    assert len(i) == 1 + 6 + 6
    assert bool((prompt[i] == prompt[j]).all() and (attribute[i] == attribute[j]).all())
    # a set holding a group twice is a broken batch, refused
    with pytest.raises(ValueError, match=BROKEN_BATCH):
        same_prompt_pairs(torch.tensor([0, 0]), None, torch.tensor([1, 1]))
    # a single image has no pair: loss 0, and backward() still runs
    lone = torch.tensor([-1.0], requires_grad=True)
    loss = bpo_loss(lone, torch.tensor([0]))
    assert loss.item() == 0.0
    loss.backward()
    assert lone.grad.tolist() == [0.0]
    # bpo_loss checks the groups it is given, as same_prompt_pairs does
    with pytest.raises(ValueError, match=BROKEN_BATCH):
        bpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([0, 0]), None, torch.tensor([1, 1]))


def test_sft_and_combined() -> None:
    logp = torch.tensor([-1.0, -3.0])
    assert sft_loss(logp).item() == 2.0
    out = combined_loss(logp, torch.tensor([0, 0]), None, torch.tensor([0, 1]), alpha=0.5, beta=2.0)
    assert out["loss"].item() == pytest.approx(0.5 * 2.0 + 2.0 * pair_loss(logp[0], logp[1]).item())


def test_contrast_costs_only_the_gaps_that_shrank() -> None:
    before = torch.tensor([0.30, 0.10, -0.05, 0.20])
    gap = torch.tensor([0.10, 0.25, -0.15, 0.20], requires_grad=True)  # shrank 0.2, grew, shrank 0.1, same
    loss = contrast_loss(gap, before)
    assert loss.item() == pytest.approx((0.2 + 0.1) / 4)
    loss.backward()
    # a row whose gap shrank is pushed to widen it (d loss / d gap = -1/N); the others feel nothing
    assert gap.grad.tolist() == pytest.approx([-0.25, 0.0, -0.25, 0.0])
    assert contrast_loss(before.clone(), before).item() == 0.0  # the model as it was: no cost


def test_partners_pair_each_row_with_the_next_group_of_its_own_unit() -> None:
    assert partners([2, 2]) == [1, 0, 3, 2]
    assert partners([4, 2]) == [1, 2, 3, 0, 5, 4]
    assert partners([]) == []


def _toy_set(tmp_path, n_prompts: int = 5, per_group: int = 3) -> BalancedSet:
    """A balanced set on disk with both attributes: every prompt, every group, per_group images."""
    rows = []
    for p in range(n_prompts):
        for attr in ("gender", "race"):
            for g in ATTRIBUTES[attr]:
                for k in range(per_group):
                    path = tmp_path / f"{p}-{g}-{k}.png"
                    Image.new("RGB", (8, 8), (p * 40, k * 60, len(g) * 20)).save(path)
                    rows.append({"prompt": f"a {g} c{p}", "neutral_prompt": f"a c{p}", "prompt_id": f"c{p}",
                                 "attribute": attr, "group": g, "sample": k, "image": path.name})
    # shuffled on purpose: the plan must not rely on the file's row order
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).sample(frac=1.0, random_state=0).reset_index(drop=True)
    return BalancedSet(tmp_path, frame, {})


def test_batches_are_prompt_major_and_every_pair_shares_its_prompt(tmp_path) -> None:
    plan = BatchPlan(_toy_set(tmp_path), units_per_batch=4, seed=0)
    attrs = list(ATTRIBUTES)
    for step in range(10):
        batch = plan.draw(stage=1, step=step)
        rows = plan.frame.iloc[batch.rows]
        # each row is what its indices claim: its prompt, attribute and group
        assert rows["prompt_id"].tolist() == batch.prompt_ids
        assert rows["attribute"].tolist() == [attrs[a] for a in batch.attribute_index.tolist()]
        assert rows["group"].tolist() == [ATTRIBUTES[attrs[a]][g] for a, g in
                                          zip(batch.attribute_index.tolist(), batch.group_index.tolist())]
        i, j = same_prompt_pairs(batch.prompt_index, batch.attribute_index, batch.group_index)
        assert len(i) > 0
        for a, b in zip(i.tolist(), j.tolist()):
            assert batch.prompt_ids[a] == batch.prompt_ids[b] and batch.prompts[a] == batch.prompts[b]
        # four distinct (prompt, attribute) units, each with every group of its attribute once
        units = list(zip(batch.prompt_index.tolist(), batch.attribute_index.tolist()))
        assert len(set(units)) == 4
        assert len(units) == sum(len(ATTRIBUTES[attrs[a]]) for _, a in set(units))
    assert plan.draw(1, 3).rows == plan.draw(1, 3).rows  # deterministic in (stage, step): resumes draw alike
    assert plan.draw(1, 3).rows != plan.draw(2, 3).rows
    # the seed defaults to 0, and another seed draws other batches
    default = BatchPlan(plan.data, units_per_batch=4)
    assert [default.draw(1, s).rows for s in range(5)] == [plan.draw(1, s).rows for s in range(5)]
    other = BatchPlan(plan.data, units_per_batch=4, seed=1)
    assert [other.draw(1, s).rows for s in range(5)] != [plan.draw(1, s).rows for s in range(5)]


def test_one_prompt_with_both_attributes_weighs_each_attribute_set_equally() -> None:
    """A prompt carrying a gender set (2 images) and a race set (4 images): with attribute_index the loss is
    the mean of two set losses, gender's one pair and race's six pairs averaged, worked out here by hand from
    the log-odds. Sets keyed by prompt alone would average the 7 pairs into one set, and pairs formed by
    prompt alone would add the 8 cross-attribute ones (15 pairs): both give other numbers."""
    logp = torch.tensor([-1.0, -2.0, -1.5, -2.5, -3.0, -4.0], dtype=torch.float64)
    prompt = torch.tensor([0, 0, 0, 0, 0, 0])
    attribute = torch.tensor([0, 0, 1, 1, 1, 1])  # gender: rows 0-1; race: rows 2-5
    group = torch.tensor([0, 1, 0, 1, 2, 3])
    odds = [_odds(lp) for lp in logp.tolist()]

    def pair(a: int, b: int) -> float:
        return math.log(1 + (_sigmoid(odds[a] - odds[b]) - 0.5) ** 2)

    gender = pair(0, 1)
    race = sum(pair(a, b) for a in range(2, 6) for b in range(a + 1, 6)) / 6
    want = (gender + race) / 2
    assert bpo_loss(logp, prompt, attribute, group).item() == pytest.approx(want, rel=1e-12)
    one_set = (gender + 6 * race) / 7
    cross = sum(pair(a, b) for a in range(6) for b in range(a + 1, 6)) / 15
    assert min(abs(want - one_set), abs(want - cross)) > 1e-3  # told apart by the assertion above
    # A second prompt's sets join as sets of their own: three sets, each weighing a third.
    logp2 = torch.cat([logp, torch.tensor([-0.5, -3.5], dtype=torch.float64)])
    prompt2, attribute2 = torch.tensor([0] * 6 + [1, 1]), torch.cat([attribute, torch.tensor([0, 0])])
    other = math.log(1 + (_sigmoid(_odds(-0.5) - _odds(-3.5)) - 0.5) ** 2)
    got = bpo_loss(logp2, prompt2, attribute2, torch.cat([group, torch.tensor([0, 1])])).item()
    assert got == pytest.approx((gender + race + other) / 3, rel=1e-12)
    # The gradient is that of the hand formula: d/d logp_0 only through gender's one pair (weight 1/2).
    x = logp.clone().requires_grad_(True)
    bpo_loss(x, prompt, attribute, group).backward()
    y = logp[:2].clone().requires_grad_(True)
    (pair_loss(y[0], y[1]) / 2).backward()
    assert torch.allclose(x.grad[:2], y.grad, rtol=1e-12, atol=0)


def _odds(logp: float) -> float:
    """log(p / (1 - p)) from log p, in plain floating point."""
    return logp - math.log(1 - math.exp(logp))


def _toy_batch(unit_rows: list[int]):
    """A batch of units with `unit_rows` rows each; every row's fields name its unit and place."""
    from fairgen.fix.batches import Batch

    rows = list(range(sum(unit_rows)))
    unit = [u for u, n in enumerate(unit_rows) for _ in range(n)]
    place = [k for n in unit_rows for k in range(n)]
    return Batch(rows=rows, prompts=[f"p{u}" for u in unit], explicit_prompts=[f"e{u}-{k}" for u, k in zip(unit, place)],
                 prompt_ids=[f"id{u}" for u in unit], images=[f"img{r}" for r in rows],
                 prompt_index=torch.tensor(unit), attribute_index=torch.tensor([u % 2 for u in unit]),
                 group_index=torch.tensor(place), unit_rows=unit_rows)


@pytest.mark.parametrize("world", [1, 2, 3, 6])  # 6: more processes than units, the last one's shard empty
def test_shard_takes_whole_units_round_robin_and_the_shards_partition_the_batch(world) -> None:
    batch = _toy_batch([2, 4, 2, 4, 4])  # gender, race, gender, race, race sets
    starts = [0, 2, 6, 8, 12, 16]
    seen = []
    for rank in range(world):
        mine = batch.shard(rank, world)
        units = list(range(rank, 5, world))
        want = [r for u in units for r in range(starts[u], starts[u + 1])]
        assert mine.rows == want and mine.unit_rows == [batch.unit_rows[u] for u in units]
        for field in ("prompts", "explicit_prompts", "prompt_ids", "images"):
            assert getattr(mine, field) == [getattr(batch, field)[r] for r in want]
        for field in ("prompt_index", "attribute_index", "group_index"):
            assert torch.equal(getattr(mine, field), getattr(batch, field)[want])
        seen += mine.rows
    assert sorted(seen) == batch.rows  # every row in exactly one shard


def test_combined_loss_passes_the_attributes_and_groups_on() -> None:
    """combined_loss's BPO term is bpo_loss with the batch's attribute and group indices: sets split by
    attribute (not pooled by prompt), and a set holding one group twice refused."""
    logp = torch.tensor([-1.0, -2.0, -1.5, -2.5, -3.0, -4.0], dtype=torch.float64)
    prompt, attribute = torch.zeros(6, dtype=torch.long), torch.tensor([0, 0, 1, 1, 1, 1])
    group = torch.tensor([0, 1, 0, 1, 2, 3])
    out = combined_loss(logp, prompt, attribute, group, alpha=0.0, beta=1.0)
    assert set(out) == {"loss", "sft", "bpo"} and out["sft"].item() == pytest.approx(-logp.mean().item())
    assert out["bpo"].item() == pytest.approx(bpo_loss(logp, prompt, attribute, group).item(), rel=1e-12)
    assert out["bpo"].item() != pytest.approx(bpo_loss(logp, prompt, None, None).item(), rel=1e-6)
    with pytest.raises(ValueError, match=BROKEN_BATCH):
        combined_loss(logp, prompt, attribute, torch.tensor([0, 1, 0, 1, 2, 2]), alpha=1.0, beta=1.0)


def test_an_empty_balanced_set_is_refused(tmp_path) -> None:
    empty = BalancedSet(tmp_path, pd.DataFrame(columns=list(COLUMNS)), {})
    with pytest.raises(ValueError, match="^the balanced set is empty$"):
        BatchPlan(empty, units_per_batch=2)


def test_a_drawn_batch_carries_each_row_and_uses_the_smallest_group(tmp_path) -> None:
    """Every field of a drawn batch is that of its rows (explicit prompt, image, unit sizes), and a unit
    whose groups hold unequal numbers of images uses as many copies as its smallest group has."""
    import numpy as np

    data = _toy_set(tmp_path, n_prompts=2, per_group=3)
    frame = data.frame
    # one prompt's "male" images cut to one: that gender unit has a single copy
    drop = frame.index[(frame["prompt_id"] == "c0") & (frame["group"] == "male") & (frame["sample"] > 0)]
    data = BalancedSet(tmp_path, frame.drop(drop).reset_index(drop=True), {})
    plan = BatchPlan(data, units_per_batch=4, seed=1)
    sizes = {(plan.prompt_ids[p], list(ATTRIBUTES)[a]): grid.shape for p, a, grid in plan.units}
    assert sizes[("c0", "gender")] == (2, 1) and sizes[("c1", "gender")] == (2, 3)
    assert sizes[("c0", "race")] == (4, 3)
    for step in range(3):
        batch = plan.draw(stage=0, step=step)
        rows = plan.frame.iloc[batch.rows]
        assert batch.explicit_prompts == rows["prompt"].tolist()
        assert batch.prompts == rows["neutral_prompt"].tolist()
        assert len(batch.images) == len(batch.rows)
        for r, image in zip(batch.rows, batch.images):
            assert np.array_equal(np.asarray(image), np.asarray(data.image(r)))
        units = list(zip(batch.prompt_index.tolist(), batch.attribute_index.tolist()))
        starts = np.cumsum([0, *batch.unit_rows])
        assert batch.unit_rows == [len(ATTRIBUTES[list(ATTRIBUTES)[units[s][1]]]) for s in starts[:-1]]
        assert sum(batch.unit_rows) == len(batch.rows)
