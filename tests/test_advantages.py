"""Worked examples (numbers computed by hand) and invariants for segrl.advantages."""

import math
from fractions import Fraction as Q

import pytest
import torch

from segrl.advantages import (
    chain_advantages,
    chain_boundaries,
    dense_group_advantages,
    gae,
    group_advantages,
    group_means,
    masked_moments,
    probability_mask,
    returns_to_go,
    tree_advantages,
    tree_values,
    whiten,
)
from segrl.errors import UserError
from segrl.segmentation import cutpoint_segments, low_probability_mask, num_segments

NAN = float("nan")


def B(*rows):
    return torch.tensor(rows, dtype=torch.bool)


def L(*rows):
    return torch.tensor(rows, dtype=torch.long)


def F(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def close(actual, expected, atol=1e-9):
    expected = torch.tensor([[float(x) for x in row] for row in expected] if isinstance(expected[0], (list, tuple))
                            else [float(x) for x in expected], dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual.double(), expected, atol=atol), (actual, expected)


# ------------------------------------------------------------------------------------------------ SPO-chain


def test_chain_paper_example_two_thirds_then_one_third():
    # segment 1 starts at value 2/3, segment 2 at 1/3: A_1 = 1/3 - 2/3 = -1/3; prompt state not valued: A_0 = 0;
    # the last segment uses the completion's own reward R = 1: A_2 = 1 - 1/3 = 2/3
    ids = L([0, 0, 1, 1, 1, 2, 2, -1])
    start = F([NAN, 2 / 3, 1 / 3])
    adv = chain_advantages(start, F(1.0), ids)
    third = 1 / 3
    close(adv, [[0, 0, -third, -third, -third, 2 * third, 2 * third, 0]])


def test_chain_prompt_state_valued_and_last_segment_uses_reward():
    # first token is a kept cutpoint: the bare prompt was valued 1/2; segments 0, 1 start at 1/2, 7/9; R = 0
    ids = L([-1, -1, 0, 0, 1, 1, 1], [-1, -1, 0, 1, 1, 1, -1])
    start = F([0.5, 7 / 9], [0.25, 1.0])
    adv = chain_advantages(start, F(0.0, 1.0), ids)
    close(adv, [[0, 0, 7 / 9 - 0.5, 7 / 9 - 0.5, -7 / 9, -7 / 9, -7 / 9], [0, 0, 0.75, 0, 0, 0, 0]])


def test_chain_segment0_baseline_replaces_missing_prompt_value_only():
    ids = L([0, 0, 1], [0, 1, 1])
    start = F([NAN, 0.4], [0.9, 0.2])  # row 1's prompt state was estimated: the baseline must not override it
    adv = chain_advantages(start, F(1.0, 0.0), ids, segment0_baseline=F(0.5, 0.5))
    close(adv, [[-0.1, -0.1, 0.6], [-0.7, -0.2, -0.2]])
    # without the option, segment 0 of row 0 gets 0 (released code)
    close(chain_advantages(start, F(1.0, 0.0), ids), [[0, 0, 0.6], [-0.7, -0.2, -0.2]])


def test_chain_no_cutpoint_is_zero_or_reward_minus_baseline():
    ids = L([0, 0, 0, -1], [0, 0, 0, 0])  # one segment, start not estimated
    start = F([NAN], [NAN])
    close(chain_advantages(start, F(1.0, 0.0), ids), [[0, 0, 0, 0], [0, 0, 0, 0]])
    adv = chain_advantages(start, F(1.0, 0.0), ids, segment0_baseline=F(0.5, 0.5))
    close(adv, [[0.5, 0.5, 0.5, 0], [-0.5, -0.5, -0.5, -0.5]])


def test_chain_one_segment_with_valued_prompt():
    ids = L([0, 0, 0])
    close(chain_advantages(F([0.3]), F(1.0), ids), [[0.7, 0.7, 0.7]])


def test_chain_all_rewards_and_values_equal_give_zero():
    ids = L([0, 1, 1, 2], [0, 0, 1, -1], [0, 0, 0, 0])
    start = torch.full((3, 3), 1.0, dtype=torch.float64)
    adv = chain_advantages(start, F(1.0, 1.0, 1.0), ids, segment0_baseline=F(1.0, 1.0, 1.0))
    assert adv.abs().max().item() == 0.0


def test_chain_nan_reward_missing_middle_value_extra_columns_and_empty_rows():
    # row 0: R NaN (unscorable) -> last segment 0; row 1: start of segment 1 missing -> segments 0 and 1 get 0;
    # row 2: no completion token. start_values has more columns than needed: ignored.
    ids = L([0, 1, 1, -1], [0, 1, 2, 2], [-1, -1, -1, -1])
    start = F([0.2, 0.6, 9.0, 9.0], [0.1, NAN, 0.5, 9.0], [NAN, NAN, NAN, NAN])
    adv = chain_advantages(start, F(NAN, 1.0, 1.0), ids)
    close(adv, [[0.4, 0, 0, 0], [0, 0, 0.5, 0.5], [0, 0, 0, 0]])
    assert adv.dtype == torch.float64
    assert chain_advantages(torch.zeros(1, 0), F(1.0), L([-1, -1])).tolist() == [[0.0, 0.0]]


def test_chain_rejects_too_few_columns():
    with pytest.raises(ValueError, match="start_values"):
        chain_advantages(F([0.5]), F(1.0), L([0, 1]))


def test_chain_advantages_dtype_float32_from_float32():
    adv = chain_advantages(torch.tensor([[0.5]]), torch.tensor([1.0]), L([0, 0]))
    assert adv.dtype == torch.float32


# ------------------------------------------------------------------------------------------ chain boundaries


def _toy_value(row_tokens, prefix_length):
    """A deterministic stand-in for the Monte Carlo estimate of prompt + completion[:b]."""
    return (sum(row_tokens[:prefix_length]) % 7) / 7


def test_boundaries_on_hand_made_cutpoint_rows_and_round_trip():
    rho, interval = 0.9, 5
    hi, lo = 0.99, 0.3
    probs = F(
        # row 0: first token low -> kept cutpoint at 0 (bare prompt); low tokens at 0,2,3,4,5,6 -> kept 0 and 6
        [lo, hi, lo, lo, lo, lo, lo, hi, hi, hi],
        # row 1: low tokens at 2,3,5,6,7,9 (ranks 0..5) -> kept 2 (rank 0) and 9 (rank 5); segment 0 = tokens 0,1
        [hi, hi, lo, lo, hi, lo, lo, lo, hi, lo],
        # row 2: no low-probability token -> one segment, nothing to estimate
        [hi, hi, hi, hi, hi, hi, hi, hi, hi, hi],
        # row 3: prompt-then-completion layout (first 3 positions are prompt): low at completion positions 0 and 3
        [lo, lo, lo, lo, hi, hi, lo, hi, hi, hi],
    )
    mask = B([1] * 10, [1] * 10, [1] * 8 + [0, 0], [0, 0, 0] + [1] * 7)
    ids = cutpoint_segments(probs, mask, rho, interval)
    assert ids.tolist() == [
        [0, 0, 0, 0, 0, 0, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 2],
        [0, 0, 0, 0, 0, 0, 0, 0, -1, -1],
        [-1, -1, -1, 0, 0, 0, 0, 0, 0, 0],
    ]
    bounds = chain_boundaries(ids, low_probability_mask(probs, mask, rho))
    assert bounds.row.tolist() == [0, 0, 1, 1, 3]
    assert bounds.segment.tolist() == [0, 1, 1, 2, 0]
    assert bounds.prefix_length.tolist() == [0, 6, 2, 9, 0]  # row 3 counts completion tokens, not prompt
    assert len(bounds) == 5 and (bounds.num_rows, bounds.num_segments) == (4, 3)

    tokens = [[3, 1, 4, 1, 5, 9, 2, 6, 5, 3], [2, 7, 1, 8, 2, 8, 1, 8, 2, 8], [1] * 10, [0, 0, 0, 1, 6, 1, 8, 0, 3, 3]]
    completion = [row[next(i for i, m in enumerate(mrow) if m):] for row, mrow in zip(tokens, mask.tolist())]
    values = torch.tensor(
        [_toy_value(completion[r], b) for r, b in zip(bounds.row.tolist(), bounds.prefix_length.tolist())],
        dtype=torch.float64,
    )
    start = bounds.start_values(values)
    v = values.tolist()
    assert start[0, :2].tolist() == [v[0], v[1]] and math.isnan(start[0, 2])
    assert math.isnan(start[1, 0]) and start[1, 1:].tolist() == [v[2], v[3]]
    assert torch.isnan(start[2]).all() and start[3, 0].item() == v[4] and torch.isnan(start[3, 1:]).all()

    rewards = F(1.0, 0.0, 1.0, 1.0)
    adv = chain_advantages(start, rewards, ids)
    expected = [
        [v[1] - v[0]] * 6 + [1.0 - v[1]] * 4,
        [0.0, 0.0] + [v[3] - v[2]] * 7 + [0.0 - v[3]],
        [0.0] * 10,
        [0.0] * 3 + [1.0 - v[4]] * 7,
    ]
    close(adv, expected)


def test_boundaries_interval_one_and_default_estimate_at():
    ids = L([0, 1, 1, 2, -1])
    # default: every segment but segment 0
    bounds = chain_boundaries(ids)
    assert bounds.segment.tolist() == [1, 2] and bounds.prefix_length.tolist() == [1, 3]
    # estimate_at everywhere (e.g. fixed-length partition valuing the prompt too)
    bounds = chain_boundaries(ids, torch.ones(1, 5, dtype=torch.bool))
    assert bounds.segment.tolist() == [0, 1, 2] and bounds.prefix_length.tolist() == [0, 1, 3]
    assert bounds.start_values(F(0.1, 0.2, 0.3)).tolist() == [[0.1, 0.2, 0.3]]


def test_boundaries_empty_batch_and_value_count_check():
    bounds = chain_boundaries(L([-1, -1], [-1, -1]))
    assert len(bounds) == 0 and bounds.num_segments == 0
    assert bounds.start_values(torch.zeros(0)).shape == (2, 0)
    with pytest.raises(ValueError, match="boundary values"):
        chain_boundaries(L([0, 1])).start_values(F(0.1, 0.2))


# ------------------------------------------------------------------------------------------------- SPO-tree


def test_tree_paper_example_four_ninths():
    parent = L(-1, 0, 0, 0)
    values = tree_values(parent, F(NAN, 1.0, 2 / 3, 0.0))
    close(values, [5 / 9, 1.0, 2 / 3, 0.0])
    close(tree_advantages(parent, values), [0, 4 / 9, 1 / 9, -5 / 9])


# A 3-level tree (leaves at depth 1, 2 and 3), values and advantages worked out with fractions:
#   0 root
#   ├─ 1 a: children 3 (1), 4 (0)                    V(a) = 1/2
#   └─ 2 b: children 5, 6 (0, finished early), 7     V(b) = (1 + 0 + 2/3) / 3 = 5/9
#         5 b1: children 8 (1), 9 (1)                V(b1) = 1
#         7 b3: children 10 (0), 11 (1), 12 (1)      V(b3) = 2/3
#   V(root) = (1/2 + 5/9) / 2 = 19/36
TREE_PARENT = [-1, 0, 0, 1, 1, 2, 2, 2, 5, 5, 7, 7, 7]
TREE_REWARD = [NAN, NAN, NAN, 1, 0, NAN, 0, NAN, 1, 1, 0, 1, 1]
TREE_V = [Q(19, 36), Q(1, 2), Q(5, 9), 1, 0, 1, 0, Q(2, 3), 1, 1, 0, 1, 1]
TREE_A = [0, Q(-1, 36), Q(1, 36), Q(1, 2), Q(-1, 2), Q(4, 9), Q(-5, 9), Q(1, 9), 0, 0, Q(-2, 3), Q(1, 3), Q(1, 3)]


def test_tree_three_levels_by_hand():
    parent = torch.tensor(TREE_PARENT)
    values = tree_values(parent, torch.tensor(TREE_REWARD))
    close(values, TREE_V, atol=1e-6)
    close(tree_advantages(parent, values), TREE_A, atol=1e-6)
    assert values.dtype == torch.float32


def test_tree_any_node_order_and_two_trees_in_one_batch():
    # shuffle the nodes and append a second tree (root with leaves 1, 1): same numbers, second tree all 0 advantage
    perm = [7, 12, 0, 3, 10, 5, 1, 11, 8, 2, 6, 9, 4]
    where = {old: new for new, old in enumerate(perm)}
    parent = [where[TREE_PARENT[old]] if TREE_PARENT[old] >= 0 else -1 for old in perm] + [-1, 13, 13]
    reward = [TREE_REWARD[old] for old in perm] + [NAN, 1.0, 1.0]
    values = tree_values(L(*parent), F(*reward))
    advantages = tree_advantages(L(*parent), values)
    close(values, [TREE_V[old] for old in perm] + [1, 1, 1])
    close(advantages, [TREE_A[old] for old in perm] + [0, 0, 0])


def test_tree_grpo_mode_sibling_population_std():
    parent = L(-1, 0, 0, 0)
    values = tree_values(parent, F(NAN, 1.0, 2 / 3, 0.0))
    # siblings 1, 2/3, 0: mean 5/9, deviations 4/9, 1/9, -5/9, population variance (16 + 1 + 25) / 81 / 3 = 14/81
    std = math.sqrt(14) / 9
    close(tree_advantages(parent, values, mode="grpo"), [0, (4 / 9) / std, (1 / 9) / std, (-5 / 9) / std], atol=1e-7)
    assert tree_advantages(parent, values, mode="grpo")[1].item() == pytest.approx(4 / math.sqrt(14), rel=1e-6)


def test_tree_grpo_mode_zero_std_gives_zero_not_nan():
    parent = L(-1, 0, 0, 0, 1, 1)  # root's children: node 1 (internal, V = 1/2), leaves 1/2 and 1/2 -> std 0
    values = tree_values(parent, F(NAN, NAN, 0.5, 0.5, 0.0, 1.0))
    adv = tree_advantages(parent, values, mode="grpo")
    assert not adv.isnan().any()
    close(adv, [0, 0, 0, 0, -0.5 / (0.5 + 1e-8), 0.5 / (0.5 + 1e-8)])
    # a single child has std 0 too
    single = tree_advantages(L(-1, 0), tree_values(L(-1, 0), F(NAN, 1.0)), mode="grpo")
    close(single, [0, 0])


def test_tree_rejects_malformed_input():
    with pytest.raises(ValueError, match="without a reward"):
        tree_values(L(-1, 0, 0), F(NAN, 1.0, NAN))
    with pytest.raises(ValueError, match="NaN leaf_reward"):
        tree_values(L(-1, 0), F(0.5, 1.0))
    with pytest.raises(ValueError, match="cycle"):
        tree_values(L(1, 0, 0), F(NAN, NAN, 1.0))
    with pytest.raises(ValueError, match="parent entries"):
        tree_values(L(-1, 5), F(NAN, 1.0))
    with pytest.raises(UserError, match="mode"):
        tree_advantages(L(-1, 0), F(1.0, 1.0), mode="ppo")


def test_tree_empty_and_roots_only():
    assert tree_values(L(), F()).shape == (0,)
    close(tree_values(L(-1, -1), F(1.0, 0.0)), [1, 0])
    close(tree_advantages(L(-1, -1), F(1.0, 0.0), mode="grpo"), [0, 0])


# ---------------------------------------------------------------------------------------------- probability mask


def test_probability_mask_keeps_low_probability_tokens_strictly():
    probs = F([0.95, 0.9, 0.5, 0.1], [0.2, 0.99, 0.3, 0.3])
    completion = L([1, 1, 1, 0], [0, 1, 1, 1])
    mask, fell_back = probability_mask(probs, completion)
    assert mask.tolist() == [[False, False, True, False], [False, False, True, True]]  # p == 0.9 is not low
    assert fell_back is False


def test_probability_mask_fallback_when_nothing_is_masked_in():
    probs = F([0.95, 0.99, 0.1], [0.97, 0.91, 0.2])  # low tokens only on padding
    completion = B([1, 1, 0], [1, 1, 0])
    mask, fell_back = probability_mask(probs, completion)
    assert fell_back is True and mask.tolist() == completion.tolist()
    mask, fell_back = probability_mask(F([0.1, 0.1]), B([1, 1]), enabled=False)
    assert fell_back is False and mask.tolist() == [[True, True]]


# ------------------------------------------------------------------------------------------------- whitening


def test_whiten_mean_zero_std_one_over_mask_and_zero_off_it():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(4, 9, generator=gen) * 3 + 2
    mask = torch.rand(4, 9, generator=gen) < 0.6
    values[~mask] = NAN  # entries off the mask are ignored, even NaN
    out = whiten(values, mask)
    kept = out[mask].double()
    assert kept.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert kept.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    assert out[~mask].abs().max().item() == 0.0
    reference = (values[mask].double() - values[mask].double().mean()) / values[mask].double().std(unbiased=False)
    assert torch.allclose(kept, reference, atol=1e-6)


def test_whiten_worked_numbers_and_degenerate_masks():
    values = F([1.0, 3.0, 100.0])
    mask = B([1, 1, 0])
    # mean 2, population std 1 -> -1, +1; off the mask 0
    close(whiten(values, mask), [[-1 / (1 + 1e-8), 1 / (1 + 1e-8), 0]])
    close(whiten(values, B([0, 0, 0])), [[0, 0, 0]])  # empty mask
    close(whiten(values, B([0, 1, 0])), [[0, 0, 0]])  # one entry: std 0 -> 0
    close(whiten(F([0.5, 0.5, 0.5]), B([1, 1, 1])), [[0, 0, 0]])  # all equal


def test_whiten_with_global_moments_summed_over_shards():
    gen = torch.Generator().manual_seed(1)
    values = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=gen) < 0.7
    moments = masked_moments(values[:3], mask[:3]) + masked_moments(values[3:], mask[3:])  # an all-reduce, by hand
    assert moments[0].item() == mask.sum().item()
    together = whiten(values, mask)
    sharded = torch.cat([whiten(values[:3], mask[:3], moments), whiten(values[3:], mask[3:], moments)])
    assert torch.allclose(together, sharded, atol=1e-12)


