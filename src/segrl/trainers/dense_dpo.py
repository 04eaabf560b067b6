"""DenseDPO for text on TRL: ``DenseDPOConfig`` / ``DenseDPOTrainer``, thin subclasses of ``DPOConfig`` /
``DPOTrainer``.

Paper: Wu et al. 2025, "DenseDPO: Fine-Grained Temporal Preference Optimization for Video Diffusion Models"
(arXiv 2506.03517). Spec: ``shared/specs/densedpo.md``.

The paper's two ideas, carried over to autoregressive text:

1. *Aligned pairs.* The two responses of a pair come from one reference response by regenerating parts of it (the
   paper noises a video and denoises two copies), so they share structure and differ locally. Text analogues: keep
   a shared prefix and resample one segment (and optionally the rest), or re-infill a fraction η of the segments.
   Building the pairs (generation with the policy) is not this module's job; it consumes them.
2. *Segment-level labels.* Each aligned segment pair f = 0..F-1 gets a label l_f: +1 (the first response's segment
   is better), -1 (the second's is better) or 0 (tie), from an oracle, a segment reward model or a judge.

Loss. DPO's implicit reward is β·Σ_t log(π_θ/π_ref)(y_t); DenseDPO splits the sum by aligned segment. For a pair
(y⁰, y¹) (dataset columns ``chosen`` = y⁰ and ``rejected`` = y¹; with segment labels the names only say which
response is "first") with segments S_f⁰, S_f¹:

    h_f = β·[ Σ_{t∈S_f⁰} (log π_θ − log π_ref)(y⁰_t) − Σ_{t∈S_f¹} (log π_θ − log π_ref)(y¹_t) ]   (B, F)
    L_pair = −(1/|{f: l_f ≠ 0}|) Σ_{f: l_f ≠ 0} log σ(l_f · h_f)
    L = mean of L_pair over the batch's pairs that have at least one non-zero label

A pair whose labels are all ties contributes zero loss and zero gradient (``dense_dpo/tied_pairs`` counts them); a
batch made only of such pairs has loss 0 (kept in the graph, so every process takes the same backward pass). With one
segment per response covering every completion token and the label +1, L is exactly TRL's ``loss_type="sigmoid"``
DPO loss (a test checks it against ``DPOTrainer`` on the same batch). :func:`segrl.losses.segment_margins` and
:func:`segrl.losses.dense_dpo_loss` are the pure tensor functions; the trainer only feeds them.

Defaults: β = 0.1 (TRL's ``beta``); every other ``DPOConfig`` field keeps TRL's meaning and default.

Dataset: pre-tokenized aligned pairs, one row per pair (what segrl's pair builders write):

- ``prompt_ids``: list[int], at least one token (TRL never scores the first token of a sequence);
- ``chosen_ids``, ``rejected_ids``: list[int], the two completions (EOS included if the builder put one);
- ``chosen_segment_ids``, ``rejected_segment_ids``: list[int], one per completion token: the aligned segment index
  0..F-1, or -1 for a token in no segment (e.g. EOS);
- ``segment_labels``: list[int] of length F, each in {-1, 0, 1}.

Every segment 0..F-1 must hold at least one token in *both* responses (a segment present in one response only has
nothing to be compared with); a row that breaks any of these rules raises :class:`segrl.errors.UserError` naming the
dataset, the row (0-based) and the field. Segments need not be contiguous: only their token sums matter.
Text datasets (``prompt``/``chosen``/``rejected``) are refused: DenseDPO needs the token-level segments.

Truncation: TRL's collator cuts prompt+completion to ``max_length`` (default 1024). A cut segment would be compared
with a whole one, so rows longer than ``max_length`` are refused with a UserError at dataset preparation (raise
``max_length`` or set it to None); the collator still applies TRL's slice to the segment ids, so the two cannot drift
apart. Collation (:class:`DataCollatorForDensePreference`) adds ``segment_ids`` (2B, L), aligned with TRL's
``input_ids`` (first the B chosen rows, then the B rejected ones), -1 on the prompt and on padding; and
``segment_labels`` (B, F_max), padded with 0 (a tie, so padding never contributes).

How it sits on TRL 1.16: TRL's ``DPOTrainer._compute_loss`` is one method that runs the policy and the reference
(reference model, PEFT adapter switching, fused LM head) and computes its loss and metrics; it exposes no smaller
hook for "the loss given per-token log-probs". :class:`DenseDPOTrainer` therefore runs TRL's ``_compute_loss`` as it
is, captures the per-token log-probs of the policy and reference forwards with forward hooks on the two models, and
replaces TRL's loss by the DenseDPO loss. Reference handling, PEFT, the fused LM head, MoE auxiliary loss, token
counting and TRL's metrics all stay TRL's.

Deviations from the paper, and why:
- The paper trains a video diffusion model with Diffusion-DPO, whose implicit reward is a difference of denoising
  errors; for an autoregressive LM the exact log-likelihood ratio is available, so h_f sums token log-ratios (the
  DPO implicit reward restricted to a segment).
- Segments are spans of tokens, aligned by index across the two responses (the paper's are temporal chunks of frames,
  aligned by time); tokens in no segment (-1, e.g. EOS) enter no h_f, whereas whole-response DPO counts them.
- The per-pair normalisation 1/|{f: l_f ≠ 0}| and the mean over pairs with a label follow the spec.
- Refused ``DPOConfig`` options (UserError): other ``loss_type`` values or ``loss_weights``, ``ld_alpha``, non-default
  ``f_divergence_type``, ``use_weighting`` and ``precompute_ref_log_probs`` (which stores whole-response reference
  sums, not per-token ones).

Numerical guards (docs/NUMERICAL_GUARDS.md, :mod:`segrl.trainers.guarded`): a non-finite loss, or a non-finite
segment margin (a tied segment's included: the loss leaves it out, the gradient would not), skips the optimizer step
with a warning naming the step and the pairs; so does a non-finite gradient norm. ``guards/skipped_steps`` counts
them and 3 in a row stop the run (:class:`segrl.guards.NumericalError`). Skip rather than stop, unlike RL: a
preference batch is a fixed sample of the data that nothing else reuses, so one extreme batch need not end a run,
while a persistent failure still does. The labels are checked when the dataset is prepared (UserError naming the row).

Metrics (TRL ``_metrics`` style, averaged over the logging interval): ``dense_dpo/labelled_segments`` (mean non-tie
segments per pair), ``dense_dpo/tied_pairs`` (pairs in the batch with no label), ``dense_dpo/segment_accuracy``
(fraction of labelled segments with l_f·h_f > 0); TRL's ``rewards/chosen``, ``rewards/rejected`` and
``rewards/margins`` (whole-response β·log-ratios of the first and second response), ``logps/*``, ``logits/*``,
``entropy``, ``num_tokens``, ``mean_token_accuracy``. TRL's ``rewards/accuracies`` is dropped: it assumes the first
response is the better one overall, which segment labels do not say (``dense_dpo/segment_accuracy`` replaces it).

Related text methods (not implemented here):
- Step-DPO (Lai et al. 2024, arXiv 2406.18629): DPO on the first wrong reasoning step vs a correct one after a shared
  correct prefix — one labelled segment after a shared prefix.
- Mask-DPO (Gu et al. 2025, arXiv 2503.02846): DPO sums that mask out wrong sentences of the chosen response and
  correct sentences of the rejected one, from sentence-level factuality labels.
- SDPO (Kong et al. 2025, arXiv 2501.01821): segment-level DPO for multi-turn agents, on equal-length key segments of
  turns from the first erroneous turn on.
- TDPO (Zeng et al. 2024, arXiv 2404.11999): token-level DPO, adding a per-token (sequential) forward-KL term to the
  DPO objective.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset, IterableDataset
from trl import DPOConfig, DPOTrainer
from trl.trainer.dpo_trainer import DataCollatorForPreference
from trl.trainer.utils import pad

from segrl import guards
from segrl.errors import UserError
from segrl.losses import dense_dpo_loss, segment_margins
from segrl.trainers.guarded import GuardedTrainerMixin
from segrl.trainers.resumable import ResumableTrainerMixin

__all__ = [
    "DENSE_DPO_COLUMNS",
    "DPOBaselineTrainer",
    "DataCollatorForDensePreference",
    "DenseDPOConfig",
    "DenseDPOTrainer",
    "check_dense_dpo_args",
    "validate_dense_dpo_row",
]

DENSE_DPO_COLUMNS = (
    "prompt_ids", "chosen_ids", "rejected_ids", "chosen_segment_ids", "rejected_segment_ids", "segment_labels",
)
_SIDES = ("chosen", "rejected")


# ---------------------------------------------------------------------------------------------------- data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_dense_dpo_row(row: dict[str, Any], index: int, max_length: int | None = None,
                           dataset_name: str = "train") -> None:
    """Check one pre-tokenized aligned pair (see the module docstring for the format).

    Raises:
        UserError: naming the dataset, the 0-based row and the field, and what was expected.
    """
    where = f"{dataset_name} dataset, row {index}"
    for field in DENSE_DPO_COLUMNS:
        value = row.get(field)
        if not isinstance(value, (list, tuple)) or not all(_is_int(x) for x in value):
            raise UserError(f"{where}, field {field!r}: expected a list of ints, got {value!r:.200}")
    if not row["prompt_ids"]:
        raise UserError(f"{where}, field 'prompt_ids': empty; the prompt needs at least one token (e.g. BOS), "
                        "since the first token of a sequence has no log-probability")
    labels = row["segment_labels"]
    num_segments = len(labels)
    bad = [x for x in labels if x not in (-1, 0, 1)]
    if bad:
        raise UserError(f"{where}, field 'segment_labels': labels must be -1, 0 or 1, got {bad[0]}")
    present = {}
    for side in _SIDES:
        ids, segment_ids = row[f"{side}_ids"], row[f"{side}_segment_ids"]
        if len(segment_ids) != len(ids):
            raise UserError(f"{where}, field '{side}_segment_ids': {len(segment_ids)} entries for "
                            f"{len(ids)} tokens in '{side}_ids'; expected one segment id per completion token")
        out_of_range = [x for x in segment_ids if not -1 <= x < num_segments]
        if out_of_range:
            raise UserError(f"{where}, field '{side}_segment_ids': segment id {out_of_range[0]} outside -1.."
                            f"{num_segments - 1} (F = len(segment_labels) = {num_segments})")
        present[side] = {x for x in segment_ids if x >= 0}
        if max_length is not None and len(row["prompt_ids"]) + len(ids) > max_length:
            raise UserError(
                f"{where}, field '{side}_ids': prompt + completion hold {len(row['prompt_ids']) + len(ids)} tokens, "
                f"more than max_length={max_length}; DenseDPO does not truncate (a cut segment would be compared "
                "with a whole one): raise max_length, set it to None, or shorten the row"
            )
    for f in range(num_segments):
        has = [side for side in _SIDES if f in present[side]]
        if len(has) < 2:
            lacking = [f"'{side}_segment_ids'" for side in _SIDES if side not in has]
            raise UserError(f"{where}, field {' and '.join(lacking)}: segment {f} has no token there; every "
                            f"segment 0..{num_segments - 1} (F = len(segment_labels)) must have tokens in both "
                            "responses")


@dataclass
class DataCollatorForDensePreference(DataCollatorForPreference):
    """TRL's ``DataCollatorForPreference`` plus the segments.

    Adds ``segment_ids`` (2B, L) long, aligned with ``input_ids`` (chosen rows then rejected rows), -1 on the prompt
    and padding, truncated exactly like the tokens; and ``segment_labels`` (B, F_max) long, padded with 0 (tie).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        segment_ids = [[-1] * len(e["prompt_ids"]) + list(e[f"{side}_segment_ids"]) for side in _SIDES
                       for e in examples]
        if self.max_length is not None:  # the same slice as TRL's, so ids and tokens stay aligned
            keep_start = self.truncation_mode == "keep_start"
            cut = slice(None, self.max_length) if keep_start else slice(-self.max_length, None)
            segment_ids = [s[cut] for s in segment_ids]
        output["segment_ids"] = pad([torch.tensor(s, dtype=torch.long) for s in segment_ids], padding_value=-1,
                                    padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of)
        output["segment_labels"] = pad([torch.tensor(e["segment_labels"], dtype=torch.long) for e in examples],
                                       padding_value=0, padding_side="right")
        return output


