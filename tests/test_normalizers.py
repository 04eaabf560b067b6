"""Worked examples (the paper's released fit), fit cross-checks and file handling for segrl.normalizers."""

import json
import math

import numpy as np
import pytest
import torch

from segrl.errors import UserError
from segrl.normalizers import (
    GlobalNormalizer,
    LocationNormalizer,
    flatten_segment_rewards,
    load_normalizer,
    relative_positions,
)

NAN = float("nan")

# Released fit for Phi-3-mini, entropy threshold 1.75 (the spec's fixture); floor far below sigma on (0, 1]
PHI3 = LocationNormalizer(
    mu_slope=0.7668, mu_intercept=0.4705, sigma_slope=0.2569, sigma_intercept=2.8339, sigma_floor=0.1
)


def L(*rows):
    return torch.tensor(rows, dtype=torch.long)


def same(actual, expected, atol=1e-6):
    """Equal up to atol, NaN where expected is NaN."""
    expected = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.equal(actual.isnan(), expected.isnan()), (actual, expected)
    kept = ~expected.isnan()
    assert torch.allclose(actual.double()[kept], expected[kept], atol=atol), (actual, expected)


# ------------------------------------------------------------------------------------------------- positions


def test_relative_positions_k_over_k_nan_where_no_segment():
    ids = L(
        [0, 0, 1, 2, 2, -1],  # 3 segments: 1/3, 2/3, 1
        [-1, -1, 0, 0, 0, 0],  # prompt then 1 segment: 1
        [-1, -1, -1, -1, -1, -1],  # no completion token
        [0, 1, 2, 3, -1, -1],  # 4 segments
    )
    positions = relative_positions(ids)
    assert positions.dtype == torch.float64
    same(positions, [[1 / 3, 2 / 3, 1, NAN], [1, NAN, NAN, NAN], [NAN] * 4, [0.25, 0.5, 0.75, 1]], atol=0)


def test_flatten_segment_rewards_keeps_real_segments_row_major():
    ids = L([0, 0, 1, -1], [0, -1, -1, -1])
    rewards = torch.tensor([[1.0, 2.0, 99.0], [3.0, NAN, 99.0]])  # a third column nobody has: ignored
    flat, positions = flatten_segment_rewards(rewards, ids)
    assert flat.tolist() == [1.0, 2.0, 3.0] and positions.tolist() == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="S>=2"):
        flatten_segment_rewards(torch.zeros(2, 1), ids)


# ----------------------------------------------------------------------------------------------------- apply


def test_location_apply_phi3_fixture_by_hand():
    # row 0 has 2 segments: p = 1/2, 1; row 1 has 1 segment: p = 1
    # p = 1:   ln p = 0,          mu = 0.4705,                            sigma = 2.8339
    # p = 1/2: ln p = -0.693147,  mu = 0.4705 - 0.7668 * 0.693147 = -0.061005,
    #                             sigma = 2.8339 - 0.2569 * 0.693147 = 2.655830
    ids = L([0, 0, 1, 1, -1], [0, 0, 0, -1, -1])
    rewards = torch.tensor([[1.0, 3.3044, 7.0], [0.4705, NAN, 7.0]])
    out = PHI3.apply(rewards, ids)
    expected = [
        [(1.0 + 0.061005) / 2.655830, (3.3044 - 0.4705) / 2.8339, NAN],  # = 0.399500, 1.0
        [0.0, NAN, NAN],
    ]
    same(out, expected)
    assert out[0, 0].item() == pytest.approx(0.399500, abs=1e-6) and out[0, 1].item() == pytest.approx(1.0)
    assert out.shape == rewards.shape and out.dtype == torch.float32


def test_location_apply_at_p_one_quarter_and_dtype():
    # 4 segments, rewards all 0: -(mu(p)) / sigma(p) at p = 1/4, 1/2, 3/4, 1
    # ln 1/4 = -1.386294: mu = 0.4705 - 1.063011 = -0.592511, sigma = 2.8339 - 0.356139 = 2.477761 -> 0.239131
    # ln 3/4 = -0.287682: mu = 0.4705 - 0.220595 = 0.249905,  sigma = 2.8339 - 0.073906 = 2.759994 -> -0.090546
    ids = L([0, 1, 2, 3])
    out = PHI3.apply(torch.zeros(1, 4, dtype=torch.float64), ids)
    assert out.dtype == torch.float64
    same(out, [[0.239131, 0.061005 / 2.655830, -0.090546, -0.4705 / 2.8339]])


