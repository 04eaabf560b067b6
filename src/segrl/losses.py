"""Losses that TRL does not ship, as pure functions on tensors.

- :func:`clipped_value_loss`: PPO's critic loss with value clipping (Schulman et al. 2017; the clipped form of the
  OpenAI baselines and of Yin et al. 2025's PPO runs, clip 0.25 for dense rewards and 0.2 for the bandit reward):
  L = 0.5 · mean_t max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −c, c) − R_t)²) over the tokens in the mask.
"""

from __future__ import annotations

import torch

__all__ = ["clipped_value_loss"]


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss and the fraction of tokens where the clipped term was the larger one.

    Args:
        values: (B, T) the critic's current values (differentiable).
        old_values: (B, T) the values at rollout time.
        returns: (B, T) the regression targets (GAE returns).
        mask: (B, T) bool, the tokens that count.
        clip: c, the largest move of a value away from ``old_values`` that the clipped term allows.

    Returns:
        ``(loss, clip_fraction)``, scalars; the loss is 0 (with a graph) when the mask is empty.
    """
    mask = mask.bool()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    unclipped_error = (values - returns) ** 2
    clipped_error = (clipped - returns) ** 2
    per_token = torch.maximum(unclipped_error, clipped_error)
    count = mask.sum().clamp(min=1)
    loss = 0.5 * (per_token * mask).sum() / count
    clip_fraction = ((clipped_error > unclipped_error) & mask).sum() / count
    return loss, clip_fraction
