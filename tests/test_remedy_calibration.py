"""segrl.remedy.calibration: entropy of known histograms, recovery of a known temperature, per-pair fits, files."""

import json
import math
import warnings

import numpy as np
import pytest

from segrl.errors import UserError
from segrl.remedy.calibration import (
    DEFAULT_GRID,
    Calibration,
    fit_calibration,
    fit_temperature,
    histogram_entropy,
    sigmoid,
)

MIDPOINTS = (np.arange(20) + 0.5) / 20  # one value in the middle of each of the 20 bins


def logit(u):
    return np.log(u) - np.log1p(-u)


def coarse_scores(t_star, repeats=3):
    """r = T* logit(u), u the 20 bin midpoints, each `repeats` times: sigmoid(r / T*) fills every bin equally."""
    return t_star * logit(np.repeat(MIDPOINTS, repeats))


def fine_scores(t_star, n=2000):
    """r = T* logit(u), u = (k + 0.5) / n: uniform over the bins, and every value within 0.5 / n of a bin edge is
    pushed across it by a change of T of well under 1 %, so T* is the only maximiser in a 4.7 %-step grid."""
    return t_star * logit((np.arange(n) + 0.5) / n)


def entropy_at(scores, t):
    return histogram_entropy(sigmoid(np.asarray(scores) / t))


# ------------------------------------------------------------------------------------------------ entropy


def test_entropy_of_uniform_spread_is_ln_20():
    assert histogram_entropy(MIDPOINTS) == pytest.approx(math.log(20), rel=1e-14)
    assert histogram_entropy(np.repeat(MIDPOINTS, 7)) == pytest.approx(math.log(20), rel=1e-14)


def test_entropy_of_one_bin_is_zero():
    assert histogram_entropy([0.51, 0.52, 0.53, 0.549]) == 0.0
    assert histogram_entropy([0.3]) == 0.0


def test_entropy_of_three_to_one_split():
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert histogram_entropy([0.01, 0.02, 0.03, 0.97]) == pytest.approx(expected, rel=1e-14)
    assert histogram_entropy([0.01, 0.02, 0.03, 0.97], bins=2) == pytest.approx(expected, rel=1e-14)


def test_one_falls_in_the_last_bin_and_edges_open_the_next_bin():
    assert histogram_entropy([1.0, 0.96]) == 0.0  # both in [0.95, 1]
    assert histogram_entropy([1.0, 0.02]) == pytest.approx(math.log(2))
    assert histogram_entropy([0.0, 0.049]) == 0.0  # [0, 0.05)
    assert histogram_entropy([0.05, 0.049]) == pytest.approx(math.log(2))  # 0.05 opens bin 1


def test_bins_match_numpy_histogram_including_edges():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.random(500), np.arange(21) / 20, np.arange(11) / 10, [0.35, 0.7, 0.15]])
    for bins in (1, 3, 7, 20):
        counts, _ = np.histogram(values, bins=bins, range=(0, 1))
        p = counts[counts > 0] / counts.sum()
        assert histogram_entropy(values, bins=bins) == pytest.approx(float(-(p * np.log(p)).sum()), rel=1e-12)


@pytest.mark.parametrize("bad", [[], [0.5, float("nan")], [-0.01, 0.5], [0.5, 1.0000001], [[0.5]]])
def test_entropy_rejects_bad_probabilities(bad):
    with pytest.raises(UserError):
        histogram_entropy(bad)


@pytest.mark.parametrize("bins", [0, -3, 2.5, True])
def test_entropy_rejects_bad_bins(bins):
    with pytest.raises(UserError, match="bins"):
        histogram_entropy([0.5], bins=bins)


# ------------------------------------------------------------------------------------------------ the grid


def test_default_grid():
    grid = np.array(DEFAULT_GRID)
    assert len(grid) == 201 and np.all(np.diff(grid) > 0)
    assert grid[0] == pytest.approx(0.01) and grid[-1] == pytest.approx(100.0)
    assert 1.0 in DEFAULT_GRID and 10.0 in DEFAULT_GRID and 0.1 in DEFAULT_GRID
    assert np.allclose(grid[1:] / grid[:-1], 10 ** (1 / 50))


# ------------------------------------------------------------------------------------------------ fit_temperature


