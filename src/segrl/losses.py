"""Losses that TRL does not ship, as pure functions on tensors.

- :func:`clipped_value_loss`: PPO's critic loss with value clipping (Schulman et al. 2017; the clipped form of the
  OpenAI baselines and of Yin et al. 2025's PPO runs, clip 0.25 for dense rewards and 0.2 for the bandit reward):
  L = 0.5 · mean_t max((V_t − R_t)², (V_old,t + clip(V_t − V_old,t, −c, c) − R_t)²) over the tokens in the mask.
- :func:`segment_margins`: DenseDPO's per-segment DPO margins (Wu et al. 2025, "DenseDPO", arXiv 2506.03517; DPO's
  implicit reward of Rafailov et al. 2023 split by aligned segment):
  h_f = β·[Σ_{t∈S_f⁰} (log π_θ − log π_ref)(y⁰_t) − Σ_{t∈S_f¹} (log π_θ − log π_ref)(y¹_t)].
- :func:`dense_dpo_loss`: the DenseDPO loss from those margins and segment labels l_f ∈ {−1, 0, 1}:
  L_pair = −(1/|{f: l_f ≠ 0}|) Σ_{f: l_f ≠ 0} log σ(l_f · h_f), L = mean of L_pair over the pairs with a label.
  :class:`segrl.trainers.dense_dpo.DenseDPOTrainer` feeds both from TRL's per-token log-probs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segrl.segmentation import segment_sum

__all__ = ["clipped_value_loss", "dense_dpo_loss", "segment_margins"]


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


def segment_margins(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    chosen_segment_ids: torch.Tensor,
    rejected_segment_ids: torch.Tensor,
    num_segments: int,
    beta: float,
) -> torch.Tensor:
    """Per-segment DPO margins h_f = β·[Σ_{S_f⁰} log-ratio(y⁰) − Σ_{S_f¹} log-ratio(y¹)] (DenseDPO, Wu et al. 2025).

    Args:
        policy_logps: (2B, T) float, per-token log π_θ of each sequence's tokens; rows 0..B-1 are the first
            responses y⁰ (``chosen``), rows B..2B-1 the second ones y¹ (``rejected``), as in TRL's DPO batch.
        ref_logps: (2B, T) float, the same under π_ref.
        chosen_segment_ids: (B, T) long, segment of each y⁰ token, -1 where no segment (prompt, padding, EOS...).
        rejected_segment_ids: (B, T) long, the same for y¹.
        num_segments: F, the number of output columns; must exceed every id.
        beta: β, no default here (the trainer passes ``DPOConfig.beta``, TRL's default 0.1).

    Returns:
        (B, F) float, differentiable in ``policy_logps``; a segment a row does not have gets 0 (entries of the
        log-probs off every segment are ignored, even NaN).
    """
    ratios = policy_logps - ref_logps
    chosen, rejected = ratios.chunk(2, dim=0)
    return beta * (
        segment_sum(chosen, chosen_segment_ids, num_segments)
        - segment_sum(rejected, rejected_segment_ids, num_segments)
    )


def dense_dpo_loss(margins: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DenseDPO loss from the segment margins and labels (Wu et al. 2025; the per-pair normalisation is segrl's spec).

    With one segment per response covering every completion token and the label +1, this is DPO's sigmoid loss.

    Args:
        margins: (B, F) float, h_f from :func:`segment_margins`.
        labels: (B, F) int, l_f in {-1, 0, 1} (0: tie, also the padding of rows with fewer segments).

    Returns:
        ``loss``: scalar, the mean of the per-pair losses over the pairs with at least one non-zero label (0, still
        attached to ``margins``' graph with a zero gradient, when there is none);
        ``pair_losses``: (B,), −(1/|{f: l_f ≠ 0}|) Σ_{l_f ≠ 0} log σ(l_f·h_f), 0 for a pair of ties.
    """
    labelled = labels != 0
    per_segment = torch.where(labelled, -F.logsigmoid(labels.to(margins.dtype) * margins), margins.new_zeros(()))
    counts = labelled.sum(dim=1)
    pair_losses = per_segment.sum(dim=1) / counts.clamp(min=1)
    has_label = counts > 0
    loss = (pair_losses * has_label).sum() / has_label.sum().clamp(min=1)
    return loss, pair_losses
