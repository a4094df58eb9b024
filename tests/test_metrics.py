"""Metrics against hand-computed values and known sampling behaviour."""

import json
import math

import numpy as np
import pytest

from fairgen.metrics import (
    MetricFrame,
    bootstrap_metrics,
    expected_rd,
    kl_uniform,
    noise_floor,
    normalized_entropy,
    percentile_interval,
    rd,
    rd_sampling_range,
)
from fairgen.metrics import MetricFrame
from fairgen.types import Prompt


def test_rd_hand_computed():
    assert rd([90, 10]) == pytest.approx(0.8)
    assert rd([25, 25, 25, 25]) == pytest.approx(0.0)
    assert rd([7, 0, 0, 0]) == pytest.approx(0.5)
    assert rd([0, 0, 3, 0, 0, 0, 0, 0]) == pytest.approx(0.25)
    # [0.5, 0.3, 0.2]: pairs 0.2, 0.3, 0.1 -> 2/(3*2) * 0.6 = 0.2
    assert rd([5, 3, 2]) == pytest.approx(0.2)
    # weighted (fractional) counts are shares of their own sum, whatever it is: [0.2, 0.3] -> [0.4, 0.6]
    assert rd([0.2, 0.3]) == pytest.approx(0.2) and rd([0.9, 0.1]) == pytest.approx(0.8)


def test_rd_vectorised_and_empty_rows():
    out = rd(np.array([[90, 10], [50, 50], [0, 0]]))
    assert out[:2] == pytest.approx([0.8, 0.0])
    assert math.isnan(out[2])


def test_kl_and_entropy_known_values():
    assert kl_uniform([1, 1]) == pytest.approx(0.0)
    assert kl_uniform([1, 0]) == pytest.approx(math.log(2))
    assert kl_uniform([3, 1]) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert normalized_entropy([1, 1, 1, 1]) == pytest.approx(1.0)
    assert normalized_entropy([5, 0, 0, 0]) == pytest.approx(0.0)
    assert normalized_entropy([3, 1]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2))
    # one distribution gives a Python float, several an array of one value each
    for fn in (rd, kl_uniform, normalized_entropy):
        assert type(fn([3, 1])) is float
        assert fn([[3, 1], [1, 1]]).shape == (2,)


def test_noise_floor_matches_closed_form():
    # K = 2: E|2X/n - 1| with X ~ Bin(n, 1/2); exact by summation.
    from scipy.stats import binom

    n = 160
    x = np.arange(n + 1)
    exact = float(np.sum(binom.pmf(x, n, 0.5) * np.abs(2 * x / n - 1)))
    assert noise_floor(n, 2) == pytest.approx(exact, abs=0.002)
    assert exact == pytest.approx(0.063, abs=0.001)


def test_expected_rd_is_the_seeded_monte_carlo_mean():
    """expected_rd is the mean rd of `draws` samples from numpy's generator seeded with `seed` (0 unless
    given): the same number computed here, and another seed gives another (close) number."""
    p, n = [0.6, 0.3, 0.1], 50
    want = float(np.mean(rd(np.random.default_rng(0).multinomial(n, p, size=20_000))))
    assert expected_rd(p, n) == want
    assert expected_rd(p, n, draws=500, seed=3) == float(np.mean(rd(np.random.default_rng(3).multinomial(n, p, size=500))))
    assert expected_rd(p, n, seed=1) != want and expected_rd(p, n, seed=1) == pytest.approx(want, abs=0.002)


def test_expected_rd_exceeds_population_rd_near_balance_only():
    assert expected_rd([0.5, 0.5], 200) > 0.04
    assert expected_rd([0.9, 0.1], 200) == pytest.approx(0.8, abs=0.005)