# ------------------------------------------------------------------------------------------------- trainer


def check_dense_dpo_args(args: DPOConfig) -> None:
    """Refuse the ``DPOConfig`` options that DenseDPO does not implement (see the module docstring)."""
    if list(args.loss_type) != ["sigmoid"]:
        raise UserError(f"DenseDPO: loss_type must be 'sigmoid' (the DenseDPO loss), got {args.loss_type!r}")
    if args.loss_weights not in (None, [1.0]):
        raise UserError(f"DenseDPO: loss_weights is not supported, got {args.loss_weights!r}")
    if args.ld_alpha is not None:
        raise UserError("DenseDPO: ld_alpha (LD-DPO) is not supported; leave it None")
    if args.f_divergence_type != "reverse_kl":
        raise UserError(f"DenseDPO: f_divergence_type must be 'reverse_kl', got {args.f_divergence_type!r}")
    if args.use_weighting:
        raise UserError("DenseDPO: use_weighting (WPO) is not supported")
    if args.precompute_ref_log_probs:
        raise UserError("DenseDPO: precompute_ref_log_probs is not supported (TRL stores whole-response sums, "
                        "DenseDPO needs the reference's per-token log-probs)")
    if not args.beta > 0:
        raise UserError(f"DenseDPO: beta must be > 0, got {args.beta}")


