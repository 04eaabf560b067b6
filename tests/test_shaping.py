"""Worked examples (numbers computed by hand) and invariants for segrl.shaping."""

import pytest
import torch

from segrl.errors import UserError
from segrl.normalizers import LocationNormalizer
from segrl.segmentation import entropy_segments, segment_sum
from segrl.shaping import densify, kl_shaped_rewards

NAN = float("nan")


def L(*rows):
    return torch.tensor(rows, dtype=torch.long)


def F(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def same(actual, expected, atol=1e-9):
    """Equal up to atol, NaN where expected is NaN."""
    expected = torch.tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.equal(actual.isnan(), expected.isnan()), (actual, expected)
    kept = ~expected.isnan()
    assert torch.allclose(actual.double()[kept], expected[kept], atol=atol), (actual, expected)


# Row 0: prompt (2 tokens), segment 0 of 3 tokens, segment 1 of 1 token, EOS (-1 under the tail rule), padding.
# Row 1: segment 0 of 2 tokens, segment 1 of 4 tokens, no prompt in this completion-only layout.
# Row 2: nothing (e.g. an empty completion).
IDS = L(
    [-1, -1, 0, 0, 0, 1, -1, -1],
    [0, 0, 1, 1, 1, 1, -1, -1],
    [-1, -1, -1, -1, -1, -1, -1, -1],
)
REWARDS = F([3.0, -0.5, 42.0], [1.0, 2.0, NAN], [NAN, NAN, NAN])  # column 2 and row 2: no such segment


def test_densify_even_splits_each_reward_over_its_tokens():
    same(
        densify(REWARDS, IDS),
        [
            [0, 0, 1.0, 1.0, 1.0, -0.5, 0, 0],  # 3 / 3 tokens, -0.5 / 1 token
            [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0, 0],  # 1 / 2 tokens, 2 / 4 tokens
            [0] * 8,
        ],
    )


def test_densify_last_puts_the_reward_on_the_segment_last_token():
    same(
        densify(REWARDS, IDS, mode="last"),
        [
            [0, 0, 0, 0, 3.0, -0.5, 0, 0],
            [0, 1.0, 0, 0, 0, 2.0, 0, 0],
            [0] * 8,
        ],
    )


def test_densify_broadcast_repeats_the_reward():
    same(
        densify(REWARDS, IDS, mode="broadcast"),
        [
            [0, 0, 3.0, 3.0, 3.0, -0.5, 0, 0],
            [1.0, 1.0, 2.0, 2.0, 2.0, 2.0, 0, 0],
            [0] * 8,
        ],
    )


def test_densify_last_with_a_segment_ending_at_the_final_position():
    # no -1 after the last segment: its last token is the row's last position
    same(densify(F([1.0, 2.0]), L([0, 1, 1]), mode="last"), [[1.0, 0, 2.0]])


def test_densify_even_keeps_each_segment_sum_on_random_data():
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        entropy = torch.rand(6, 40, generator=gen) * 3
        lengths = torch.randint(0, 41, (6,), generator=gen)
        mask = torch.arange(40) < lengths.unsqueeze(1)
        eos = torch.arange(40) == (lengths - 1).unsqueeze(1)
        ids = entropy_segments(entropy, mask, threshold=2.0, eos_mask=eos)
        rewards = torch.randn(6, 45, generator=gen, dtype=torch.float64)  # more columns than segments
        tokens = densify(rewards, ids)
        total = int(ids.max()) + 1
        sums = segment_sum(tokens, ids, total)
        present = torch.arange(total) < (ids.max(dim=1).values + 1).unsqueeze(1)
        assert torch.allclose(sums[present], rewards[:, :total][present])
        assert (tokens[ids < 0] == 0).all()
        assert torch.allclose(tokens.sum(dim=1), torch.where(present, rewards[:, :total], 0.0).sum(dim=1))


def test_densify_nan_stays_in_its_own_segment():
    ids = L([0, 0, 1, 1, -1])
    rewards = F([NAN, 4.0])
    same(densify(rewards, ids), [[NAN, NAN, 2.0, 2.0, 0]])
    same(densify(rewards, ids, mode="last"), [[0, NAN, 0, 4.0, 0]])
    same(densify(rewards, ids, mode="broadcast"), [[NAN, NAN, 4.0, 4.0, 0]])


def test_densify_dtype_errors_and_empty_batch():
    assert densify(torch.tensor([[1.0]], dtype=torch.float16), L([0, 0])).dtype == torch.float32
    assert densify(torch.tensor([[2]]), L([0, 0])).tolist() == [[1.0, 1.0]]  # integer rewards are promoted
    with pytest.raises(UserError, match="densify mode"):
        densify(REWARDS, IDS, mode="uniform")
    with pytest.raises(ValueError, match="S>=2"):
        densify(REWARDS[:, :1], IDS)
    assert densify(torch.zeros(2, 0), L([-1, -1], [-1, -1])).tolist() == [[0, 0], [0, 0]]


def test_normalize_then_densify_pipeline():
    # the Phi-3 fit on a row of 2 segments; absent cells NaN from apply are never read by densify
    norm = LocationNormalizer(0.7668, 0.4705, 0.2569, 2.8339, sigma_floor=0.1)
    ids = L([-1, 0, 0, 1, -1], [-1, 0, 0, 0, 0])
    normalized = norm.apply(torch.tensor([[1.0, 3.3044], [0.4705, 5.0]]), ids)
    assert normalized[1, 1].isnan()
    # row 0: (1 + 0.061005) / 2.655830 = 0.399500 over 2 tokens, then 1.0; row 1: 0 everywhere
    same(densify(normalized, ids), [[0, 0.199750, 0.199750, 1.0, 0], [0] * 5], atol=1e-6)


# ------------------------------------------------------------------------------------------------ KL shaping


def test_kl_shaped_rewards_by_hand():
    token_rewards = F([0.5, 12.0, -30.0, 0.0, 7.0])
    logps = F([-1.0, -2.0, -0.5, -3.0, 0.0])
    ref_logps = F([-1.5, -1.0, -0.5, -1.0, 0.0])
    mask = torch.tensor([[True, True, True, True, False]])
    # log ratios: 0.5, -1, 0, -2 ; beta = 0.01
    # 0.5 - 0.005 = 0.495 ; clip(12) = 10 + 0.01 = 10.01 ; clip(-30) = -10 - 0 = -10 ; 0 + 0.02 = 0.02 ; off mask 0
    same(kl_shaped_rewards(token_rewards, logps, ref_logps, mask), [[0.495, 10.01, -10.0, 0.02, 0.0]], atol=1e-12)
    # beta and clip are the caller's: clip 1, beta 0.5
    same(
        kl_shaped_rewards(token_rewards, logps, ref_logps, mask, beta=0.5, clip=1.0),
        [[0.25, 1.5, -1.0, 1.0, 0.0]],
        atol=1e-12,
    )


def test_kl_shaped_rewards_off_mask_is_zero_even_with_nan_and_nan_on_mask_stays():
    token_rewards = torch.tensor([[NAN, NAN, 1.0]])
    logps = torch.tensor([[0.0, -1.0, NAN]])
    ref = torch.tensor([[0.0, -1.0, -2.0]])
    mask = torch.tensor([[1, 0, 0]])  # a 0/1 mask, as TRL's completion_mask
    out = kl_shaped_rewards(token_rewards, logps, ref, mask)
    same(out, [[NAN, 0.0, 0.0]])
    assert out.dtype == torch.float32
