"""Segment reward model training on TRL: ``SegmentRewardConfig`` / ``SegmentRewardTrainer``, thin subclasses of
``RewardConfig`` / ``RewardTrainer``.

Yin et al. 2025 (arXiv 2501.02790), §3: the reward model (:mod:`segrl.segment_rm`) scores a response by the
average of its segment rewards, e(x, y) = (1/K) Σ_k r(x, y_≤end(k)), and is trained on preference pairs with the
Bradley–Terry loss −log σ(e(x, y_w) − e(x, y_l)), no margin. ``variant`` picks the segments from the same prepared
data: ``"segment"`` (entropy segments of ``segrl prepare-segments``), ``"token"`` or ``"bandit"``; with
``"bandit"`` the loss is exactly ``RewardTrainer``'s on the score read at EOS (a test checks it). TRL's
``center_rewards_coefficient`` adds its regulariser on e.

The training data must come from :func:`segrl.prepare.prepare_segments` (columns ``chosen_ids``, ``rejected_ids``,
``prompt_length``, ``chosen_segment_ids``, ``rejected_segment_ids``, ``segment_threshold``; ``segment_reference``
names the model that segmented them, and ``segrl train rm`` refuses a backbone that is another). A pair whose score
is not finite (a response with no segment, or a NaN from the model) is left out of the loss and counted in the
``skipped_pairs`` metric; a batch with none left contributes a zero loss.

Numerical guards (docs/NUMERICAL_GUARDS.md, :mod:`segrl.trainers.guarded`): in training, a NaN or ±inf score of the
model on a segment token is the model failing (unlike a response with no segment): the optimizer step is skipped
with a warning naming the step and the responses (:meth:`SegmentRewardTrainer._flag_nonfinite_scores`); so is a step
with a non-finite loss or gradient norm. ``guards/skipped_steps`` counts them and 3 in a row stop the run. Skip
rather than stop, as for DenseDPO: one extreme batch of fixed data need not end a run, a persistent failure does.

Paper settings (preference_700K, 1 epoch, lr 1e-6, batch 128) are for 8B models; the defaults here are TRL's.
Metrics: TRL's ``accuracy``, ``margin``, ``mean_reward`` plus ``segments/per_response`` and ``skipped_pairs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from trl import RewardConfig, RewardTrainer
from trl.trainer.utils import pad

from segrl import guards, segment_rm
from segrl import segmentation as seg
from segrl.errors import UserError
from segrl.trainers.guarded import GuardedTrainerMixin
from segrl.trainers.resumable import ResumableTrainerMixin

logger = logging.getLogger(__name__)

PREPARED_COLUMNS = ("chosen_ids", "rejected_ids", "prompt_length", "chosen_segment_ids", "rejected_segment_ids")


@dataclass
class SegmentRewardConfig(RewardConfig):
    """``RewardConfig`` plus the segment variant; every other field keeps its TRL meaning."""

    variant: str = field(
        default="segment",
        metadata={"help": "'segment' (entropy segments of the prepared data), 'token' (one reward per token) or "
                  "'bandit' (one reward per response, read at EOS)."},
    )

    def __post_init__(self):
        if self.variant not in segment_rm.VARIANTS:
            raise UserError(f"SegmentRewardConfig.variant must be one of {segment_rm.VARIANTS}, got {self.variant!r}")
        super().__post_init__()


@dataclass
class SegmentPreferenceCollator:
    """Pad prepared pairs into one batch: the chosen responses, then the rejected ones.

    Returns ``input_ids``, ``attention_mask`` (2B, L) right-padded; ``segment_ids`` (2B, L), -1 on the prompt, EOS
    and padding; ``completion_mask`` (2B, L), True on response tokens and EOS.
    """

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        ids, segment_ids, prompt_lengths = [], [], []
        for side in ("chosen", "rejected"):
            for example in examples:
                ids.append(torch.tensor(example[f"{side}_ids"]))
                segment_ids.append(torch.tensor(example[f"{side}_segment_ids"]))
                prompt_lengths.append(example["prompt_length"])
        attention = [torch.ones_like(x) for x in ids]
        batch = {
            "input_ids": pad(ids, padding_value=self.pad_token_id, padding_side="right"),
            "attention_mask": pad(attention, padding_value=0, padding_side="right"),
            "segment_ids": pad(segment_ids, padding_value=-1, padding_side="right"),
        }
        positions = torch.arange(batch["input_ids"].shape[1])
        batch["completion_mask"] = batch["attention_mask"].bool() & (positions >= torch.tensor(prompt_lengths)[:, None])
        return batch


class SegmentRewardTrainer(GuardedTrainerMixin, ResumableTrainerMixin, RewardTrainer):
    """``RewardTrainer`` whose score is the mean of segment rewards (see the module docstring)."""

    guard_loss_action = "skip"  # see "Numerical guards" in the module docstring

    def __init__(self, model, args: SegmentRewardConfig, train_dataset, processing_class, **kwargs):
        for name, dataset in (("train", train_dataset), ("eval", kwargs.get("eval_dataset"))):
            if dataset is None:
                continue
            missing = [c for c in PREPARED_COLUMNS if c not in dataset.column_names]
            if missing:
                raise UserError(
                    f"The {name} dataset lacks {', '.join(missing)}: prepare it with `segrl prepare-segments`"
                )
        kwargs.setdefault("data_collator", SegmentPreferenceCollator(processing_class.pad_token_id))
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        before = len(dataset)
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if len(dataset) < before:  # TRL drops pairs longer than max_length without a word
            logger.warning("%s: dropped %d of %d pairs longer than max_length=%s", dataset_name,
                           before - len(dataset), before, args.max_length)
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(PREPARED_COLUMNS)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        token_scores = outputs.logits[..., 0].float()
        segment_ids = segment_rm.variant_segment_ids(inputs["segment_ids"], inputs["completion_mask"],
                                                     self.args.variant)
        if mode == "train":
            self._flag_nonfinite_scores(inputs, token_scores, segment_ids)
        scores = segment_rm.sequence_scores(token_scores, segment_ids)
        chosen, rejected = scores.chunk(2)
        valid = torch.isfinite(chosen) & torch.isfinite(rejected)
        if valid.any():
            loss = -nn.functional.logsigmoid(chosen[valid] - rejected[valid]).mean()
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((chosen[valid] + rejected[valid]) ** 2)
        else:
            loss = token_scores.sum() * 0.0  # keeps the graph, so every process takes the same backward pass

        metrics = self._metrics[mode]
        with torch.no_grad():
            gathered = self.accelerator.gather_for_metrics
            metrics["skipped_pairs"].append(gathered((~valid).sum()).sum().item())
            margin = torch.where(valid, chosen - rejected, torch.zeros_like(chosen))
            n_valid = gathered(valid.sum()).sum().clamp(min=1)
            metrics["accuracy"].append((gathered(((margin > 0) & valid).sum()).sum() / n_valid).item())
            metrics["margin"].append((gathered(margin.sum()).sum() / n_valid).item())
            kept = torch.cat([chosen[valid], rejected[valid]])
            if len(kept):
                metrics["mean_reward"].append(kept.mean().item())
            metrics["segments/per_response"].append(seg.num_segments(segment_ids).float().mean().item())
        return (loss, outputs) if return_outputs else loss

    def _flag_nonfinite_scores(self, inputs, token_scores: torch.Tensor, segment_ids: torch.Tensor) -> None:
        """Flag the micro-batch (the step is then skipped) if the model scored a segment end NaN or ±inf: unlike a
        response with no segment, that is the model failing, and the pair would otherwise just drop out."""
        read = segment_ids >= 0  # the variant's segment tokens (each segment is read at its last one)
        rows = guards.nonfinite_rows(token_scores, read).tolist()
        if rows:
            half, ids, mask = len(token_scores) // 2, inputs["input_ids"], inputs["attention_mask"].bool()
            samples = [guards.describe_sample(
                label=f"{'chosen' if row < half else 'rejected'} response of pair {row % half}:",
                text=self.processing_class.decode(ids[row][mask[row]].tolist(), skip_special_tokens=True),
            ) for row in rows]
            self._guard_flag(f"non-finite reward-model scores in {len(rows)} responses: {'; '.join(samples)}")