# ------------------------------------------------------------------------------------------------------ GRPO


def _trl_group_advantages(rewards, num_generations, scale_rewards):
    """The lines of TRL 1.16 GRPOTrainer._generate_and_score_completions (grpo_trainer.py 2765-2787, 2810),
    copied with TRL's own nanstd."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        if num_generations > 1:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:
            std_rewards = torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0)


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
def test_group_advantages_match_trl(scale_rewards):
    gen = torch.Generator().manual_seed(2)
    rewards = (torch.rand(12, generator=gen) < 0.5).float()
    rewards[4:8] = 1.0  # a group with std 0
    rewards[9] = NAN  # an unscorable completion
    for g in (4, 3, 1):
        ours = group_advantages(rewards, g, scale_rewards)
        assert torch.allclose(ours, _trl_group_advantages(rewards, g, scale_rewards), atol=1e-6), (g, scale_rewards)


def test_group_advantages_worked_numbers():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    # group 1: mean 1/3, Bessel std sqrt(1/3); group 2: mean 2/3, same std
    s = math.sqrt(1 / 3) + 1e-4
    expected = [2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3]
    close(group_advantages(rewards, 3), [x / s for x in expected], atol=1e-6)
    close(group_advantages(rewards, 3, scale_rewards=True), group_advantages(rewards, 3).tolist(), atol=1e-7)
    close(group_advantages(rewards, 3, scale_rewards=False), expected, atol=1e-6)
    close(group_means(rewards, 3), [1 / 3] * 3 + [2 / 3] * 3, atol=1e-6)
    with pytest.raises(UserError, match="scale_rewards"):
        group_advantages(rewards, 3, scale_rewards="global")
    with pytest.raises(ValueError, match="divisible"):
        group_advantages(rewards, 4)


def test_chain_without_cutpoints_and_group_baseline_is_dr_grpo():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    ids = L(*[[0, 0, 0]] * 6)
    start = torch.full((6, 1), NAN)
    adv = chain_advantages(start, rewards, ids, segment0_baseline=group_means(rewards, 3))
    expected = group_advantages(rewards, 3, scale_rewards="none")
    assert torch.allclose(adv, expected.unsqueeze(1).expand(6, 3))
    assert num_segments(ids).tolist() == [1] * 6


# ------------------------------------------------------------------------------------- dense per-token rewards


def _valid_positions(mask_row):
    return [t for t, m in enumerate(mask_row) if m]


def _loop_gae(rewards, values, mask, gamma, lam):
    """Textbook GAE, one row and one token at a time: A_t = sum_l (gamma lam)^l delta_{t+l}."""
    advantages = [[0.0] * len(row) for row in rewards]
    for b, mask_row in enumerate(mask):
        valid = _valid_positions(mask_row)
        deltas = []
        for i, t in enumerate(valid):
            next_value = values[b][valid[i + 1]] if i + 1 < len(valid) else 0.0
            deltas.append(rewards[b][t] + gamma * next_value - values[b][t])
        for i, t in enumerate(valid):
            advantages[b][t] = sum((gamma * lam) ** l * deltas[i + l] for l in range(len(valid) - i))
    return advantages


def _random_dense(seed, rows=6, length=9):
    """Random rewards and values with NaN off a contiguous mask (right padding, some prompt-first rows)."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(rows, length, generator=gen, dtype=torch.float64)
    values = torch.randn(rows, length, generator=gen, dtype=torch.float64)
    start = torch.randint(0, 3, (rows, 1), generator=gen)
    stop = start + torch.randint(0, length - 2, (rows, 1), generator=gen)
    position = torch.arange(length)
    mask = (position >= start) & (position < stop)
    rewards[~mask] = NAN
    values[~mask] = NAN
    return rewards, values, mask


