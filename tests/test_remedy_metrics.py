"""Hand-computed examples, scipy / brute-force cross-checks and input errors for segrl.remedy.metrics."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from segrl.errors import UserError
from segrl.remedy import metrics
from segrl.remedy.metrics import (
    PairCounts,
    acc_eq,
    grouped_kendall_tau,
    kendall_tau,
    pair_counts,
    permutation_p_values,
    soft_pairwise_accuracy,
    system_pairwise_accuracy,
    system_scores,
    tie_calibrated_acc_eq,
)

NAN = float("nan")

# Two items with ties on both sides.
# Item "s1": human [3, 3, 1, 0], metric [0.9, 0.9, 0.2, 0.5]; pairs (a, b), Δh, Δm:
#   (0,1)  0,  0.0  -> T_hm        (0,2)  2,  0.7 -> C      (0,3)  3,  0.4 -> C
#   (1,2)  2,  0.7  -> C           (1,3)  3,  0.4 -> C      (2,3)  1, -0.3 -> D
#   acc_eq = (C + T_hm) / 6 = (4 + 1) / 6 = 5/6
# Item "s2": human [2, 2, 5], metric [0.1, 0.3, 0.3]:
#   (0,1)  0, -0.2 -> T_h          (0,2) -3, -0.2 -> C      (1,2) -3,  0.0 -> T_m
#   acc_eq = 1/3
# Item average (WMT's average_by="item"): (5/6 + 1/3) / 2 = 7/12 (pooling all 9 pairs would give 6/9 instead).
HUMAN = [3, 3, 1, 0, 2, 2, 5]
METRIC = [0.9, 0.9, 0.2, 0.5, 0.1, 0.3, 0.3]
ITEMS = ["s1"] * 4 + ["s2"] * 3


def brute_acc_eq(metric, human, items, epsilon):
    """Plain-loop acc-eq averaged over items, independent of the module's vectorised pair code."""
    groups = {}
    for m, h, it in zip(metric, human, items):
        if not math.isnan(h):
            groups.setdefault(it, []).append((m, h))
    accs = []
    for hyps in groups.values():
        good = total = 0
        for (m1, h1), (m2, h2) in itertools.combinations(hyps, 2):
            tie_h, tie_m = h1 == h2, abs(m1 - m2) <= epsilon
            if tie_h or tie_m:
                good += tie_h and tie_m
            else:
                good += (m1 > m2) == (h1 > h2)
            total += 1
        if total:
            accs.append(good / total)
    return sum(accs) / len(accs)


def candidate_epsilons(metric, human, items):
    out = {0.0}
    for it in set(items):
        idx = [k for k, x in enumerate(items) if x == it and not math.isnan(human[k])]
        for a, b in itertools.combinations(idx, 2):
            out.add(abs(metric[a] - metric[b]))
    return sorted(out)


def random_segments(rng, num_items=30, unrated=0.1):
    sizes = rng.integers(1, 7, size=num_items)
    items = np.repeat(np.arange(num_items), sizes)
    rng.shuffle(items)
    human = rng.integers(0, 4, size=len(items)).astype(float)
    human[rng.random(len(items)) < unrated] = NAN
    metric = np.round(rng.random(len(items)), 1)
    return metric, human, items


# ------------------------------------------------------------------------------------------------- Kendall tau


@pytest.mark.parametrize("variant", ["b", "c"])
@pytest.mark.parametrize("seed", range(5))
def test_kendall_matches_scipy_with_ties(variant, seed):
    rng = np.random.default_rng(seed)
    x, y = rng.integers(0, 5, size=50), rng.integers(0, 5, size=50)
    assert kendall_tau(x, y, variant) == pytest.approx(kendalltau(x, y, variant=variant).statistic, rel=1e-12)


@pytest.mark.parametrize("variant", ["b", "c"])
@pytest.mark.parametrize("seed", range(3))
def test_kendall_matches_scipy_without_ties(variant, seed):
    rng = np.random.default_rng(100 + seed)
    x = rng.normal(size=60)
    y = x + rng.normal(size=60)
    assert kendall_tau(x, y, variant) == pytest.approx(kendalltau(x, y, variant=variant).statistic, rel=1e-12)