def test_location_sigma_floor_applies_where_the_line_goes_non_positive():
    norm = LocationNormalizer(mu_slope=0.0, mu_intercept=0.0, sigma_slope=1.0, sigma_intercept=1.0, sigma_floor=0.5)
    # sigma(1) = 1; sigma(1/2) = 1 - 0.693147 = 0.306853 -> 0.5; sigma(1/4) = 1 - 1.386294 < 0 -> 0.5
    positions = torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)
    assert norm.sigma(positions).tolist() == pytest.approx([1.0, 0.5, 0.5])
    out = norm.apply(torch.tensor([[1.0, 1.0, 1.0, 1.0]]), L([0, 1, 2, 3]))
    # p = 1/4, 1/2, 3/4 (sigma = 1 - 0.287682 = 0.712318), 1
    same(out, [[2.0, 2.0, 1 / 0.712318, 1.0]])


def test_location_apply_keeps_nan_of_a_real_segment_and_empty_rows():
    out = PHI3.apply(torch.tensor([[NAN, 0.4705], [0.0, 0.0]]), L([0, 1], [-1, -1]))
    same(out, [[NAN, 0.0], [NAN, NAN]])
    assert PHI3.apply(torch.zeros(2, 0), L([-1], [-1])).shape == (2, 0)


def test_global_apply_same_interface():
    norm = GlobalNormalizer(mean=1.0, std=2.0)
    out = norm.apply(torch.tensor([[3.0, -1.0, 5.0], [1.0, 0.0, 0.0]]), L([0, 1, -1], [0, 0, 0]))
    same(out, [[1.0, -1.0, NAN], [0.0, NAN, NAN]])


def test_constructors_reject_non_positive_scales():
    with pytest.raises(UserError, match="sigma_floor"):
        LocationNormalizer(0.0, 0.0, 0.0, 1.0, sigma_floor=0.0)
    with pytest.raises(UserError, match="std"):
        GlobalNormalizer(mean=0.0, std=0.0)


# ------------------------------------------------------------------------------------------------------- fit


def _synthetic(seed, a_mu, b_mu, a_sigma, b_sigma, mean_outliers=(), std_outliers=()):
    """Responses of 1..12 segments, 300 each; reward at p ~ N(mu(p), sigma(p)). Buckets listed in `mean_outliers`
    get +25 on every reward, those in `std_outliers` 8x the spread: gross outliers among the bucket points."""
    rng = np.random.default_rng(seed)
    rewards, positions = [], []
    for count in range(1, 13):
        p = np.tile(np.arange(1, count + 1) / count, 300)
        noise = rng.standard_normal(p.size)
        std_scale = np.where(np.isin(np.round(p, 3), std_outliers), 8.0, 1.0)
        r = a_mu * np.log(p) + b_mu + (a_sigma * np.log(p) + b_sigma) * noise * std_scale
        r = r + np.where(np.isin(np.round(p, 3), mean_outliers), 25.0, 0.0)
        rewards.append(r)
        positions.append(p)
    return np.concatenate(rewards), np.concatenate(positions)


def _ols(x, y):
    slope, intercept = np.polyfit(x, y, 1)
    return slope, intercept


def _buckets(rewards, positions):
    keys = np.round(positions, 3)
    unique = np.unique(keys)
    means = np.array([rewards[keys == k].mean() for k in unique])
    stds = np.array([rewards[keys == k].std() for k in unique])
    return np.log(unique), means, stds


