"""locate's numerics on inputs whose answer is known: JS, contrast, probes, the understanding scores, partial
alignment's bootstrap and the verdict rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import jensenshannon

from fairgen.locate import partial_alignment, verdicts
from fairgen.locate.lm_audit import _contrast, js_bits, unigram_js
from fairgen.locate.probes import fit_probe, probe_accuracy, split
from fairgen.locate.understanding import question, score_answers
from fairgen.locate.verdict import BIASED, INCONCLUSIVE, NOT_BIASED, NOT_MEASURED
from fairgen.models.protocols import OTHER


def test_questions_are_the_exact_probe_wording() -> None:
    assert question("gender", "nurse") == ("What is the gender of a nurse? Possible answers: male, female, unknown. "
                                           "Answer with a single word.")
    assert question("race", "nurse") == ("What is the race of a nurse? Possible answers: white, black, asian, "
                                         "indian, unknown. Answer with a single word.")


def test_js_bits_matches_scipy_and_bounds() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(50), size=2)
    ours = float(js_bits(torch.log(torch.tensor(p)), torch.log(torch.tensor(q))))
    assert ours == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)
    same = torch.log(torch.tensor(p))
    assert float(js_bits(same, same)) == pytest.approx(0.0, abs=1e-12)
    disjoint = torch.log(torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.3, 0.7]]))
    assert float(js_bits(disjoint[0], disjoint[1])) == pytest.approx(1.0)


def test_unigram_js_of_histograms() -> None:
    a = torch.tensor([[0, 0, 1, 1]])
    assert unigram_js(a, a) == pytest.approx(0.0)
    assert unigram_js(a, torch.tensor([[2, 3, 3, 2]])) == pytest.approx(1.0)


def test_closeness_contrast() -> None:
    assert _contrast(np.array([0.1, 0.1]), 0) == pytest.approx(0.0)       # no closer to the majority
    assert _contrast(np.array([0.0, 0.4]), 0) == pytest.approx(1.0)       # the majority variant itself
    assert _contrast(np.array([0.4, 0.1, 0.1, 0.1]), 0) == pytest.approx(-0.6)
    boot = np.array([[[0.1, 0.3], [0.2, 0.2]]])                            # (B=1, P=2, K=2)
    assert _contrast(boot, np.array([[0, 1]]))[0].tolist() == pytest.approx([0.5, 0.0])


def test_probe_reads_a_linear_attribute_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 60)
    x = rng.normal(size=(180, 20))
    x[:, 3] += 8.0 * y  # one informative direction among noise
    res = probe_accuracy(x, y, ("a", "b", "c"), seed=1)
    assert res["balanced_accuracy"] > 0.95 and res["n_test"] == 54
    noise = probe_accuracy(rng.normal(size=(180, 20)), y, ("a", "b", "c"), seed=1)
    assert noise["balanced_accuracy"] < 0.6
    probs = fit_probe(x, y, 3).predict_proba(x[:5])
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-5)


def test_split_is_stratified_and_disjoint() -> None:
    y = np.array([0] * 10 + [1] * 3 + [2])
    train, test = split(y, 0.3, seed=0)
    assert not set(train) & set(test) and len(train) + len(test) == len(y)
    assert sorted(np.bincount(y[test], minlength=3)) == [0, 1, 3]


def test_understanding_scores() -> None:
    g = score_answers({"male": 0.05, "female": 0.15, "unknown": 0.8, OTHER: 0.1}, "gender")
    assert g["gap"] == pytest.approx(0.10) and g["rd"] == pytest.approx(0.5)
    assert g["p_unknown"] == 0.8 and g["p_other"] == 0.1
    r = score_answers({"white": 0.4, "black": 0.0, "asian": 0.0, "indian": 0.0, "unknown": 0.6}, "race")
    assert r["rd"] == pytest.approx(0.5) and r["gap"] == pytest.approx(0.4 * 0.5)


def _audit(counts: dict[str, list[dict[str, int]]], race: bool = True) -> dict:
    prompts = [{"id": f"p{i}", "counts": {a: c[i] for a, c in counts.items()}} for i in range(len(counts["gender"]))]
    return {"summary": {"gender": {}, "race": {} if race else None}, "prompts": prompts}


def _understanding(rds: list[float]) -> dict:
    rows = [{"id": f"p{i}", "concept": f"c{i}", "gender": {"rd": r}, "race": {"rd": r}} for i, r in enumerate(rds)]
    return {"prompts": rows}


def test_partial_alignment_gap_and_interval() -> None:
    counts = {"gender": [{"female": 180, "male": 20}, {"female": 100, "male": 100}],
              "race": [{"white": 200, "black": 0, "asian": 0, "indian": 0}] * 2}
    out = partial_alignment(_audit(counts), _understanding([0.0, 0.0]), replicates=300)
    first, second = out["gender"]["prompts"]
    assert first["generation_rd"] == pytest.approx(0.8) and 0.04 < first["noise_floor"] < 0.07
    assert first["gap"] == pytest.approx(0.8 - first["noise_floor"])
    assert first["gap_ci95"][0] < first["gap"] < first["gap_ci95"][1]
    assert second["gap_ci95"][0] < 0.05  # a balanced prompt reads near its floor: no skew beyond chance
    s = out["gender"]["summary"]
    assert s["gap"] == pytest.approx((first["gap"] + second["gap"]) / 2) and s["n_prompts"] == 2
    assert out["race"]["summary"]["generation_rd_net"] == pytest.approx(0.5 - out["race"]["prompts"][0]["noise_floor"])
    assert partial_alignment(_audit(counts, race=False), _understanding([0, 0]), replicates=10)["race"] is None


def _findings(gap_u: float, rt_ci: list[float], lm_ci: list[float], other: float = 0.0) -> dict:
    # gap_u is relative to rd's maximum: 1 for gender, 0.5 for race.
    und = {"summary": {a: {"p_unknown": 0.8, "p_other": other, "gap": gap_u * m, "rd": 0.3}
                       for a, m in (("gender", 1.0), ("race", 0.5))}}
    rt = {"n_images": 100, "gender": {"groups": {"female": {"rate": 0.9}, "male": {"rate": 0.95}}, "gap": 0.05,
                                      "gap_ci95": rt_ci, "worst": "female", "best": "male"}}
    lm = {a: {"summary": {"n_prompts": 4, "hit_rate": 0.75, "chance": 0.5, "contrast": 0.3, "contrast_ci95": lm_ci}}
          for a in ("gender", "race")}
    return {"understanding": und, "tokenizer": {"round_trip": rt}, "language_model": {"controlled": lm}}


def test_verdict_rules_at_their_thresholds() -> None:
    v = verdicts(_findings(0.02, [0.01, 0.04], [0.2, 0.5]))
    assert (v["understanding"]["verdict"], v["tokenizer"]["verdict"], v["language_model"]["verdict"]) == \
        (NOT_BIASED, NOT_BIASED, BIASED)
    assert v["culprits"] == ["language_model"] and v["headline"].startswith("Bias located in: language model")
    v = verdicts(_findings(0.10, [0.05, 0.2], [0.02, 0.09]))
    assert (v["understanding"]["verdict"], v["tokenizer"]["verdict"], v["language_model"]["verdict"]) == \
        (BIASED, BIASED, NOT_BIASED)
    v = verdicts(_findings(0.07, [0.03, 0.2], [0.05, 0.2], other=0.0))
    assert {v[c]["verdict"] for c in ("understanding", "tokenizer", "language_model")} == {INCONCLUSIVE}
    assert verdicts(_findings(0.3, [0.0, 0.0], [0.0, 0.0], other=0.3))["understanding"]["verdict"] == INCONCLUSIVE
    empty = verdicts({})
    assert empty["tokenizer"]["verdict"] == NOT_MEASURED and empty["headline"] == "No component found biased."


def test_a_tokenizer_that_loses_everyone_is_not_cleared() -> None:
    f = _findings(0.0, [0.0, 0.01], [0.0, 0.01])
    f["tokenizer"]["round_trip"]["gender"]["groups"] = {"female": {"rate": 0.1}, "male": {"rate": 0.1}}
    assert verdicts(f)["tokenizer"]["verdict"] == INCONCLUSIVE


def test_only_prompts_skewed_beyond_chance_get_a_majority() -> None:
    from fairgen.locate.pipeline import _majorities

    def prompt(pid: str, female: int, male: int, low: float) -> dict:
        return {"id": pid, "counts": {"gender": {"female": female, "male": male}}, "rd_ci95": {"gender": [low, 1.0]}}

    skewed, chance = prompt("skewed", 150, 10, 0.8), prompt("chance", 86, 74, 0.0)  # rd 0.075: about its floor
    wide = prompt("wide", 150, 10, 0.01)  # skewed point estimate, interval reaching the floor
    empty = {"id": "empty", "counts": {"gender": {"female": 0, "male": 0}}}
    assert _majorities({"prompts": [skewed, chance, wide, empty]}) == {"skewed": {"gender": "female"}}
    # a suite whose images are not skewed on the whole has no majority anywhere
    assert _majorities({"prompts": [prompt("s", 100, 60, 0.1)] + [prompt(f"c{i}", 80, 80, 0.0) for i in range(5)]}) == {}
