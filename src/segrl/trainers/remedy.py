"""ReMedy's trainer: ``RemedyConfig`` / ``RemedyTrainer``, thin subclasses of TRL's ``RewardConfig`` /
``RewardTrainer``.

Tan & Monz 2025 (arXiv 2504.13630): an MT metric trained as a reward model on preference pairs of translations of
the same source (:mod:`segrl.remedy.data`), with the Bradley-Terry loss −log σ(r(x, y⁺) − r(x, y⁻)) plus the
reward regulariser λ·(r⁺ + r⁻)², TRL's ``center_rewards_coefficient``. Default λ = 0.01 (the paper's value is not in
the spec; TRL's documentation suggests 0.01). Everything else is TRL's.

The trainer adds segrl's numerical guards (:mod:`segrl.trainers.guarded`) and crash-safe checkpoints with
``--resume`` (:mod:`segrl.trainers.resumable`). :func:`segrl.remedy.training.train_remedy` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig, RewardTrainer

from segrl.trainers.guarded import GuardedTrainerMixin
from segrl.trainers.resumable import ResumableTrainerMixin

__all__ = ["RemedyConfig", "RemedyTrainer"]


@dataclass
class RemedyConfig(RewardConfig):
    """``RewardConfig`` with ReMedy's reward regulariser on by default; every field keeps its TRL meaning."""

    center_rewards_coefficient: float | None = field(
        default=0.01, metadata={"help": "λ of the reward regulariser λ·(r⁺ + r⁻)² (TRL's field; ReMedy: 0.01)."})


class RemedyTrainer(GuardedTrainerMixin, ResumableTrainerMixin, RewardTrainer):
    """TRL's reward trainer with segrl's numerical guards and crash-safe checkpoints."""
