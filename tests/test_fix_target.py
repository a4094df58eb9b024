"""`fairgen fix --target`: the losses toward a non-uniform target (worked by hand), the weights the
batches carry, and a run end to end on a small fairgen-tiny (conftest `mini`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fairgen.fix import fix
from fairgen.fix.batches import BatchPlan, target_weights
from fairgen.fix.loss import bpo_loss, combined_loss, sft_loss
from fairgen.metrics.target import UNIFORM, load_target
from fairgen.types import ATTRIBUTES, Prompt

from test_fix_loss import _toy_set
from test_fix_pipeline import _config


def _pair(a: float, b: float) -> float:
    """The BPO pair loss in plain floats: log(1 + (sigmoid(o_a - o_b) - 1/2)^2), o = log p - log(1 - p)."""
    odds = lambda lp: lp - math.log(1 - math.exp(lp))  # noqa: E731
    return math.log1p((1 / (1 + math.exp(-(odds(a) - odds(b)))) - 0.5) ** 2)


def test_losses_toward_a_target_by_hand():
    # one prompt: a gender set (female, male) weighted 1.5 / 0.5 (target 75/25) and a race set whose white
    # and black share 0.375 each (weight 1.5) and asian and indian 0.125 (weight 0.5)
    logp = torch.tensor([-2.0, -3.0, -1.0, -1.5, -2.5, -4.0], dtype=torch.float64)
    weight = torch.tensor([1.5, 0.5, 1.5, 1.5, 0.5, 0.5], dtype=torch.float64)
    prompt = torch.zeros(6, dtype=torch.long)
    attribute = torch.tensor([0, 0, 1, 1, 1, 1])
    group = torch.tensor([0, 1, 0, 1, 2, 3])
    sft = -(1.5 * -2.0 + 0.5 * -3.0 + 1.5 * -1.0 + 1.5 * -1.5 + 0.5 * -2.5 + 0.5 * -4.0) / 6
    assert sft_loss(logp, weight).item() == pytest.approx(sft, abs=1e-12)
    # gender's only pair has unequal shares: it leaves; race keeps white-black and asian-indian, the mean of
    # the two is the race set's loss, and the mean over sets is over the one set that has pairs
    bpo = (_pair(-1.0, -1.5) + _pair(-2.5, -4.0)) / 2
    assert bpo_loss(logp, prompt, attribute, group, weight).item() == pytest.approx(bpo, abs=1e-12)
    both = combined_loss(logp, prompt, attribute, group, 0.3, 2.0, weight)
    assert both["loss"].item() == pytest.approx(0.3 * sft + 2.0 * bpo, abs=1e-12)
    # every weight 1 (the uniform target) is exactly the plain loss
    ones = torch.ones(6, dtype=torch.float64)
    assert sft_loss(logp, ones).item() == sft_loss(logp).item()
    assert bpo_loss(logp, prompt, attribute, group, ones).item() == bpo_loss(logp, prompt, attribute, group).item()


def test_target_weights_follow_each_concept_and_ride_with_their_rows(tmp_path):
    spec = tmp_path / "t.yaml"
    spec.write_text("default:\n  gender: {female: 0.75, male: 0.25}\n"
                    "concepts:\n  c1:\n    race: {white: 0.1, black: 0.2, asian: 0.3, indian: 0.4}\n")
    target = load_target(spec)
    prompts = [Prompt(id=f"c{p}", text=f"a c{p}", concept=f"c{p}") for p in range(5)]
    assert target_weights(UNIFORM, prompts, ("gender", "race")) is None
    weights = target_weights(target, prompts, ("gender", "race"))
    assert weights[("c0", "gender")] == pytest.approx((1.5, 0.5))
    assert weights[("c0", "race")] == pytest.approx((1.0, 1.0, 1.0, 1.0))
    assert weights[("c1", "race")] == pytest.approx((0.4, 0.8, 1.2, 1.6))
    plan = BatchPlan(_toy_set(tmp_path), units_per_batch=4, seed=0, weights=weights)
    attrs = list(ATTRIBUTES)
    for step in range(6):
        batch = plan.draw(stage=1, step=step)
        want = [weights[(pid, attrs[a])][g] for pid, a, g in
                zip(batch.prompt_ids, batch.attribute_index.tolist(), batch.group_index.tolist())]
        assert batch.weight.tolist() == pytest.approx(want)
        half = batch.shard(1, 2)
        assert half.weight.tolist() == pytest.approx([want[batch.rows.index(r)] for r in half.rows])
    assert BatchPlan(plan.data, units_per_batch=4).draw(1, 0).weight is None


def test_fix_toward_a_target_end_to_end(mini, suites_dir, tmp_path, cli):
    torch.set_num_threads(1)
    spec = tmp_path / "t.yaml"
    spec.write_text("source: a test target\ndefault:\n  gender: {female: 0.9, male: 0.1}\n")
    out = tmp_path / "fix"
    report = fix(_config(mini, suites_dir, target=str(spec), alpha=1.0), out)
    # the audits measured the distance to the target, and the report carries it before and after
    for moment in ("before", "after"):
        results = json.loads((out / moment / "test" / "results.json").read_text())
        assert results["target"]["name"] == str(spec)
        tv = results["summary"]["gender"]["tv"]  # mini's barely trained tokenizer draws few faces: may be None
        assert report[moment]["tv"]["gender"] == {"mean": tv["mean"], "ci95": tv["ci95"]}
        assert report["tv_change"]["gender"][moment] == tv["mean"]
    assert "Distance to the target" in (out / "fix_report.md").read_text()
    assert "Distance to the target" in (out / "fix_report.html").read_text()
    # the weighted SFT raised the female images' likelihood against the male ones' (mean per-token log p)
    from fairgen import models
    from fairgen.fix.data import BalancedSet

    data = BalancedSet.load(out / "data")

    def signed_gap(model) -> float:
        f, m = data.frame[data.frame["group"] == "female"], data.frame[data.frame["group"] == "male"]
        with torch.no_grad():
            lf = model.image_token_logprob(f["neutral_prompt"].tolist(), [data.image(i) for i in f.index])
            lm = model.image_token_logprob(m["neutral_prompt"].tolist(), [data.image(i) for i in m.index])
        return (lf - lm).mean().item()

    # the same run toward uniform, for comparison: every setting and seed alike but the target
    fix(_config(mini, suites_dir, alpha=1.0), tmp_path / "uniform")
    base = signed_gap(models.load(f"tiny:{mini}"))
    toward = signed_gap(models.load(f"tiny:{mini}", adapter=out / "adapter"))
    uniform = signed_gap(models.load(f"tiny:{mini}", adapter=tmp_path / "uniform" / "adapter"))
    assert toward > uniform + 0.05 and toward > base, (base, uniform, toward)
    # a bad targets file is one line and exit 2, before anything is written
    bad = tmp_path / "bad.yaml"
    bad.write_text("default:\n  gender: {female: 0.9, male: 0.2}\n")
    proc = cli("fix", "--model", f"tiny:{mini}", "--target", str(bad), "--out", str(tmp_path / "refused"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "sum" in proc.stderr
    assert not (tmp_path / "refused").exists()
