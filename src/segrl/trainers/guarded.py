"""The training-step guards shared by segrl's trainers: :class:`GuardedTrainerMixin`, for any transformers
``Trainer`` (TRL's GRPO, DPO and reward trainers are ones). What each trainer checks besides, and the per-trainer
choices, are in docs/NUMERICAL_GUARDS.md.

Two check points inside transformers' training loop (5.x), the least invasive places that see the values:

- **the loss**, after each micro-batch's forward and backward (:meth:`training_step`). transformers' own
  ``logging_nan_inf_filter`` (on by default) only replaces a non-finite loss in the *logged* mean by the mean of the
  previous ones, which hides it; the update still happens.
- **the gradient norm**, once per optimizer step, after clipping and before ``optimizer.step()``
  (:meth:`_get_grad_norm`, which the loop calls exactly there). The ``on_pre_optimizer_step`` callback runs next but
  is not given the norm, and recomputing it would cost another pass over the gradients.

A non-finite loss either stops the run (``guard_loss_action = "stop"``: :class:`segrl.guards.NumericalError` naming
the step and the micro-batch's samples) or marks the optimizer step for skipping (``"skip"``, with a warning naming
them). A non-finite gradient norm always skips. A skipped optimizer step sets every gradient to None, so that torch's
optimizers leave the parameters *and* their state as they were (zero gradients would not: Adam's momentum and weight
decay would still move the weights). ``global_step`` still advances; the learning-rate schedule does not, as after
an fp16 overflow (the step is marked skipped for accelerate, which transformers reads).
``guards/skipped_steps`` (cumulative) is logged at every step; ``max_consecutive_skips`` (3) skips in a row stop the
run. Subclasses flag a micro-batch whose problem the loss does not show (e.g. a non-finite reward-model score left
out of the loss) with :meth:`_guard_flag`, which the loss check treats as a non-finite loss. The skip counts are part
of a checkpoint's segrl state (:mod:`segrl.trainers.resumable`), so a resumed run keeps counting where it stopped.

Multi-process: each decision is reduced over processes (a flag, summed), so every process skips the same step or
every process stops with the same message (the offending processes' samples, gathered); a process deciding alone
would leave the others waiting in DDP's next all-reduce. That costs one scalar all-reduce per micro-batch and per
optimizer step, with several processes only. Under DeepSpeed the gradients live in the engine, not in ``p.grad``,
so a step that should be skipped stops the run instead.
"""

from __future__ import annotations

import logging

import torch
from accelerate.utils import gather_object

from segrl import guards

logger = logging.getLogger(__name__)

LOSS_ACTIONS = ("stop", "skip")