def test_recovers_known_temperature_on_constructed_scores():
    scores = coarse_scores(2.5)
    assert entropy_at(scores, 2.5) == pytest.approx(math.log(20), rel=1e-14)
    grid = (0.5, 1.0, 2.0, 2.5, 3.2, 5.0, 10.0)
    assert fit_temperature(scores, grid=grid) == 2.5
    assert fit_temperature(scores, grid=grid[::-1]) == 2.5  # grid order does not matter
    # far on either side the sigmoid outputs bunch up (T smaller: towards 0 and 1; larger: towards 0.5)
    assert entropy_at(scores, 2.0) < math.log(20) - 0.05
    assert entropy_at(scores, 3.2) < math.log(20) - 0.05
    assert entropy_at(scores, 0.5) < entropy_at(scores, 2.0)
    assert entropy_at(scores, 10.0) < entropy_at(scores, 3.2)


@pytest.mark.parametrize("t_star", [0.1, 1.0, 10.0])
def test_recovers_known_temperature_on_the_default_grid(t_star):
    assert t_star in DEFAULT_GRID
    assert fit_temperature(fine_scores(t_star)) == t_star


def test_off_grid_temperature_lands_on_a_neighbour():
    found = fit_temperature(fine_scores(2.5))
    assert found in DEFAULT_GRID and abs(math.log(found / 2.5)) < math.log(10) / 50


def test_ties_go_to_the_smallest_temperature():
    # With one value per bin midpoint, every T within roughly [0.9, 1.12] T* leaves each value in its bin: a run of
    # grid temperatures all reach ln 20, and the smallest of them is chosen.
    scores = coarse_scores(2.5)
    grid = sorted(DEFAULT_GRID + (2.5,))
    best = fit_temperature(scores, grid=grid)
    assert entropy_at(scores, best) == entropy_at(scores, 2.5)
    assert 0.85 * 2.5 < best < 2.5
    below = [t for t in grid if t < best]
    assert entropy_at(scores, below[-1]) < entropy_at(scores, best)


def test_constant_scores_are_deterministic():
    # sigmoid(3 / T) lands in the last bin for every T of the grid: entropy 0 everywhere, the smallest T wins
    assert fit_temperature([3.0] * 10) == DEFAULT_GRID[0]
    assert fit_temperature([0.0, 0.0]) == DEFAULT_GRID[0]  # sigmoid(0) = 0.5 whatever T


@pytest.mark.parametrize("bad", [[1.0, float("nan"), 2.0], [1.0, float("inf")], [-float("inf"), 0.0]])
def test_non_finite_scores_are_rejected(bad):
    with pytest.raises(UserError, match="NaN or infinite"):
        fit_temperature(bad)
    with pytest.raises(UserError, match="NaN or infinite"):
        fit_calibration(bad)


@pytest.mark.parametrize("bad", [[], [1.0]])
def test_fewer_than_two_scores_are_rejected(bad):
    with pytest.raises(UserError, match="at least 2"):
        fit_temperature(bad)


@pytest.mark.parametrize("grid", [(), (1.0, 0.0), (1.0, -2.0), (1.0, float("nan")), (float("inf"),)])
def test_bad_grid_is_rejected(grid):
    with pytest.raises(UserError, match="grid"):
        fit_temperature([0.0, 1.0], grid=grid)


# ------------------------------------------------------------------------------------------------ sigmoid


def test_sigmoid_is_stable_for_huge_arguments():
    with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
        warnings.simplefilter("error")
        assert sigmoid(np.array([1e6, -1e6, 0.0])).tolist() == [1.0, 0.0, 0.5]
        assert sigmoid(np.array([np.inf, -np.inf])).tolist() == [1.0, 0.0]
        assert Calibration(0.01).apply([1e6, -1e6, 1e308, -1e308]).tolist() == [1.0, 0.0, 1.0, 0.0]
        assert fit_temperature([1e6, -1e6, 0.0]) in DEFAULT_GRID
    assert sigmoid([2.0])[0] == pytest.approx(1 / (1 + math.exp(-2.0)))
    assert sigmoid([-2.0])[0] == pytest.approx(1 / (1 + math.exp(2.0)))


# ------------------------------------------------------------------------------------------------ per language pair


def two_pair_data():
    a, b = fine_scores(0.1), fine_scores(10.0)
    c = np.linspace(-3, 3, 10)  # too few for a temperature of its own
    scores = np.concatenate([a, b, c])
    lps = ["en-de"] * a.size + ["zh-en"] * b.size + ["en-liv"] * c.size
    return scores, lps


def test_per_lp_temperatures_are_recovered_and_small_pairs_fall_back():
    scores, lps = two_pair_data()
    calibration = fit_calibration(scores, lps, per_lp=True)
    assert calibration.per_lp == {"en-de": 0.1, "zh-en": 10.0}
    assert calibration.global_temperature == fit_temperature(scores)
    assert calibration.temperature("en-de") == 0.1
    assert calibration.temperature("zh-en") == 10.0
    assert calibration.temperature("en-liv") == calibration.global_temperature
    assert calibration.temperature("xx-yy") == calibration.global_temperature
    assert calibration.temperature() == calibration.global_temperature
    # a lower threshold gives the small pair its own temperature
    assert "en-liv" in fit_calibration(scores, lps, per_lp=True, min_per_lp=10).per_lp