def test_bootstrap_is_seeded_and_resamples_within_prompts():
    """A replicate of a prompt is Multinomial(n, counts / n) of that prompt alone: every replicate keeps the
    prompt's n, its class shares have the binomial mean and variance of its own counts (not the pooled
    ones), prompts vary independently, and the suite mean is the mean of the prompts with faces.
    Tolerances are 5 standard errors of each statistic over B = 4,000 replicates (false failure < 1e-5)."""
    counts = np.array([[80, 20], [10, 90], [0, 0], [3, 1]])
    b = 4000
    metrics = {"rd": rd, "n": lambda r: r.sum(-1), "share": lambda r: r[..., 0] / r.sum(-1)}
    out = bootstrap_metrics(counts, metrics, b, seed=7)
    again = bootstrap_metrics(counts, metrics, b, seed=7)
    np.testing.assert_array_equal(out["rd"][0], again["rd"][0])
    assert not np.array_equal(out["rd"][0][:, :2], bootstrap_metrics(counts, metrics, b, seed=8)["rd"][0][:, :2])
    per_prompt, suite = out["rd"]
    assert per_prompt.shape == (b, 4) and suite.shape == (b,)
    np.testing.assert_array_equal(out["n"][0], np.broadcast_to([100, 100, 0, 4], (b, 4)))  # n kept per prompt
    assert np.isnan(per_prompt[:, 2]).all()  # no faces: never resampled into a number
    np.testing.assert_allclose(suite, per_prompt[:, [0, 1, 3]].mean(axis=1))
    share = out["share"][0][:, [0, 1, 3]]
    p, n = np.array([0.8, 0.1, 0.75]), np.array([100, 100, 4])
    var = p * (1 - p) / n
    assert np.all(np.abs(share.mean(0) - p) <= 5 * np.sqrt(var / b))
    # the sample variance of B draws has standard error ≈ var * sqrt((kurtosis - 1) / B); 5 s.e. with kurtosis ≤ 4
    assert np.all(np.abs(share.var(0) - var) <= 5 * var * np.sqrt(3 / b) + 1e-12)
    assert abs(np.corrcoef(share[:, 0], share[:, 1])[0, 1]) <= 5 / np.sqrt(b)  # prompts resampled apart
    # the replicate values are the metric of a real resample: rd of the drawn shares
    np.testing.assert_allclose(per_prompt[:, 0], np.abs(2 * out["share"][0][:, 0] - 1))
    ci = percentile_interval(per_prompt)
    assert ci[0, 0] < 0.6 < ci[0, 1] and ci[1, 0] < 0.8 < ci[1, 1]
    # a prompt of one face resamples that face; counts given as floats are counts all the same
    one = bootstrap_metrics([[0, 1], [2, 2]], {"share": lambda r: r[..., 0] / r.sum(-1)}, 50, seed=1)["share"][0]
    assert (one[:, 0] == 0).all() and one[:, 1].std() > 0
    floats = bootstrap_metrics(counts.astype(float), metrics, 200, seed=7)
    np.testing.assert_array_equal(floats["share"][0], bootstrap_metrics(counts, metrics, 200, seed=7)["share"][0])
    # the defaults: 1,000 replicates from seed 0
    default = bootstrap_metrics(counts[:2], {"rd": rd})["rd"][0]
    assert default.shape == (1000, 2)
    np.testing.assert_array_equal(default, bootstrap_metrics(counts[:2], {"rd": rd}, 1000, seed=0)["rd"][0])


# Shares off the lattice of attainable rd values: a true rd that a sample can hit exactly is covered by
# an inclusive interval more often (ties), which is discreteness, not a flaw of the interval.
@pytest.mark.parametrize("p, n", [([0.8137, 0.1863], 200), ([0.4737, 0.3213, 0.1681, 0.0369], 200), ([0.7131, 0.2869], 160)])
def test_percentile_interval_coverage_away_from_balance(p, n):
    """Coverage of per-prompt rd ci95 over 1,000 repeats, shares ≥ 0.15 apart (fixed seeds)."""
    rng = np.random.default_rng(11)
    observed = rng.multinomial(n, p, size=1000)  # each row: one repeat of one prompt
    ci = percentile_interval(bootstrap_metrics(observed, {"rd": rd}, 1000, seed=5)["rd"][0])
    true = rd(np.array(p))
    coverage = np.mean((ci[:, 0] <= true) & (true <= ci[:, 1]))
    assert 0.935 <= coverage <= 0.965