def test_returns_to_go_by_hand():
    rewards = F([1.0, 2.0, 3.0, 99.0], [NAN, 0.5, -1.0, NAN])
    mask = B([1, 1, 1, 0], [0, 1, 1, 0])
    # gamma 1: row 0 6, 5, 3; row 1 -0.5, -1
    close(returns_to_go(rewards, mask), [[6, 5, 3, 0], [0, -0.5, -1, 0]])
    # gamma 0.5: row 0 3 -> 2 + 1.5 = 3.5 -> 1 + 1.75 = 2.75; row 1 -1 -> 0.5 - 0.5 = 0
    close(returns_to_go(rewards, mask, gamma=0.5), [[2.75, 3.5, 3, 0], [0, 0, -1, 0]])
    assert returns_to_go(torch.ones(2, 3), torch.ones(2, 3)).dtype == torch.float32  # 0/1 mask works


def test_gae_four_tokens_by_hand():
    # gamma = 1, lambda = 0.95 (the spec's), then one padding position whose entries must be ignored
    rewards = F([0.1, 0.0, -0.2, 1.0, 7.0])
    values = F([0.5, 0.4, 0.6, 0.8, 9.0])
    mask = B([1, 1, 1, 1, 0])
    # deltas: d3 = 1.0 + 0 - 0.8 = 0.2 (V = 0 after the last token)
    #         d2 = -0.2 + 0.8 - 0.6 = 0.0 ; d1 = 0.0 + 0.6 - 0.4 = 0.2 ; d0 = 0.1 + 0.4 - 0.5 = 0.0
    # A3 = 0.2 ; A2 = 0 + 0.95 * 0.2 = 0.19 ; A1 = 0.2 + 0.95 * 0.19 = 0.3805 ; A0 = 0 + 0.95 * 0.3805 = 0.361475
    advantages, returns = gae(rewards, values, mask)
    close(advantages, [[0.361475, 0.3805, 0.19, 0.2, 0]], atol=1e-12)
    close(returns, [[0.861475, 0.7805, 0.79, 1.0, 0]], atol=1e-12)  # A + V