def test_fit_recovers_the_lines_and_huber_resists_outliers_that_pull_ols():
    a_mu, b_mu, a_sigma, b_sigma = 0.8, 0.5, 0.3, 1.5
    # outlying buckets at small p (high leverage on ln p): 1/12, 1/11, 1/10, 1/9 for mu; 1/8, 1/7, 1/6 for sigma
    mean_outliers, std_outliers = [0.083, 0.091, 0.1, 0.111], [0.125, 0.143, 0.167]
    rewards, positions = _synthetic(0, a_mu, b_mu, a_sigma, b_sigma, mean_outliers, std_outliers)
    norm = LocationNormalizer.fit(torch.tensor(rewards), torch.tensor(positions))
    assert norm.sigma_floor == pytest.approx(0.1 * rewards.std())

    def error(slope, intercept, true_slope, true_intercept):
        return max(abs(slope - true_slope), abs(intercept - true_intercept))

    # Huber: the outliers have bounded influence (a little, through their leverage, with no outlier it is ~0.01)
    assert error(norm.mu_slope, norm.mu_intercept, a_mu, b_mu) < 0.15
    assert error(norm.sigma_slope, norm.sigma_intercept, a_sigma, b_sigma) < 0.05
    # the same bucket points fitted by least squares are pulled far off: the Huber choice matters
    log_p, means, stds = _buckets(rewards, positions)
    assert log_p.size == 46
    assert error(*_ols(log_p, means), a_mu, b_mu) > 3.0  # slope ~ -5.6 instead of 0.8
    assert error(*_ols(log_p, stds), a_sigma, b_sigma) > 0.5  # slope ~ -0.6 instead of 0.3


def test_fit_without_outliers_matches_ols_closely():
    rewards, positions = _synthetic(1, -0.4, 2.0, 0.2, 1.0)
    norm = LocationNormalizer.fit(torch.tensor(rewards), torch.tensor(positions), sigma_floor=0.05)
    log_p, means, stds = _buckets(rewards, positions)
    assert (norm.mu_slope, norm.mu_intercept) == pytest.approx(_ols(log_p, means), abs=0.03)
    assert (norm.sigma_slope, norm.sigma_intercept) == pytest.approx(_ols(log_p, stds), abs=0.03)
    assert norm.sigma_floor == 0.05


def test_fit_buckets_by_three_decimals_and_drops_single_reward_buckets_from_sigma():
    # p = 1/3 and 0.3334 share bucket 0.333; a bucket holding one reward (p = 0.5) enters the mu fit only
    rewards = torch.tensor([0.0, 2.0, 1.0, 3.0, 10.0, 4.0, 6.0])
    positions = torch.tensor([1 / 3, 0.3334, 1.0, 1.0, 0.5, 0.25, 0.25], dtype=torch.float64)
    norm = LocationNormalizer.fit(rewards, positions)
    # sigma points: (ln 1/3 bucket, std 1), (ln 1, std 1), (ln 1/4, std 1): a flat line at 1
    assert norm.sigma_slope == pytest.approx(0.0, abs=1e-3) and norm.sigma_intercept == pytest.approx(1.0, abs=1e-3)

    # the same data without the second reward at p = 1/4: only 2 buckets of 2+ rewards remain -> still fits
    LocationNormalizer.fit(rewards[:-1], positions[:-1])
    # with one such bucket left, sigma cannot be fitted
    with pytest.raises(UserError, match="sigma"):
        LocationNormalizer.fit(torch.tensor([1.0, 2.0, 5.0]), torch.tensor([1.0, 1.0, 0.5]))


def test_fit_errors():
    with pytest.raises(UserError, match="1 position bucket"):
        LocationNormalizer.fit(torch.tensor([1.0, 2.0, 3.0]), torch.ones(3))
    with pytest.raises(UserError, match="NaN"):
        LocationNormalizer.fit(torch.tensor([1.0, NAN]), torch.tensor([0.5, 1.0]))
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        LocationNormalizer.fit(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]))
    with pytest.raises(UserError, match="equal"):
        LocationNormalizer.fit(torch.ones(4), torch.tensor([0.5, 0.5, 1.0, 1.0]))
    with pytest.raises(UserError, match="equal"):
        GlobalNormalizer.fit(torch.ones(3))
    with pytest.raises(UserError, match="no rewards"):
        GlobalNormalizer.fit(torch.zeros(0))