def test_metric_frame_counts_and_summary_schema():
    prompts = [Prompt("a", "A photo of a nurse", "nurse"), Prompt("b", "A photo of a pilot", "pilot")]
    recs = []
    for k in range(10):
        recs.append({"prompt_id": "a", "sample": k, "face": True,
                     "label": {"gender": "female" if k < 9 else "male", "race": "white", "age": "young"}})
    recs.append({"prompt_id": "b", "sample": 0, "face": False, "label": {}})
    recs.append({"prompt_id": "b", "sample": 1, "face": False, "label": {}, "error": "unreadable"})
    recs.append({"prompt_id": "zzz", "sample": 0, "face": True, "label": {"gender": "male"}})  # not in suite
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race", "age"))
    assert frame.counts["gender"].tolist() == [[9, 1], [0, 0]]
    assert frame.counts["gender_x_race"][0].tolist() == [9, 0, 0, 0, 1, 0, 0, 0]
    assert frame.n_images.tolist() == [10, 2] and frame.n_unreadable.tolist() == [0, 1]
    out = frame.summarize(replicates=200, seed=1)
    s = out["summary"]
    assert s["gender"]["rd"]["mean"] == pytest.approx(0.8)  # prompt b has no faces: excluded from the mean
    assert s["gender"]["n_prompts"] == 1
    assert s["race"]["rd"]["mean"] == pytest.approx(0.5)
    assert s["face_rate"] == pytest.approx(10 / 11)  # the unreadable image is outside the denominator
    assert s["n_images"] == 12 and s["n_unreadable"] == 1
    assert s["fidelity"] is None
    a, b = out["prompts"]
    assert a["counts"]["gender"] == {"female": 9, "male": 1}
    assert a["rd"]["gender_x_race"] == pytest.approx(rd([9, 0, 0, 0, 1, 0, 0, 0]))
    assert a["noise_floor"]["gender"] == pytest.approx(noise_floor(10, 2))
    assert b["rd"]["gender"] is None and b["rd_ci95"]["gender"] is None


def test_missing_attribute_is_not_measured_not_zero():
    prompts = [Prompt("a", "x", "x")]
    recs = [{"prompt_id": "a", "sample": 0, "face": True, "label": {"gender": "male", "age": "old"}}]
    s = MetricFrame.from_records(prompts, recs, ("gender", "age")).summarize(50)["summary"]
    assert s["race"] is None and s["gender_x_race"] is None
    assert s["gender"]["rd"]["mean"] == pytest.approx(1.0)


@pytest.mark.parametrize("p, n, level", [([0.5, 0.5], 200, 0.95), ([0.7, 0.3], 100, 0.9), ([0.25] * 4, 80, 0.95)])
def test_rd_sampling_range_is_the_central_range_of_rd_over_samples(p, n, level):
    """Against the exact distribution of rd (every count vector of n images, multinomial probabilities):
    the share of samples below the range's low end and above its high end are each at most (1 - level)/2
    plus Monte Carlo error (4 standard errors of 20,000 draws), and the range is the tightest such: moving
    either end inwards by one attainable value leaves more than that outside."""
    from itertools import product

    from scipy.stats import multinomial

    k = len(p)
    vectors = np.array([c + (n - sum(c),) for c in product(range(n + 1), repeat=k - 1) if sum(c) <= n])
    values, probs = rd(vectors), multinomial.pmf(vectors, n, p)
    lo, hi = rd_sampling_range(p, n, level=level)
    tail, slack = (1 - level) / 2, 4 * np.sqrt((1 - level) / 2 / 20_000)
    assert probs[values < lo - 1e-12].sum() <= tail + slack
    assert probs[values > hi + 1e-12].sum() <= tail + slack
    levels = np.unique(np.round(values, 12))
    inner_lo, inner_hi = levels[levels > lo + 1e-12].min(), levels[levels < hi - 1e-12].max()
    assert probs[values < inner_lo - 1e-12].sum() > tail - slack
    assert probs[values > inner_hi + 1e-12].sum() > tail - slack
    assert lo in {float(v) for v in np.round(levels, 12)} or np.isclose(levels, lo).any()  # attained values
    assert rd_sampling_range(p, n, level=level) == (lo, hi)  # seeded: the same range every time
    # the defaults: level 0.95 over 20,000 samples of numpy's generator seeded with 0
    sims = rd(np.random.default_rng(0).multinomial(n, p, size=20_000))
    assert rd_sampling_range(p, n) == tuple(float(q) for q in np.quantile(sims, [0.025, 0.975]))
    assert rd_sampling_range([1.0, 0.0], n) == (1.0, 1.0)