def test_gae_matches_a_python_double_loop_on_random_data():
    for seed, gamma, lam in [(0, 1.0, 0.95), (1, 0.9, 0.8), (2, 0.99, 0.0), (3, 1.0, 1.0)]:
        rewards, values, mask = _random_dense(seed)
        advantages, returns = gae(rewards, values, mask, gamma=gamma, lam=lam)
        expected = _loop_gae(rewards.tolist(), values.tolist(), mask.tolist(), gamma, lam)
        close(advantages, expected, atol=1e-10)
        close(returns, torch.where(mask, torch.tensor(expected, dtype=torch.float64) + values, 0.0).tolist())


def test_gae_lambda_one_returns_are_returns_to_go_and_lambda_zero_is_td():
    rewards, values, mask = _random_dense(4)
    _, returns = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert torch.allclose(returns, returns_to_go(rewards, mask, gamma=0.9), atol=1e-12)
    advantages, _ = gae(rewards, values, mask, gamma=0.9, lam=0.0)
    next_values = torch.where(mask[:, 1:], values[:, 1:], 0.0)  # V after the last completion token is 0
    delta = rewards[:, :-1] + 0.9 * next_values - values[:, :-1]
    assert torch.allclose(advantages[:, :-1][mask[:, :-1]], delta[mask[:, :-1]])
    assert not advantages.isnan().any() and (advantages[~mask] == 0).all()