def test_fit_tiny_positions_go_to_the_first_bucket():
    # p = 1/4000 rounds to 0.000: it joins the 0.001 bucket (ln 0.001) instead of an undefined log
    rewards = torch.tensor([1.0, 3.0, 5.0, 7.0])
    positions = torch.tensor([1 / 4000, 0.001, 1.0, 1.0], dtype=torch.float64)
    norm = LocationNormalizer.fit(rewards, positions)
    # two mu points, (ln 0.001, 2) and (0, 6): slope 4 / 6.907755 = 0.579066, std 1 in both buckets
    assert norm.mu_slope == pytest.approx(0.579066, abs=1e-3) and norm.mu_intercept == pytest.approx(6.0, abs=1e-2)


def test_global_fit_population_moments():
    norm = GlobalNormalizer.fit(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    # mean 3, population variance (4 + 1 + 0 + 9) / 4 = 3.5
    assert norm.mean == pytest.approx(3.0) and norm.std == pytest.approx(math.sqrt(3.5))


def test_fit_from_batches_end_to_end():
    # two scored batches of different widths, through flatten_segment_rewards
    batches = [
        (torch.tensor([[1.0, 2.0], [3.0, 0.0]]), L([0, 1, -1], [0, 0, -1])),
        (torch.tensor([[0.5, 1.5, 2.5]]), L([0, 1, 2, 2])),
    ]
    rewards, positions = zip(*(flatten_segment_rewards(r, ids) for r, ids in batches))
    rewards, positions = torch.cat(rewards), torch.cat(positions)
    assert rewards.tolist() == [1.0, 2.0, 3.0, 0.5, 1.5, 2.5]
    assert positions.tolist() == pytest.approx([0.5, 1.0, 1.0, 1 / 3, 2 / 3, 1.0])
    GlobalNormalizer.fit(rewards)  # bandit RM: every reward counts the same


# ----------------------------------------------------------------------------------------------------- files


def test_save_load_round_trip_and_dispatch(tmp_path):
    path = PHI3.save(tmp_path / "norm" / "location.json")
    data = json.loads(path.read_text())
    assert data == {"kind": "location", "mu_slope": 0.7668, "mu_intercept": 0.4705, "sigma_slope": 0.2569,
                    "sigma_intercept": 2.8339, "sigma_floor": 0.1}
    assert LocationNormalizer.load(path) == PHI3 and load_normalizer(path) == PHI3
    glob = GlobalNormalizer(mean=-0.25, std=1.5)
    glob.save(tmp_path / "global.json")
    assert load_normalizer(tmp_path / "global.json") == glob == GlobalNormalizer.load(tmp_path / "global.json")
    assert list(tmp_path.rglob("*.tmp")) == []


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"mu_slope": 1}', "field 'kind'"),
        ('{"kind": "lognormal"}', "field 'kind'"),
        ('{"kind": "location", "mu_slope": 1, "mu_intercept": 0, "sigma_slope": 0, "sigma_intercept": 1}',
         "missing field 'sigma_floor'"),
        ('{"kind": "location", "mu_slope": "1", "mu_intercept": 0, "sigma_slope": 0, "sigma_intercept": 1,'
         ' "sigma_floor": 0.1}', "field 'mu_slope' should be a finite number"),
        ('{"kind": "global", "mean": 0, "std": NaN}', "field 'std' should be a finite number"),
        ('{"kind": "global", "mean": true, "std": 1}', "field 'mean'"),
        ('{"kind": "global", "mean": 0, "std": -1}', "std must be positive"),
    ],
)
def test_load_malformed_files_name_the_file_and_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        load_normalizer(path)
    assert str(path) in str(err.value)


def test_load_wrong_kind_and_missing_file(tmp_path):
    path = GlobalNormalizer(0.0, 1.0).save(tmp_path / "g.json")
    with pytest.raises(UserError, match="'global', expected 'location'"):
        LocationNormalizer.load(path)
    with pytest.raises(UserError, match="not found"):
        load_normalizer(tmp_path / "absent.json")