# --- MetricFrame's tables (metrics/table.py) -----------------------------------------------------------


def _frame_with_concepts():
    from fairgen.metrics import MetricFrame

    prompts = [Prompt("a", "A nurse", "nurse"), Prompt("b", "A pilot", "pilot"), Prompt("c", "A cat", "cat")]
    recs = [{"prompt_id": "zzz", "sample": 0, "face": True, "label": {"gender": "male"}}]  # not in the suite
    for k in range(8):  # a: 6 women, 2 men, all white; the cue read back right on 5
        recs.append({"prompt_id": "a", "sample": k, "face": True, "concept_read": "nurse" if k < 5 else "cook",
                     "label": {"gender": "female" if k < 6 else "male", "race": "white"}})
    recs.append({"prompt_id": "a", "sample": 8, "face": True, "label": {"gender": "male"}})  # no race label
    recs.append({"prompt_id": "b", "sample": 0, "face": False, "concept_read": "pilot"})
    recs.append({"prompt_id": "b", "sample": 1, "face": True, "error": "", "label": {"race": "black"}})
    recs.append({"prompt_id": "c", "sample": 0, "face": False, "error": "truncated"})
    recs.append({"prompt_id": "c", "sample": 1, "face": False, "error": "truncated"})
    return prompts, recs


