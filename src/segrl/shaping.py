"""Reward shaping for dense-reward RL: segment rewards spread over tokens, then KL-shaped per-token rewards.

Yin et al. 2025 ("Segmenting Text and Learning Their Rewards for Improved RLHF in Language Models", arXiv
2501.02790), §3.3. A segment reward model gives one (normalised, :mod:`segrl.normalizers`) reward r̂_k per segment;
PPO wants one per token.

**Densification** (:func:`densify`), "interpolation" in the paper. Default ``"even"``: every token of segment k gets
r̂_k / |segment k|, so the segment's sum is kept. Options: ``"last"``, all of r̂_k on the segment's last token;
``"broadcast"``, r̂_k on every token of the segment. Tokens outside every segment (``segment_ids == -1``: prompt,
padding, and EOS under the tail rule of :func:`segrl.segmentation.entropy_segments`) get 0.

**Per-token reward** (:func:`kl_shaped_rewards`)::

    r_t = clip(r̃_t, -10, 10) - β (log π(y_t) - log π_ref(y_t)),    β = 0.01 fixed,

the KL penalty as the per-token k1 estimator inside the reward (not a loss term), as in the released code's
``compute_reward`` (yinyueqin/DenseRewardRLHF-PPO, ``denserlhf/models/utils.py``, an OpenRLHF fork), which also clips
the already densified per-token rewards. GAE or a return-to-go over these rewards is in :mod:`segrl.advantages`.

NaN convention: a NaN reward of a real segment (an unscorable segment) is not an error here. It reaches the tokens
of that segment only (all of them, or only the last one with ``"last"``), and :func:`kl_shaped_rewards` keeps it on
those tokens; no other token is touched. Counting and skipping such completions is the trainer's job. Reward entries
of segments a row does not have (e.g. the NaN that :meth:`segrl.normalizers.LocationNormalizer.apply` puts there)
are never read.
"""

import torch

from segrl.errors import UserError
from segrl.segmentation import broadcast_to_tokens, num_segments, segment_lengths

__all__ = ["DENSIFY_MODES", "densify", "kl_shaped_rewards"]

DENSIFY_MODES = ("even", "last", "broadcast")


def densify(segment_rewards: torch.Tensor, segment_ids: torch.Tensor, mode: str = "even") -> torch.Tensor:
    """Spread each segment's reward over its tokens.

    Args:
        segment_rewards: (B, S') float, entry [b, k] the reward of segment k of row b; S' must be at least the
            batch's largest segment count, and entries of segments a row does not have are ignored (even NaN).
        segment_ids: (B, T) long, -1 off every segment (:mod:`segrl.segmentation`).
        mode: ``"even"`` (default): r_k / |segment k| on each of its tokens, so the segment's sum is r_k;
            ``"last"``: r_k on the segment's last token, 0 on its others; ``"broadcast"``: r_k on each of its tokens.

    Returns:
        (B, T) float (``segment_rewards``' dtype, at least float32), 0 where ``segment_ids`` is -1.

    Raises:
        UserError: unknown ``mode``.
    """
    if mode not in DENSIFY_MODES:
        raise UserError(f"unknown densify mode {mode!r}: expected one of {list(DENSIFY_MODES)}")
    batch = segment_ids.shape[0]
    total = int(num_segments(segment_ids).max()) if batch else 0
    if segment_rewards.dim() != 2 or segment_rewards.shape[0] != batch or segment_rewards.shape[1] < total:
        raise ValueError(
            f"segment_rewards must have shape (B={batch}, S>={total}) for these segment_ids, "
            f"got {tuple(segment_rewards.shape)}"
        )
    rewards = segment_rewards[:, :total].to(torch.promote_types(segment_rewards.dtype, torch.float32))
    if mode == "even":
        rewards = rewards / segment_lengths(segment_ids).clamp(min=1)
    per_token = broadcast_to_tokens(rewards, segment_ids, fill=0.0)
    if mode == "last":
        # segments are contiguous, so a token is its segment's last when the next position holds another id
        following = torch.nn.functional.pad(segment_ids[:, 1:], (0, 1), value=-1)
        is_last = (segment_ids >= 0) & (following != segment_ids)
        per_token = torch.where(is_last, per_token, torch.zeros_like(per_token))
    return per_token


def kl_shaped_rewards(
    token_rewards: torch.Tensor,
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    mask: torch.Tensor,
    beta: float = 0.01,
    clip: float = 10.0,
) -> torch.Tensor:
    """Per-token RL reward: clip(r̃_t, -clip, clip) - β (logps_t - ref_logps_t) on the mask, 0 off it.

    Args:
        token_rewards: (B, T) float, r̃, e.g. :func:`densify` of normalised segment rewards.
        logps: (B, T) float, log π(y_t) of the sampled tokens under the policy that sampled them.
        ref_logps: (B, T) float, log π_ref(y_t) under the reference model.
        mask: (B, T) bool or 0/1, True on completion tokens. Pass the whole completion mask, EOS included: EOS gets
            no segment reward from :func:`densify` but still pays its KL term.
        beta: KL coefficient β (paper: 0.01, fixed).
        clip: bound of the reward clip (paper: 10).

    Returns:
        (B, T) float, at least float32. Entries off the mask are 0 whatever the inputs hold there (even NaN).
    """
    mask = mask.bool()
    dtype = torch.promote_types(torch.promote_types(token_rewards.dtype, logps.dtype), torch.float32)
    shaped = token_rewards.to(dtype).clamp(-clip, clip) - beta * (logps.to(dtype) - ref_logps.to(dtype))
    return torch.where(mask, shaped, torch.zeros_like(shaped))