def test_kendall_in_blocks(monkeypatch):
    rng = np.random.default_rng(7)
    x, y = rng.integers(0, 10, size=301), rng.integers(0, 10, size=301)
    expected = kendall_tau(x, y)
    monkeypatch.setattr(metrics, "_BLOCK", 1000)  # 3 rows per block
    assert kendall_tau(x, y) == expected == pytest.approx(kendalltau(x, y).statistic, rel=1e-12)


def test_kendall_undefined_is_nan():
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(kendall_tau([1], [2], "c"))


def test_grouped_kendall_is_mean_of_items():
    metric = [0.1, 0.4, 0.3, 0.9, 0.5, 0.6, 0.7, 0.2, 0.2, 0.8]
    human = [1, 2, 2, 4, 3, 1, NAN, 5, 5, 0]
    items = ["a"] * 4 + ["b"] * 3 + ["c"] * 2 + ["d"]
    # a: 4 hypotheses; b: 2 rated (one NaN); c: constant metric and human -> undefined; d: one hypothesis
    for variant in ("b", "c"):
        expected = np.mean(
            [
                kendalltau(metric[:4], human[:4], variant=variant).statistic,
                kendalltau(metric[4:6], human[4:6], variant=variant).statistic,
            ]
        )
        result = grouped_kendall_tau(metric, human, items, variant)
        assert result.tau == pytest.approx(expected, rel=1e-12)
        assert (result.num_items, result.num_skipped, result.num_unrated) == (2, 2, 1)


# ------------------------------------------------------------------------------------------------- acc-eq


def test_pair_counts_hand_example():
    counts = pair_counts(METRIC, HUMAN, ITEMS)
    assert counts == {"s1": PairCounts(4, 1, 0, 0, 1), "s2": PairCounts(1, 0, 1, 1, 0)}
    assert counts["s1"].acc_eq == pytest.approx(5 / 6)
    assert sum(counts.values(), PairCounts()) == PairCounts(5, 1, 1, 1, 1)
    # ε = 0.2 turns every s2 pair into a metric tie: (0,1) -> T_hm, (0,2) -> T_m, (1,2) stays T_m
    assert pair_counts(METRIC, HUMAN, ITEMS, epsilon=0.2)["s2"] == PairCounts(0, 0, 0, 2, 1)


def test_acc_eq_hand_example():
    result = acc_eq(METRIC, HUMAN, ITEMS)
    assert result.accuracy == pytest.approx(7 / 12)
    assert (result.num_items, result.num_pairs, result.num_unrated, result.epsilon) == (2, 9, 0, 0.0)
    assert acc_eq(METRIC[:4], HUMAN[:4], ITEMS[:4]).accuracy == pytest.approx(5 / 6)
    assert acc_eq(METRIC[4:], HUMAN[4:], ITEMS[4:]).accuracy == pytest.approx(1 / 3)


def test_acc_eq_excludes_unrated():
    human = HUMAN + [NAN, 4]
    metric = METRIC + [0.0, 1.0]
    items = ITEMS + ["s1", "s3"]  # an unrated s1 hypothesis, and an item of a single hypothesis (no pair)
    result = acc_eq(metric, human, items)
    assert result.accuracy == pytest.approx(7 / 12)
    assert (result.num_items, result.num_pairs, result.num_unrated) == (2, 9, 1)


@pytest.mark.parametrize("seed", range(4))
def test_acc_eq_matches_plain_loop(seed):
    metric, human, items = random_segments(np.random.default_rng(seed))
    for epsilon in (0.0, 0.1, 0.25):
        assert acc_eq(metric, human, items, epsilon).accuracy == pytest.approx(
            brute_acc_eq(metric, human, items, epsilon), abs=1e-12
        )


def test_tie_calibration_positive_epsilon_wins():
    # One item, human [1, 1, 2], metric [0.50, 0.51, 0.9]:
    #   (0,1) Δh 0, |Δm| 0.01 -> T_h at ε = 0, T_hm once ε >= 0.01
    #   (0,2) Δh -1, Δm -0.40 -> C (T_m once ε >= 0.40);  (1,2) Δh -1, Δm -0.39 -> C (T_m once ε >= 0.39)
    # acc(0) = 2/3, acc(0.01) = 1, acc(0.39) = 2/3, acc(0.40) = 1/3  -> ε = |0.50 - 0.51|, acc 1
    result = tie_calibrated_acc_eq([0.50, 0.51, 0.9], [1, 1, 2], ["x"] * 3)
    assert result.epsilon == abs(0.50 - 0.51)
    assert result.accuracy == 1.0
    assert result.num_candidates == 4
    assert result.counts == PairCounts(2, 0, 0, 0, 1)