def test_gae_float32_and_shape_check():
    advantages, returns = gae(torch.ones(1, 3), torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), lam=1.0)
    assert advantages.dtype == returns.dtype == torch.float32 and advantages.tolist() == [[3.0, 2.0, 1.0]]
    with pytest.raises(ValueError, match="values"):
        gae(torch.ones(1, 3), torch.zeros(1, 2), torch.ones(1, 3, dtype=torch.bool))


def test_dense_group_advantages_two_completions_of_different_lengths():
    rewards = F([1.0, 2.0, 3.0, NAN], [1.0, 0.0, NAN, NAN])
    mask = B([1, 1, 1, 0], [1, 1, 0, 0])
    # average per-token reward: row 0 (1 + 2 + 3) / 3 = 2, row 1 (1 + 0) / 2 = 0.5
    # G = 2: the leave-one-out baseline is the other row's average: b0 = 0.5, b1 = 2
    # row 0: r - b = 0.5, 1.5, 2.5 -> returns 4.5, 4.0, 2.5 ; row 1: r - b = -1, -2 -> returns -3, -2
    close(dense_group_advantages(rewards, mask, num_generations=2), [[4.5, 4.0, 2.5, 0], [-3, -2, 0, 0]])
    # gamma 0.5: row 0 2.5 -> 1.5 + 1.25 = 2.75 -> 0.5 + 1.375 = 1.875 ; row 1 -2 -> -1 - 1 = -2
    close(
        dense_group_advantages(rewards, mask, num_generations=2, gamma=0.5),
        [[1.875, 2.75, 2.5, 0], [-2, -2, 0, 0]],
    )