class GuardedTrainerMixin:
    """Loss and gradient-norm guards for a transformers ``Trainer`` subclass; list it before the TRL base class."""

    guard_loss_action: str = "stop"  # or "skip"; see the module docstring
    max_consecutive_skips: int = guards.MAX_CONSECUTIVE_SKIPS

    def __init__(self, *args, **kwargs):
        self._guard_batch = None  # the latest training micro-batch, as the loss saw it
        self._guard_issue: str | None = None  # this micro-batch's problem, flagged inside the loss (this process)
        self._guard_pending: str | None = None  # why the coming optimizer step is skipped (same on every process)
        self.skip_counter = guards.SkipCounter(self.max_consecutive_skips)
        super().__init__(*args, **kwargs)
        if not hasattr(super(), "_get_grad_norm"):  # never silently: the loop of another transformers may not call it
            logger.warning("%s: this transformers Trainer has no _get_grad_norm; the gradient-norm guard is off",
                           type(self).__name__)

    # ---- checkpoints (with segrl.trainers.resumable.ResumableTrainerMixin after this class)

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "skipped_steps": self.skip_counter.state()}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self.skip_counter.restore(state["skipped_steps"])

    # ---- collectives

    def _any_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any process (a collective with several processes)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return bool(flag)
        return acc.reduce(torch.tensor(float(bool(flag)), device=acc.device), "sum").item() > 0

    def _gathered_messages(self, message: str | None) -> list[str]:
        """Every process's message (None: none), in process order (a collective with several processes)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return [message] if message else []
        return [m for m in gather_object([f"[process {acc.process_index}] {message}" if message else None]) if m]

    def _stop_if_any(self, message: str | None) -> None:
        """Raise :class:`NumericalError` on every process if any process has a message (a collective)."""
        if self._any_process(message is not None):
            raise guards.NumericalError("\n".join(self._gathered_messages(message)))

    @property
    def _guard_step(self) -> int:
        """The optimizer step being computed, 1-based (``global_step`` counts the steps already taken)."""
        return self.state.global_step + 1

    # ---- samples

    def _prepare_inputs(self, inputs):
        batch = super()._prepare_inputs(inputs)
        if self.model.training:
            self._guard_batch = batch
        return batch

    def _guard_samples(self, batch) -> list[str]:
        """Descriptions of a micro-batch's rows for messages: each row of ``input_ids`` decoded (within
        ``attention_mask``). Subclasses with another layout override it."""
        tokenizer = self.processing_class
        if not isinstance(batch, dict) or batch.get("input_ids") is None or tokenizer is None:
            return []
        ids, mask = batch["input_ids"], batch.get("attention_mask")
        samples = []
        for i, row in enumerate(ids[: guards.MAX_SAMPLES]):
            kept = row if mask is None else row[mask[i].bool()]
            samples.append(guards.describe_sample(label=f"row {i}:", text=tokenizer.decode(kept.tolist(),
                                                                                         skip_special_tokens=True)))
        if len(ids) > len(samples):
            samples.append(f"... {len(ids)} rows")
        return samples

    def _guard_flag(self, issue: str) -> None:
        """Mark this process's current training micro-batch as non-finite (``issue`` says what and where)."""
        self._guard_issue = issue if self._guard_issue is None else f"{self._guard_issue}; {issue}"

    # ---- check points

    def training_step(self, *args, **kwargs):
        self._guard_issue = None
        loss = super().training_step(*args, **kwargs)
        issue = self._guard_issue
        if issue is None and not guards.is_finite(loss):
            issue = f"the loss is {loss.item()}"
        if not self._any_process(issue is not None):
            return loss
        message = issue  # a flagged issue names its own samples
        if issue is not None and self._guard_issue is None:
            samples = self._guard_samples(self._guard_batch)
            message = f"{issue}; micro-batch:\n{guards.describe_samples(samples, limit=len(samples))}"
        detail = "\n".join(self._gathered_messages(message))
        step = self._guard_step
        if self.guard_loss_action == "stop":
            raise guards.NumericalError(f"Step {step}: non-finite loss, stopping the run: {detail}")
        logger.warning("Step %d: non-finite loss, the optimizer step will be skipped: %s", step, detail)
        self._guard_pending = f"non-finite loss ({detail.splitlines()[0]})"
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        step, reason, self._guard_pending = self._guard_step, self._guard_pending, None
        if reason is None and grad_norm is not None and not guards.is_finite(grad_norm):
            reason = f"the gradient norm is {float(grad_norm)}"
        skip = self._any_process(reason is not None)
        if skip:
            reason = reason or "a non-finite gradient norm on another process"
            if self.is_deepspeed_enabled:
                raise guards.NumericalError(f"Step {step}: {reason}; under DeepSpeed an optimizer step cannot be "
                                            "skipped here, stopping the run")
            for group in self.optimizer.param_groups:
                for param in group["params"]:
                    param.grad = None  # torch's optimizers then leave the parameter and its state untouched
            logger.warning("Step %d: %s; optimizer step skipped (parameters unchanged)", step, reason)
        if getattr(self.optimizer, "scaler", None) is None and hasattr(self.optimizer, "_is_overflow"):
            # accelerate's "this step was skipped" (set by its fp16 loss scaler, which is not in use here):
            # transformers then leaves the learning-rate schedule where it was, as after an fp16 overflow.
            self.optimizer._is_overflow = skip
        self.skip_counter.limit = self.max_consecutive_skips
        try:
            self.skip_counter.record(skip, step, reason or "")
        finally:
            self._metrics["train"]["guards/skipped_steps"] = [float(self.skip_counter.total)]
        return grad_norm