def test_tie_calibration_zero_wins():
    result = tie_calibrated_acc_eq([0.1, 0.2, 0.3], [1, 2, 3], ["x"] * 3)
    assert (result.epsilon, result.accuracy) == (0.0, 1.0)


def test_tie_calibration_equal_best_takes_smallest_epsilon():
    # human [1, 1, 3], metric [0.1, 0.2, 0.15]: (0,1) T_h, (0,2) C, (1,2) D -> acc(0) = 1/3;
    # ε = 0.05: T_h, T_m, T_m -> 0;  ε = 0.1: T_hm, T_m, T_m -> 1/3 (equal to ε = 0) -> ε = 0
    result = tie_calibrated_acc_eq([0.1, 0.2, 0.15], [1, 1, 3], ["x"] * 3)
    assert result.epsilon == 0.0
    assert result.accuracy == pytest.approx(1 / 3)


@pytest.mark.parametrize("seed", range(4))
def test_tie_calibration_matches_brute_force(seed):
    metric, human, items = random_segments(np.random.default_rng(seed))
    metric, human, items = list(metric), list(human), list(items)
    scored = [(acc_eq(metric, human, items, eps).accuracy, eps) for eps in candidate_epsilons(metric, human, items)]
    best = max(acc for acc, _ in scored)
    best_eps = min(eps for acc, eps in scored if acc >= best - 1e-12)
    result = tie_calibrated_acc_eq(metric, human, items)
    assert result.accuracy == pytest.approx(best, abs=1e-12)
    assert result.epsilon == best_eps
    assert result.num_candidates == len(scored)
    assert result.accuracy == acc_eq(metric, human, items, result.epsilon).accuracy


def test_tie_calibration_max_candidates():
    rng = np.random.default_rng(3)
    metric, human, items = random_segments(rng, num_items=50)
    metric = rng.random(len(items))  # many distinct gaps
    full = tie_calibrated_acc_eq(metric, human, items)
    thinned = tie_calibrated_acc_eq(metric, human, items, max_candidates=5)
    assert thinned.num_candidates == 6  # ε = 0 and 5 order statistics
    assert thinned.accuracy <= full.accuracy + 1e-12
    assert thinned == tie_calibrated_acc_eq(metric, human, items, max_candidates=5)
    with pytest.raises(UserError, match="max_candidates"):
        tie_calibrated_acc_eq(metric, human, items, max_candidates=0)


def test_tie_calibration_at_scale_agrees_with_acc_eq():
    # 2000 items x 6 systems = 30k pairs with human ties: the sorted sweep must give what acc_eq counts at the chosen
    # ε, and no sampled candidate ε may beat it (the speed: benchmarks/tie_calibration_speed.py, docs/RESULTS.md)
    rng = np.random.default_rng(0)
    items = np.repeat(np.arange(2000), 6)
    human = rng.integers(0, 25, size=len(items)).astype(float)
    metric = human + rng.normal(size=len(items))
    result = tie_calibrated_acc_eq(metric, human, items)
    assert result.num_pairs == 30000 and result.num_items == 2000 and result.num_candidates > 1000
    direct = acc_eq(metric, human, items, result.epsilon)
    assert (result.accuracy, result.counts) == (pytest.approx(direct.accuracy, abs=1e-12), direct.counts)
    by_item = metric.reshape(2000, 6)
    gaps = np.abs(by_item[:, :, None] - by_item[:, None, :])[:, *np.triu_indices(6, k=1)].ravel()
    for eps in [0.0, *rng.choice(gaps, size=20, replace=False)]:
        assert acc_eq(metric, human, items, eps).accuracy <= result.accuracy + 1e-12


# ------------------------------------------------------------------------------------------------- system level