def test_global_only_ignores_the_pairs():
    scores, lps = two_pair_data()
    calibration = fit_calibration(scores, lps)
    assert calibration.per_lp == {}
    assert calibration == fit_calibration(scores)


def test_apply_uses_each_rows_temperature():
    calibration = Calibration(global_temperature=2.0, per_lp={"en-de": 0.1, "zh-en": 10.0})
    scores = [0.1 * logit(0.3), 10.0 * logit(0.3), 2.0 * logit(0.3), 4.0]
    lps = ["en-de", "zh-en", "en-liv", "zh-en"]
    out = calibration.apply(scores, lps)
    assert out.dtype == np.float64 and out.shape == (4,)
    assert out[:3] == pytest.approx([0.3, 0.3, 0.3], abs=1e-12)
    assert out[3] == pytest.approx(1 / (1 + math.exp(-0.4)))
    assert calibration.apply([4.0]) == pytest.approx([1 / (1 + math.exp(-2.0))])  # no lps: global T
    assert np.isnan(calibration.apply([float("nan")])[0])


def test_fit_then_apply_spreads_each_pair_uniformly():
    scores, lps = two_pair_data()
    calibration = fit_calibration(scores, lps, per_lp=True)
    out = calibration.apply(scores, lps)
    assert histogram_entropy(out[:2000]) == pytest.approx(math.log(20))
    assert histogram_entropy(out[2000:4000]) == pytest.approx(math.log(20))


def test_bad_pair_arguments():
    scores, lps = two_pair_data()
    with pytest.raises(UserError, match="needs lps"):
        fit_calibration(scores, per_lp=True)
    with pytest.raises(UserError, match="one language pair per score"):
        fit_calibration(scores, lps[:-1], per_lp=True)
    with pytest.raises(UserError, match="single string"):
        Calibration(1.0).apply([1.0, 2.0], "en-de")
    with pytest.raises(UserError, match="one language pair per score"):
        Calibration(1.0).apply([1.0, 2.0], ["en-de"])
    with pytest.raises(UserError, match="min_per_lp"):
        fit_calibration(scores, lps, per_lp=True, min_per_lp=1)


@pytest.mark.parametrize(
    "kwargs", [{"global_temperature": 0.0}, {"global_temperature": -1.0}, {"global_temperature": float("nan")},
               {"global_temperature": 1.0, "per_lp": {"en-de": 0.0}}, {"global_temperature": "1"}]
)
def test_calibration_rejects_bad_temperatures(kwargs):
    with pytest.raises(UserError):
        Calibration(**kwargs)


# ------------------------------------------------------------------------------------------------ files


def test_json_round_trip(tmp_path):
    scores, lps = two_pair_data()
    calibration = fit_calibration(scores, lps, per_lp=True)
    path = calibration.save(tmp_path / "sub" / "calibration.json")
    assert json.loads(path.read_text()) == {
        "kind": "remedy_calibration",
        "global_temperature": calibration.global_temperature,
        "per_lp": {"en-de": 0.1, "zh-en": 10.0},
    }
    loaded = Calibration.load(path)
    assert loaded == calibration
    assert np.array_equal(loaded.apply(scores, lps), calibration.apply(scores, lps))
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["calibration.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not a valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"kind": "global", "global_temperature": 1.0, "per_lp": {}}', "field 'kind'"),
        ('{"kind": "remedy_calibration", "per_lp": {}}', "missing field 'global_temperature'"),
        ('{"kind": "remedy_calibration", "global_temperature": 1.0}', "missing field 'per_lp'"),
        ('{"kind": "remedy_calibration", "global_temperature": -1.0, "per_lp": {}}', "global_temperature"),
        ('{"kind": "remedy_calibration", "global_temperature": "1.0", "per_lp": {}}', "global_temperature"),
        ('{"kind": "remedy_calibration", "global_temperature": true, "per_lp": {}}', "global_temperature"),
        ('{"kind": "remedy_calibration", "global_temperature": 1.0, "per_lp": [1.0]}', "field 'per_lp'"),
        ('{"kind": "remedy_calibration", "global_temperature": 1.0, "per_lp": {"en-de": null}}', "en-de"),
    ],
)
def test_malformed_files_are_user_errors(tmp_path, text, message):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as caught:
        Calibration.load(path)
    assert str(path) in str(caught.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Calibration.load(tmp_path / "nope.json")
