"""Dense reward sources: per-token rewards for the sampled completions of an RL batch.

A source is any callable ``source(rollout) -> (B, T) float tensor`` over a :class:`Rollout`; a row holding NaN is
skipped by the trainer (counted, never trained on). Sources may keep running statistics in a ``metrics`` dict
(name -> list of floats), which the trainer logs and clears.

:class:`SegmentRewardModelSource` is the segment reward model of Yin et al. 2025 (:mod:`segrl.segment_rm`):

1. segment the completions as the reward model was trained (its config's variant and entropy threshold; the
   entropies are the reference model's, already computed by the trainer for the KL term; tail rule at EOS);
2. read each segment's reward at its last token;
3. normalise (:mod:`segrl.normalizers`: the location-aware normaliser for segment and token RMs, the global one for
   the bandit RM; none if not given);
4. spread each segment's reward over its tokens (:func:`segrl.shaping.densify`, default ``"even"``).

:class:`CriticSpanSource` is DRLC's (Cao et al. 2024, :mod:`segrl.critic`): a critic names the spans of each decoded
completion that made it good or bad; each span's reward goes to the tokens whose characters it covers, through the
offsets of the tokens the policy sampled (:mod:`segrl.critic.align`). A critic answer that does not parse gives the
row zero critic reward (not NaN: the holistic reward still trains it) and is counted.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from segrl import segment_rm
from segrl import segmentation as seg
from segrl.errors import UserError
from segrl.scoring import completion_token_scores
from segrl.shaping import densify

__all__ = ["CriticSpanSource", "Rollout", "SegmentRewardModelSource"]


@dataclass
class Rollout:
    """One RL batch as a dense reward source sees it (TRL's layout).

    Attributes:
        prompts: the B prompts (text or messages), as in the dataset.
        completions: the B decoded completions.
        prompt_ids, prompt_mask: (B, P), left-padded.
        completion_ids, completion_mask: (B, T), right-padded; the mask covers EOS.
        reference_entropy: (B, T), entropy (temperature 1) of the reference model's distribution of each
            completion token.
        eos_token_ids: the ids that end a completion.
        holistic_rewards: (B,) the weighted sum of the trainer's reward functions (NaN where one failed).
    """

    prompts: list
    completions: list
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    reference_entropy: torch.Tensor
    eos_token_ids: list[int]
    holistic_rewards: torch.Tensor | None = None

    @property
    def eos_mask(self) -> torch.Tensor:
        """(B, T) bool, True on EOS tokens of the completions."""
        eos = torch.tensor(self.eos_token_ids, device=self.completion_ids.device)
        return torch.isin(self.completion_ids, eos) & self.completion_mask.bool()


class SegmentRewardModelSource:
    """Per-token rewards from a segment reward model (see the module docstring).

    Args:
        model: a reward model from :func:`segrl.segment_rm.load_reward_model`.
        normalizer: a fitted normaliser with ``apply(segment_rewards, segment_ids)``, or None.
        interpolation: ``"even"``, ``"last"`` or ``"broadcast"``.
        batch_size: rows per forward pass.
    """

    def __init__(self, model, normalizer=None, interpolation: str = "even", batch_size: int | None = None):
        self.model, self.normalizer = model, normalizer
        self.interpolation, self.batch_size = interpolation, batch_size
        self.variant, self.threshold = segment_rm.segmentation_of(model)
        self.metrics: dict[str, list[float]] = defaultdict(list)

    def segment_ids(self, rollout: Rollout) -> torch.Tensor:
        """(B, T) segment ids of the completions, as the reward model was trained to read them."""
        mask = rollout.completion_mask.bool()
        body = seg.entropy_segments(rollout.reference_entropy, mask, self.threshold or 0.0, eos_mask=rollout.eos_mask)
        return segment_rm.variant_segment_ids(body, mask, self.variant)

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        segment_ids = self.segment_ids(rollout)
        input_ids = torch.cat([rollout.prompt_ids, rollout.completion_ids], dim=1)
        attention = torch.cat([rollout.prompt_mask, rollout.completion_mask], dim=1)
        device = next(self.model.parameters()).device
        scores = completion_token_scores(self.model, input_ids.to(device), attention.to(device),
                                         rollout.completion_ids.shape[1], shift=0, batch_size=self.batch_size)
        scores = scores.to(segment_ids.device)
        rewards = segment_rm.segment_rewards(scores, segment_ids)
        if self.normalizer is not None:
            rewards = self.normalizer.apply(rewards, segment_ids)
        lengths = seg.segment_lengths(segment_ids).float()
        self.metrics["segments/per_completion"].append(seg.num_segments(segment_ids).float().mean().item())
        self.metrics["segments/mean_length"].append((lengths.sum() / (lengths > 0).sum().clamp(min=1)).item())
        present = seg.segment_last_index(segment_ids) >= 0
        if present.any():
            self.metrics["dense/segment_reward_mean"].append(rewards[present].nanmean().item())
        return densify(rewards, segment_ids, self.interpolation)


def load_segment_reward_source(path: str, policy_tokenizer, normalizer_path: str | None, interpolation: str,
                               device=None, batch_size: int | None = None) -> SegmentRewardModelSource:
    """A :class:`SegmentRewardModelSource` from a saved reward model (and normaliser); checks that the reward model
    reads the policy's tokens (the same vocabulary)."""
    from transformers import AutoTokenizer

    from segrl.normalizers import load_normalizer

    model = segment_rm.load_reward_model(path, device=device)
    try:
        rm_tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: the reward model directory has no tokenizer ({err})") from err
    if rm_tokenizer.get_vocab() != policy_tokenizer.get_vocab():
        raise UserError(f"{path}: the reward model's tokenizer differs from the policy's; it must read the same tokens")
    normalizer = load_normalizer(normalizer_path) if normalizer_path else None
    return SegmentRewardModelSource(model, normalizer, interpolation, batch_size)


class CriticSpanSource:
    """Per-token rewards from a DRLC critic's spans (see the module docstring).

    Args:
        critic: ``critic(prompts, responses, scores) -> list[Critique]`` (:mod:`segrl.critic.critics`).
        tokenizer: the policy's tokenizer (decodes the sampled ids and gives their character offsets).

    Metrics: ``critic/unparsed`` (rows whose critic answer did not parse), ``critic/spans_not_found`` (named spans
    that occur nowhere in their response), ``critic/spans`` (located spans per completion), ``critic/reward``
    (mean summed critic reward per completion), ``critic/rewarded_tokens`` and ``critic/penalised_tokens`` (the
    fraction of completion tokens whose critic reward is above / below the template's ``outside`` reward).
    """

    def __init__(self, critic, tokenizer):
        self.critic, self.tokenizer = critic, tokenizer
        self.metrics: dict[str, list[float]] = defaultdict(list)

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        from segrl.critic.align import token_rewards

        mask = rollout.completion_mask.bool()
        decoded = [seg.decode_with_offsets(self.tokenizer, ids[keep].tolist())
                   for ids, keep in zip(rollout.completion_ids, mask)]
        scores = rollout.holistic_rewards.tolist() if rollout.holistic_rewards is not None else None
        critiques = self.critic(rollout.prompts, [text for text, _ in decoded], scores)
        rewards = torch.zeros(mask.shape)
        above = below = 0
        for row, ((_, offsets), critique) in enumerate(zip(decoded, critiques)):
            if not critique.ok:
                continue
            row_rewards = token_rewards(offsets, critique.spans, critique.outside)
            rewards[row, mask[row].nonzero().squeeze(1)] = row_rewards
            has_text = torch.tensor([end > start for start, end in offsets], dtype=torch.bool)
            above += int(((row_rewards > critique.outside) & has_text).sum())
            below += int(((row_rewards < critique.outside) & has_text).sum())
        self.metrics["critic/unparsed"].append(float(sum(not c.ok for c in critiques)))
        self.metrics["critic/spans_not_found"].append(float(sum(c.dropped for c in critiques)))
        self.metrics["critic/spans"].append(sum(len(c.spans) for c in critiques) / max(len(critiques), 1))
        self.metrics["critic/reward"].append(rewards.sum(dim=1).mean().item())
        self.metrics["critic/rewarded_tokens"].append(above / max(int(mask.sum()), 1))
        self.metrics["critic/penalised_tokens"].append(below / max(int(mask.sum()), 1))
        return rewards.to(rollout.completion_ids.device)