def test_system_scores():
    scores = [1.0, 3.0, NAN, 2.0, 4.0, 10.0, NAN]
    systems = ["A", "A", "A", "B", "B", "B", "C"]
    assert system_scores(scores, systems) == {"A": 2.0, "B": 16 / 3}
    # with items: only items scored by every listed system (C has none -> no common item)
    with pytest.raises(UserError, match="no item is scored for all 3 systems"):
        system_scores(scores, systems, items=[0, 1, 2, 0, 1, 2, 0])
    common = system_scores(scores[:6], systems[:6], items=[0, 1, 2, 0, 1, 2])  # item 2 unscored for A
    assert common == {"A": 2.0, "B": 3.0}


def test_system_pairwise_accuracy_hand_example():
    metric_sys = {"A": 0.9, "B": 0.5, "C": 0.5, "D": 0.1}
    human_sys = {"A": 3.0, "B": 2.0, "C": 2.0, "D": 4.0, "E": 1.0}  # E has no metric score: left out
    # AB agree, AC agree, AD disagree, BC tie on both sides (agree), BD disagree, CD disagree -> 3/6
    assert system_pairwise_accuracy(metric_sys, human_sys) == 0.5
    assert system_pairwise_accuracy({"A": 1.0, "B": 1.0}, {"A": 2.0, "B": 1.0}) == 0.0  # metric tie only
    assert system_pairwise_accuracy({"A": 2.0, "B": 1.0}, {"A": 1.0, "B": 1.0}) == 0.0  # human tie only
    with pytest.raises(UserError, match=">= 2 systems"):
        system_pairwise_accuracy({"A": 1.0}, {"A": 1.0, "B": 2.0})


def spa_data(seed, num_sys=5, num_items=40):
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=num_sys)
    systems = np.repeat([f"sys{k}" for k in range(num_sys)], num_items)
    items = np.tile(np.arange(num_items), num_sys)
    human = np.repeat(quality, num_items) + rng.normal(size=num_sys * num_items)
    metric = human + rng.normal(scale=2.0, size=len(human))
    return metric, human, systems, items


def test_spa_metric_equal_to_human_is_one():
    _, human, systems, items = spa_data(0)
    assert soft_pairwise_accuracy(human, human, systems, items).spa == 1.0


def test_spa_range_and_determinism():
    metric, human, systems, items = spa_data(1)
    first = soft_pairwise_accuracy(metric, human, systems, items, seed=3)
    again = soft_pairwise_accuracy(metric, human, systems, items, seed=3)
    assert 0.0 <= first.spa <= 1.0
    assert first.spa == again.spa
    np.testing.assert_array_equal(first.p_human, again.p_human)
    assert first.num_pairs == 10 and first.systems == [f"sys{k}" for k in range(5)]


def test_spa_two_systems_one_better_everywhere():
    rng = np.random.default_rng(0)
    a, b = 1.0 + rng.random(30), rng.random(30)  # A beats B on all 30 items
    human = np.concatenate([a, b])
    systems = ["A"] * 30 + ["B"] * 30
    items = list(range(30)) * 2
    # only the all-plus sign vector reaches the observed sum (chance 2^-30): p_h = p_m = 1 / 1001
    agree = soft_pairwise_accuracy(human * 0.5 + 3, human, systems, items)
    assert agree.p_human[0, 1] == agree.p_metric[0, 1] == 1 / 1001
    assert agree.spa == 1.0
    # metric reversed: every permuted sum is >= the observed (the smallest possible) one, p_m = 1
    reversed_ = soft_pairwise_accuracy(-human, human, systems, items)
    assert reversed_.p_metric[0, 1] == 1.0
    assert reversed_.spa == pytest.approx(1 / 1001)


def test_permutation_p_value_enumerated():
    signs = np.array(list(itertools.product([1, -1], repeat=3)))  # all 8 sign vectors
    # d = [1, 2, 3]: observed 6, only (+,+,+) reaches it -> (1 + 1) / (1 + 8)
    assert permutation_p_values(np.array([1.0, 2.0, 3.0]), signs) == pytest.approx(2 / 9)
    # d = [1, 1, -1]: observed 1; permuted sums 1, 3, -1, 1, -1, 1, -3, -1 -> 4 reach it -> 5/9
    assert permutation_p_values(np.array([1.0, 1.0, -1.0]), signs) == pytest.approx(5 / 9)
    both = permutation_p_values(np.array([[1.0, 1.0], [2.0, 1.0], [3.0, -1.0]]), signs)
    np.testing.assert_allclose(both, [2 / 9, 5 / 9])