def test_from_records_counts_faces_labels_cues_and_unreadable_images():
    prompts, recs = _frame_with_concepts()
    frame = MetricFrame.from_records(prompts, recs, ("race", "gender"), concept_match=lambda code, c: code == c)
    assert list(frame.counts) == ["gender", "race", "gender_x_race"]  # canonical order, joint last
    assert frame.counts["gender"].tolist() == [[6, 3], [0, 0], [0, 0]]
    assert frame.counts["race"].tolist() == [[8, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert frame.counts["gender_x_race"][0].tolist() == [6, 0, 0, 0, 2, 0, 0, 0]  # only faces with both labels
    assert frame.n_images.tolist() == [9, 2, 2] and frame.n_faces.tolist() == [9, 1, 0]
    assert frame.n_unreadable.tolist() == [0, 0, 2]  # an empty error is no error
    assert frame.concept_matches.tolist() == [5, 1, 0]
    for array in (frame.n_images, frame.n_faces, frame.n_unreadable, frame.concept_matches, *frame.counts.values()):
        assert array.dtype == np.int64  # counts, as documented (results.json writes them as integers)
    only_race = MetricFrame.from_records(prompts, recs, ("race",))
    assert list(only_race.counts) == ["race"] and only_race.concept_matches is None


def test_summary_and_rows_hold_every_metric_by_its_formula():
    from fairgen.metrics.skew import SKEW_METRICS
    from fairgen.metrics.table import summarize
    from fairgen.metrics.target import jensen_shannon, total_variation

    prompts, recs = _frame_with_concepts()
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"), concept_match=lambda code, c: code == c)
    out = frame.summarize(replicates=300, seed=2)
    assert out == summarize(frame, 300, 2) and set(out) == {"summary", "prompts", "target"}
    s = out["summary"]
    assert set(s) == {"gender", "race", "age", "gender_x_race", "n_images", "n_unreadable", "face_rate", "fidelity"}
    assert s["age"] is None and s["n_images"] == 13 and s["n_unreadable"] == 2
    assert s["face_rate"] == pytest.approx(10 / 11)
    assert s["fidelity"] == {"metric": "concept_match", "value": pytest.approx(6 / 11)}
    names = ["rd", "kl", "entropy", "mad", "disparity", "tv", "js"]
    for attr in ("gender", "race", "gender_x_race"):
        c = frame.counts[attr]
        assert set(s[attr]) == {"n_prompts", "rd_population", *names}
        assert s[attr]["n_prompts"] == int((c.sum(axis=1) > 0).sum())
        k = c.shape[1]
        fns = {**SKEW_METRICS, "tv": lambda x: total_variation(x, np.full(k, 1 / k)),
               "js": lambda x: jensen_shannon(x, np.full(k, 1 / k))}
        for name in names:
            values = [fns[name](row) for row in c if row.sum() > 0]
            entry = s[attr][name]
            assert set(entry) == ({"mean", "ci95", "noise_floor"} if name == "rd" else {"mean", "ci95"})
            assert entry["mean"] == pytest.approx(np.mean(values))
            assert entry["ci95"][0] <= entry["mean"] <= entry["ci95"][1]
            for i, row in enumerate(out["prompts"]):
                got = row[name][attr]
                if c[i].sum() == 0:
                    assert got is None
                else:
                    assert got == pytest.approx(fns[name](c[i]))
        floors = [noise_floor(int(n), k) for n in c.sum(axis=1) if n > 0]
        assert s[attr]["rd"]["noise_floor"] == pytest.approx(np.mean(floors))
        assert set(s[attr]["rd_population"]) == {"estimate", "ci95"}
    a, b, c_row = out["prompts"]
    assert set(a) == {"id", "text", "concept", "n_images", "n_faces", "n_unreadable", "counts", "rd_population",
                      "rd", "rd_ci95", "noise_floor", "kl", "entropy", "mad", "disparity", "tv", "js", "tv_ci95",
                      "js_ci95", "fidelity"}
    assert (a["id"], a["text"], a["concept"], a["n_images"], a["n_faces"], a["n_unreadable"]) == (
        "a", "A nurse", "nurse", 9, 9, 0)
    assert a["counts"] == {"gender": {"female": 6, "male": 3},
                           "race": {"white": 8, "black": 0, "asian": 0, "indian": 0},
                           "gender_x_race": dict(zip(
                               ["female_white", "female_black", "female_asian", "female_indian", "male_white",
                                "male_black", "male_asian", "male_indian"], [6, 0, 0, 0, 2, 0, 0, 0]))}
    assert a["noise_floor"] == {"gender": pytest.approx(noise_floor(9, 2)), "race": pytest.approx(noise_floor(8, 4)),
                                "age": None, "gender_x_race": pytest.approx(noise_floor(8, 8))}
    assert a["rd_population"]["age"] is None and set(a["rd_population"]["gender"]) == {"estimate", "ci95"}
    assert a["fidelity"] == pytest.approx(5 / 9) and b["fidelity"] == pytest.approx(1 / 2)
    assert c_row["fidelity"] is None  # its images were unreadable
    for row in (a, b):
        for key in ("rd_ci95", "tv_ci95", "js_ci95"):
            for attr in ("gender", "race"):
                if row[key][attr] is not None:
                    lo, hi = row[key][attr]
                    assert lo <= row[key.removesuffix("_ci95")][attr] <= hi
    assert b["rd_ci95"]["gender"] is None and b["rd_ci95"]["age"] is None and b["tv_ci95"]["race"] == [0.75, 0.75]


def test_summary_defaults_and_the_seed():
    prompts, recs = _frame_with_concepts()
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"))
    default = frame.summarize()
    assert default == frame.summarize(1000, 0)
    assert default["summary"]["gender"] != frame.summarize(1000, 1)["summary"]["gender"]
    assert default["summary"]["gender"] != frame.summarize(999, 0)["summary"]["gender"]
    # the seed and the number of replicates reach the skew metrics' percentile intervals, not only rd_population
    assert default["summary"]["gender"]["rd"]["ci95"] != frame.summarize(1000, 1)["summary"]["gender"]["rd"]["ci95"]
    assert default["summary"]["gender"]["rd"]["ci95"] != frame.summarize(20, 0)["summary"]["gender"]["rd"]["ci95"]
    assert "fidelity" not in default["prompts"][0] and default["summary"]["fidelity"] is None
    assert default["target"]["name"] == "uniform"


def test_nothing_readable_has_no_rates():
    frame = MetricFrame([Prompt("a", "x", "x")], np.array([2]), np.array([0]), np.array([2]),
                        {"gender": np.zeros((1, 2), dtype=np.int64)}, np.array([0]))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no 0/0 is computed and warned about
        s = frame.summarize(replicates=20)["summary"]
    assert s["face_rate"] is None and s["fidelity"] is None and s["gender"]["n_prompts"] == 0
    assert s["gender"]["rd"] == {"mean": None, "ci95": None, "noise_floor": None}


def test_holding_widens_an_interval_to_its_point_only_where_needed():
    from fairgen.metrics.table import _nan, _num, _pair, holding

    got = holding(np.array([[0.1, 0.2], [0.1, 0.2], [0.1, 0.2], [np.nan, np.nan]]), np.array([0.05, 0.15, 0.3, 0.4]))
    assert got.tolist() == [[0.05, 0.2], [0.1, 0.2], [0.1, 0.3], [0.4, 0.4]]
    assert holding(np.array([0.1, 0.2]), np.nan).tolist() == [0.1, 0.2]
    assert _num(np.float32(0.5)) == 0.5 and type(_num(np.float32(0.5))) is float and _num(math.nan) is None
    assert _pair([np.nan, 1.0]) is None and _pair(np.array([0.25, 0.5])) == [0.25, 0.5]
    assert math.isnan(_nan(None)) and _nan(3) == 3.0


def test_results_frame_reads_results_back_column_by_column():
    from fairgen.metrics.table import results_frame

    prompts, recs = _frame_with_concepts()
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"), concept_match=lambda code, c: code == c)
    res = frame.summarize(replicates=100, seed=0)
    df = results_frame(res)
    assert list(df["id"]) == ["a", "b", "c"] and list(df["concept"]) == ["nurse", "pilot", "cat"]
    a = df.iloc[0]
    assert a["text"] == "A nurse" and a["n_images"] == 9 and a["n_faces"] == 9 and a["n_unreadable"] == 0
    assert a["face_rate"] == 1.0 and a["share_gender_female"] == pytest.approx(6 / 9)
    assert a["share_race_white"] == 1.0 and a["share_gender_x_race_male_white"] == pytest.approx(2 / 8)
    p = res["prompts"][0]
    assert a["rd_gender"] == pytest.approx(p["rd"]["gender"])
    assert [a["rd_gender_lo"], a["rd_gender_hi"]] == pytest.approx(p["rd_ci95"]["gender"])
    assert a["noise_floor_race"] == pytest.approx(p["noise_floor"]["race"])
    assert a["rd_gender_population"] == pytest.approx(p["rd_population"]["gender"]["estimate"])
    assert [a["rd_gender_population_lo"], a["rd_gender_population_hi"]] == pytest.approx(
        p["rd_population"]["gender"]["ci95"])
    for m in ("kl", "entropy", "mad", "disparity", "tv", "js"):
        assert a[f"{m}_race"] == pytest.approx(p[m]["race"])
    assert a["fidelity"] == pytest.approx(5 / 9)
    assert not any(col.startswith(("share_age", "rd_age")) for col in df.columns)
    b, c = df.iloc[1], df.iloc[2]
    assert b["face_rate"] == 0.5 and math.isnan(b["rd_gender"]) and math.isnan(b["rd_gender_lo"])
    assert math.isnan(b["share_gender_female"]) and b["share_race_black"] == 1.0
    assert math.isnan(c["face_rate"]) and math.isnan(c["fidelity"])  # nothing readable
    assert math.isnan(b["rd_gender_population"]) and math.isnan(b["rd_gender_population_hi"])
    # calibrated results add corrected columns; old results without n_unreadable or rd_population still read
    p["corrected"] = {"gender": {"shares": {"female": 0.7, "male": 0.3}, "rd": 0.4, "rd_ci95": [0.2, 0.6]},
                      "race": None}
    b_row = res["prompts"][1]
    b_row["corrected"] = {"gender": {"shares": {"female": None, "male": None}, "rd": None, "rd_ci95": None}}
    del b_row["n_unreadable"], b_row["rd_population"]
    df = results_frame(res)
    a, b = df.iloc[0], df.iloc[1]
    assert (a["share_gender_female_corrected"], a["share_gender_male_corrected"]) == (0.7, 0.3)
    assert (a["rd_gender_corrected"], a["rd_gender_corrected_lo"], a["rd_gender_corrected_hi"]) == (0.4, 0.2, 0.6)
    assert math.isnan(a["rd_race_corrected"]) if "rd_race_corrected" in df.columns else True
    assert math.isnan(b["rd_gender_corrected"]) and math.isnan(b["rd_gender_corrected_lo"])
    assert b["n_unreadable"] == 0 and b["face_rate"] == 0.5 and math.isnan(b["rd_gender_population"])


def test_gender_and_race_are_resampled_as_marginals_of_the_joint_when_they_are():
    """Prompt 0: all faces white, gender varies; prompt 1: all female, race varies. Drawn from one joint
    resample, every replicate keeps rd_joint = (rd_gender + 6) / 28 on prompt 0 and (6 rd_race + 4) / 28 on
    prompt 1 (the pairs of the 8 joint shares, written out)."""
    prompts = [Prompt("a", "x", "x"), Prompt("b", "y", "y")]
    recs = [{"prompt_id": "a", "face": True, "label": {"gender": g, "race": "white"}}
            for g in ["female"] * 13 + ["male"] * 7]
    recs += [{"prompt_id": "b", "face": True, "label": {"gender": "female", "race": r}}
             for r in ["white"] * 6 + ["black"] * 5 + ["asian"] * 5 + ["indian"] * 4]
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"))
    boots = frame._bootstrap(200, 3, {a: {} for a in frame.counts})
    joint, gender, race = (boots[a, "rd"][0] for a in ("gender_x_race", "gender", "race"))
    assert np.allclose(joint[:, 0], (gender[:, 0] + 6) / 28)
    assert np.allclose(joint[:, 1], (6 * race[:, 1] + 4) / 28)
    assert gender[:, 0].std() > 0 and race[:, 1].std() > 0


def test_gender_faces_without_a_race_label_are_resampled_on_their_own():
    """100 faces with a gender label, 4 of them with a race too: gender's replicates resample all 100 (rd of
    100 faces takes many values), not the joint's 4 (rd in {0, 1/2, 1})."""
    prompts = [Prompt("a", "x", "x")]
    recs = [{"prompt_id": "a", "face": True, "label": {"gender": "female" if k % 3 else "male",
                                                        **({"race": "black"} if k < 4 else {})}}
            for k in range(100)]
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"))
    assert frame.counts["gender"].sum() == 100 and frame.counts["gender_x_race"].sum() == 4
    boots = frame._bootstrap(300, 0, {a: {} for a in frame.counts})
    assert len(np.unique(boots["gender", "rd"][0][:, 0])) > 5
    # a race without a gender: race on its own as well
    recs = [{"prompt_id": "a", "face": True, "label": {"race": "black" if k % 2 else "white",
                                                        **({"gender": "male"} if k < 4 else {})}}
            for k in range(100)]
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"))
    boots = frame._bootstrap(300, 0, {a: {} for a in frame.counts})
    assert len(np.unique(boots["race", "rd"][0][:, 0])) > 5


def test_skew_metrics_are_plain_floats_for_one_prompt_and_rows_for_many():
    from fairgen.metrics.skew import SKEW_METRICS

    one_hot = {"rd": 0.5, "kl": math.log(4), "entropy": 0.0, "mad": 2 * 3 / 16, "disparity": 1.0}
    uniform = {"rd": 0.0, "kl": 0.0, "entropy": 1.0, "mad": 0.0, "disparity": 0.0}
    for name, fn in SKEW_METRICS.items():
        assert type(fn([0, 7, 0, 0])) is float and fn([0, 7, 0, 0]) == pytest.approx(one_hot[name])
        assert fn([3, 3, 3, 3]) == pytest.approx(uniform[name], abs=1e-12)
        assert math.isnan(fn([0, 0, 0, 0]))
        rows = np.array([[[0, 7, 0, 0], [3, 3, 3, 3]], [[0, 0, 0, 0], [5, 1, 0, 2]]])  # (B, P, K)
        got = fn(rows)
        assert got.shape == (2, 2)
        for b in range(2):
            for p in range(2):
                alone = fn(rows[b, p])
                assert (math.isnan(alone) and math.isnan(got[b, p])) or got[b, p] == pytest.approx(alone)


def test_bootstrap_draws_every_replicate_in_chunks_of_their_own():
    """50,000 prompts of 4 classes: 20 replicates a chunk, so 50 replicates come from three generators; each
    replicate is a fresh resample (none repeats another chunk's) and the suite mean is the prompts' mean."""
    rng = np.random.default_rng(0)
    counts = rng.multinomial(12, [0.4, 0.3, 0.2, 0.1], size=50_000)
    counts[0] = 0
    out = bootstrap_metrics(counts, {"rd": rd}, replicates=50, seed=7)
    per_prompt, suite = out["rd"]
    assert per_prompt.shape == (50, 50_000) and suite.shape == (50,)
    assert np.isnan(per_prompt[:, 0]).all()
    assert np.allclose(suite, np.nanmean(per_prompt, axis=1))
    assert len({row.tobytes() for row in per_prompt[:, 1:11]}) == 50  # no replicate drawn twice
    again = bootstrap_metrics(counts, {"rd": rd}, replicates=50, seed=7)["rd"][0]
    assert np.array_equal(again, per_prompt, equal_nan=True)


def test_results_frame_counts_unreadable_images_apart_and_keeps_prompts_without_faces():
    from fairgen.metrics.table import results_frame, summarize

    prompts = [Prompt("a", "x", "x")]
    frame = MetricFrame(prompts, np.array([5]), np.array([2]), np.array([1]),
                        {"race": np.array([[1, 1, 0, 0]]), "age": np.array([[2, 0]])})
    res = summarize(frame, replicates=30)
    assert res == frame.summarize(30, 0)
    row = results_frame(res).iloc[0]
    assert row["n_unreadable"] == 1 and row["face_rate"] == 0.5  # 2 faces among the 4 readable images
    assert row["share_race_white"] == 0.5 and row["share_age_young"] == 1.0  # gender unmeasured comes first
    # a results.json from before n_unreadable: every image counts as readable
    old = json.loads(json.dumps(res))
    old["prompts"][0].update(n_images=1, n_faces=1)
    del old["prompts"][0]["n_unreadable"]
    assert results_frame(old).iloc[0]["face_rate"] == 1.0
    # a suite whose only prompt has no faces still has its measured attributes' columns
    empty = MetricFrame(prompts, np.array([3]), np.array([0]), np.array([0]), {"gender": np.zeros((1, 2), int)})
    df = results_frame(empty.summarize(replicates=20))
    assert {"share_gender_female", "rd_gender", "noise_floor_gender"} <= set(df.columns)
    assert math.isnan(df.iloc[0]["rd_gender"]) and df.iloc[0]["face_rate"] == 0.0


def test_summarize_is_the_method_with_its_defaults_and_target(tmp_path):
    from fairgen.metrics.table import summarize
    from fairgen.metrics.target import load_target

    prompts, recs = _frame_with_concepts()
    frame = MetricFrame.from_records(prompts, recs, ("gender", "race"))
    assert summarize(frame) == frame.summarize(1000, 0)
    path = tmp_path / "t.yaml"
    path.write_text("default:\n  gender: {female: 0.9, male: 0.1}\n")
    target = load_target(path)
    got = summarize(frame, 40, 3, target)
    assert got == frame.summarize(40, 3, target) and got["target"]["name"] == str(path)


def test_rd_sampling_range_draws_20000_samples_by_default():
    """With 8 classes and 1,000 images rd takes so many values that one more draw moves the low end."""
    p = np.full(8, 1 / 8)
    default = rd_sampling_range(p, 1000)
    assert default == rd_sampling_range(p, 1000, 0.95, 20_000, 0)
    assert default != rd_sampling_range(p, 1000, 0.95, 20_001, 0)