@dataclass
class DenseDPOConfig(DPOConfig):
    """``DPOConfig`` for DenseDPO: every field keeps its TRL meaning and default (β = 0.1); the options DenseDPO
    does not implement are refused (see the module docstring)."""

    def __post_init__(self):
        super().__post_init__()
        check_dense_dpo_args(self)


@contextlib.contextmanager
def _capture_fused_outputs(modules: list[torch.nn.Module]):
    """Record, in call order, the outputs with per-token ``log_probs`` (TRL's fused LM head) of ``modules``."""
    captured: list[Any] = []

    def hook(module, args, output):
        if getattr(output, "log_probs", None) is not None:
            captured.append(output)

    distinct = list({id(m): m for m in modules}.values())
    handles = [m.register_forward_hook(hook) for m in distinct]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class DenseDPOTrainer(GuardedTrainerMixin, ResumableTrainerMixin, DPOTrainer):
    """``DPOTrainer`` with the DenseDPO loss over aligned segments (see the module docstring).

    Takes ``DPOTrainer``'s arguments; ``args`` must pass :class:`DenseDPOConfig`'s checks and the datasets must be
    pre-tokenized aligned pairs (:data:`DENSE_DPO_COLUMNS`). Without a ``data_collator``, the batches come from
    :class:`DataCollatorForDensePreference`; a custom one must add ``segment_ids`` and ``segment_labels`` the same way.
    """

    _tag_names = ["trl", "dpo", "segrl", "dense-dpo"]
    _name = "DenseDPO"
    guard_loss_action = "skip"  # see "Numerical guards" in the module docstring

    def __init__(self, model, ref_model=None, args: DPOConfig | None = None, data_collator=None,
                 train_dataset=None, eval_dataset=None, processing_class=None, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = DenseDPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DenseDPO")
        check_dense_dpo_args(args)
        if train_dataset is not None and not isinstance(train_dataset, IterableDataset):
            first = train_dataset[0] if len(train_dataset) else {}
            if "image" in first or "images" in first:
                raise UserError("DenseDPOTrainer supports text-only pairs; the dataset has images")
        super().__init__(model, ref_model=ref_model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=processing_class,
                         **kwargs)
        if data_collator is None:
            base = self.data_collator
            self.data_collator = DataCollatorForDensePreference(
                pad_token_id=base.pad_token_id, max_length=base.max_length, truncation_mode=base.truncation_mode,
                pad_to_multiple_of=base.pad_to_multiple_of,
            )

    # ---- data

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """Validate pre-tokenized aligned pairs instead of TRL's text tokenization (which needs text columns)."""
        columns = dataset.column_names
        if columns is None:  # an IterableDataset of unknown features: read the first row's keys
            columns = list(next(iter(dataset)).keys())
        missing = [c for c in DENSE_DPO_COLUMNS if c not in columns]
        if missing:
            raise UserError(
                f"DenseDPO: the {dataset_name} dataset lacks {', '.join(missing)}; expected pre-tokenized aligned "
                f"pairs with columns {', '.join(DENSE_DPO_COLUMNS)} (text prompt/chosen/rejected rows cannot be used: "
                "the segments live on tokens)"
            )
        max_length = args.max_length
        if isinstance(dataset, Dataset):
            for index, row in enumerate(dataset.select_columns(list(DENSE_DPO_COLUMNS))):
                validate_dense_dpo_row(row, index, max_length, dataset_name)
            return dataset

        def check(row, index):  # an IterableDataset is checked lazily, row by row as it streams
            validate_dense_dpo_row(row, index, max_length, dataset_name)
            return row

        return dataset.map(check, with_indices=True)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            super()._set_signature_columns_if_needed()
            self._signature_columns = list(dict.fromkeys([*self._signature_columns, *DENSE_DPO_COLUMNS]))

    # ---- loss

    def _fused_modules(self) -> list[torch.nn.Module]:
        """The modules whose forward TRL patched with its fused LM head: policy and reference (the same module under
        PEFT without a ``ref_model``, where the reference is the policy with its adapter switched)."""
        policy = self.accelerator.unwrap_model(self.model)
        if is_peft_model(policy):
            policy = policy.get_base_model()
        return [policy] if self.ref_model is None else [policy, self.ref_model]

    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        inputs = dict(inputs)
        segment_ids, labels = inputs.pop("segment_ids", None), inputs.pop("segment_labels", None)
        if segment_ids is None or labels is None:
            raise UserError("DenseDPO: the batch lacks 'segment_ids'/'segment_labels'; use "
                            "DataCollatorForDensePreference (the default) or a collator that adds them")
        if segment_ids.shape != inputs["input_ids"].shape:
            raise UserError(f"DenseDPO: segment_ids {tuple(segment_ids.shape)} do not match input_ids "
                            f"{tuple(inputs['input_ids'].shape)}")

        with _capture_fused_outputs(self._fused_modules()) as captured:
            result = super()._compute_loss(model, inputs, return_outputs)
        if len(captured) < 2:
            raise RuntimeError(f"DenseDPO: expected the policy and reference forwards of TRL's DPOTrainer, captured "
                               f"{len(captured)}; this TRL version computes its log-probs differently")
        policy, reference = captured[0], captured[1]

        # TRL's log-probs at position j score token j + 1 (labels shifted by one), hence the shifted segment ids
        shifted = segment_ids[:, 1:]
        seq_len = shifted.shape[1]
        policy_logps = policy.log_probs[:, -seq_len:].float()
        ref_logps = reference.log_probs[:, -seq_len:].float().detach()
        chosen_ids, rejected_ids = shifted.chunk(2, dim=0)
        margins = segment_margins(policy_logps, ref_logps, chosen_ids, rejected_ids, labels.shape[1], self.beta)
        if mode == "train":
            self._flag_nonfinite_margins(inputs, margins)
        loss, _ = dense_dpo_loss(margins, labels)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * policy.aux_loss
        self._log_dense_metrics(mode, margins.detach(), labels)
        return (loss, result[1]) if return_outputs else loss

    def _flag_nonfinite_margins(self, inputs, margins: torch.Tensor) -> None:
        """Flag the micro-batch (its optimizer step is then skipped) if a segment margin is NaN or ±inf, a tied
        segment's included (the loss leaves those out, but the log-probs of real tokens are then not finite and the
        gradient would be): the message names the pairs."""
        rows = guards.nonfinite_rows(margins).tolist()
        if rows:
            ids, mask, pairs = inputs["input_ids"], inputs["attention_mask"].bool(), len(margins)
            decode = self.processing_class.decode
            samples = [guards.describe_sample(label=f"pair {row} {side}:", text=decode(ids[i][mask[i]].tolist(),
                                                                                       skip_special_tokens=True))
                       for row in rows for side, i in (("first", row), ("second", row + pairs))]
            self._guard_flag(f"non-finite segment margins in {len(rows)} pairs: {'; '.join(samples)}")

    def _log_dense_metrics(self, mode: str, margins: torch.Tensor, labels: torch.Tensor) -> None:
        metrics = self._metrics[mode]
        metrics.pop("rewards/accuracies", None)  # TRL's whole-response accuracy: meaningless with segment labels
        labelled = labels != 0
        counts = labelled.sum(dim=1)
        correct = ((labels * margins) > 0) & labelled
        stats = torch.stack([
            counts.sum(), torch.tensor(len(counts), device=counts.device), (counts == 0).sum(), correct.sum(),
        ]).float()
        total_labelled, pairs, tied, total_correct = self.accelerator.gather(stats[None]).sum(dim=0).tolist()
        if pairs > 0:
            metrics["dense_dpo/labelled_segments"].append(total_labelled / pairs)
        metrics["dense_dpo/tied_pairs"].append(tied)
        if total_labelled > 0:
            metrics["dense_dpo/segment_accuracy"].append(total_correct / total_labelled)


class DPOBaselineTrainer(GuardedTrainerMixin, ResumableTrainerMixin, DPOTrainer):
    """TRL's DPO as it is, with the numerical guards and crash-safe checkpoints of :class:`DenseDPOTrainer`: the
    baseline that ``segrl train dpo`` runs, so that the two differ only in their loss."""