def test_dense_group_advantages_leave_one_out_over_three_and_two_groups():
    rewards = F(
        [2.0, 0.0], [3.0, NAN], [-1.0, 0.0],  # group 1 (G = 3): averages 1, 3, -0.5
        [1.0, 1.0], [0.0, 0.0], [4.0, 2.0],  # group 2: averages 1, 0, 3
    )
    mask = B([1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1])
    # group 1 baselines: (3 - 0.5) / 2 = 1.25, (1 - 0.5) / 2 = 0.25, (1 + 3) / 2 = 2
    # group 2 baselines: (0 + 3) / 2 = 1.5, (1 + 3) / 2 = 2, (1 + 0) / 2 = 0.5
    expected = [
        [(2 - 1.25) + (0 - 1.25), 0 - 1.25],
        [3 - 0.25, 0],
        [(-1 - 2) + (0 - 2), 0 - 2],
        [(1 - 1.5) * 2, 1 - 1.5],
        [-2 * 2, -2],
        [(4 - 0.5) + (2 - 0.5), 2 - 0.5],
    ]
    close(dense_group_advantages(rewards, mask, num_generations=3), expected)


def test_dense_group_advantages_masked_out_completion_leaves_the_baselines():
    # row 3 is unscorable (NaN rewards) and masked out entirely: row 2 has no other completion, baseline 0
    rewards = F([1.0, 3.0], [0.0, 2.0], [2.0, 2.0], [NAN, NAN])
    mask = B([1, 1], [1, 1], [1, 1], [0, 0])
    # group 1: averages 2 and 1 -> baselines 1 and 2: row 0 (0, 2) -> 2, 2 ; row 1 (-2, 0) -> -2, 0
    close(dense_group_advantages(rewards, mask, num_generations=2), [[2, 2], [-2, 0], [4, 2], [0, 0]])


def test_dense_group_advantages_rejects_bad_groups():
    with pytest.raises(UserError, match="num_generations"):
        dense_group_advantages(torch.ones(2, 3), torch.ones(2, 3), num_generations=1)
    with pytest.raises(ValueError, match="divisible"):
        dense_group_advantages(torch.ones(3, 3), torch.ones(3, 3), num_generations=2)