def test_spa_p_value_converges_to_exact():
    # 2 systems, 3 items, d = [1, 2, 3]: exact one-sided p = 1/8
    human = [3.0, 4.0, 5.0, 2.0, 2.0, 2.0]
    result = soft_pairwise_accuracy(human, human, ["A"] * 3 + ["B"] * 3, [0, 1, 2] * 2, num_permutations=20000)
    assert result.p_human[0, 1] == pytest.approx(1 / 8, abs=0.01)
    assert math.isnan(result.p_human[1, 0])


def test_spa_uses_common_rated_items_and_documented_signs():
    metric, human, systems, items = spa_data(2, num_sys=3, num_items=12)
    human[5] = NAN  # sys0 unrated on item 5
    result = soft_pairwise_accuracy(metric, human, systems, items, num_permutations=200, seed=9)
    signs = np.random.default_rng(9).integers(0, 2, size=(200, 12), dtype=np.int8) * 2 - 1
    h, m = human.reshape(3, 12), metric.reshape(3, 12)
    for i, j in [(0, 1), (0, 2), (1, 2)]:
        rated = ~np.isnan(h[i]) & ~np.isnan(h[j])
        p_h = permutation_p_values(np.where(rated, h[i] - h[j], 0.0), signs)
        p_m = permutation_p_values(np.where(rated, m[i] - m[j], 0.0), signs)
        assert (result.p_human[i, j], result.p_metric[i, j]) == (p_h, p_m)
    assert result.num_unrated == 1


# ------------------------------------------------------------------------------------------------- bad input


def test_length_mismatch():
    with pytest.raises(UserError, match="metric has 3, human has 2, items has 3"):
        acc_eq([1, 2, 3], [1, 2], ["a"] * 3)
    with pytest.raises(UserError, match="lengths differ"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(UserError, match="systems has 2"):
        soft_pairwise_accuracy([1, 2, 3], [1, 2, 3], ["A", "B"], [0, 0, 1])


def test_nan_metric_is_an_error():
    for fn in (acc_eq, tie_calibrated_acc_eq, grouped_kendall_tau, pair_counts):
        with pytest.raises(UserError, match="metric has 1 non-finite"):
            fn([0.1, NAN, 0.3], [1, 2, 3], ["a"] * 3)
    with pytest.raises(UserError, match="metric must score every hypothesis"):
        soft_pairwise_accuracy([0.1, NAN], [1, 2], ["A", "B"], [0, 0])


def test_no_rated_pairs():
    with pytest.raises(UserError, match="no within-item pair of rated hypotheses"):
        acc_eq([0.1, 0.2, 0.3], [NAN, NAN, NAN], ["a"] * 3)
    with pytest.raises(UserError, match="no within-item pair"):
        tie_calibrated_acc_eq([0.1, 0.2, 0.3], [1, 2, 3], ["a", "b", "c"])
    with pytest.raises(UserError, match="no item has a defined Kendall tau"):
        grouped_kendall_tau([0.1, 0.2], [NAN, NAN], ["a", "a"])
    with pytest.raises(UserError, match="no pair of systems shares a rated item"):
        soft_pairwise_accuracy([0.1, 0.2], [1.0, NAN], ["A", "B"], [0, 0])


def test_other_bad_input():
    with pytest.raises(UserError, match="epsilon"):
        acc_eq(METRIC, HUMAN, ITEMS, epsilon=-0.1)
    with pytest.raises(UserError, match="variant"):
        kendall_tau([1, 2], [1, 2], "a")
    with pytest.raises(UserError, match="occur more than once"):
        soft_pairwise_accuracy([0.1, 0.2, 0.3], [1, 2, 3], ["A", "A", "B"], [0, 0, 0])
    with pytest.raises(UserError, match="num_permutations"):
        soft_pairwise_accuracy([0.1, 0.2], [1, 2], ["A", "B"], [0, 0], num_permutations=0)
    with pytest.raises(UserError, match="hashable"):
        acc_eq([0.1, 0.2], [1, 2], [[0], [0]])
