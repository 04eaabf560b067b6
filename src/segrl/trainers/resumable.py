"""Crash-safe checkpoints for a transformers ``Trainer``: :class:`ResumableTrainerMixin`.

transformers saves and restores what it knows (weights, optimizer, scheduler, RNG states, ``trainer_state.json``)
and resumes the data where it stopped. The mixin adds the rest (:mod:`segrl.checkpoints` for the file side):

- **the completion marker**, written by the main process once every process has written its part of the
  checkpoint;
- **rotation after marking**: ``save_total_limit`` is applied only once the new checkpoint is marked complete
  (transformers rotates before, so a kill in between could leave no complete checkpoint at all);
- **segrl's own trainer state**, which transformers does not know: each trainer class returns a JSON-able dict from
  :meth:`checkpoint_state` (cooperatively, calling ``super()``) and takes it back in :meth:`load_checkpoint_state`;
  each process writes its own ``segrl_state-<process>.json`` (SPO-tree's replay buffer differs between processes).
  Binary state (the dense trainer's value model and its optimizer) goes through :meth:`save_checkpoint_files` /
  :meth:`load_checkpoint_files`.

Resuming reproduces the uninterrupted run exactly (same metrics, same parameters; tests/test_resume.py) when the
checkpoint falls where the trainer holds nothing that is not saved. Two such places are checked at start-up, with a
warning when ``save_steps`` misses them: logging (transformers averages the loss, and TRL its metrics, since the
last log, so ``save_steps`` should be a multiple of ``logging_steps``) and, for GRPO-based trainers, TRL's buffer of
generated batches (``save_steps`` x ``gradient_accumulation_steps`` should be a multiple of
``steps_per_generation`` x ``num_iterations``). With a warning given, the resumed run is correct but not identical.
A resumed run must use the same number of processes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from segrl.checkpoints import METRICS, mark_complete
from segrl.errors import UserError

logger = logging.getLogger(__name__)

STATE_FILE = "segrl_state-{process}.json"


class ResumableTrainerMixin:
    """Completion markers, rotation after marking, and segrl's trainer state in checkpoints (module docstring).
    List it after :class:`segrl.trainers.guarded.GuardedTrainerMixin` and before the transformers/TRL base class."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loss_total_at_checkpoint: float | None = None  # set when resuming
        self.add_callback(_RestoreLossTotal(self))
        args = self.args
        if args.save_strategy == "steps" and args.save_steps >= 1 and args.logging_steps >= 1:
            if args.save_steps % args.logging_steps:
                logger.warning("save_steps (%s) is not a multiple of logging_steps (%s): a run resumed from a "
                               "checkpoint logs its first metrics over fewer steps than the uninterrupted run",
                               args.save_steps, args.logging_steps)

    # ---- what subclasses add

    def checkpoint_state(self) -> dict[str, Any]:
        """This process's trainer state that transformers does not save, as JSON-able values; subclasses extend it
        (``{**super().checkpoint_state(), ...}``). Here: TRL's count of training tokens (its DPO and reward
        trainers log it as ``num_tokens``), and transformers' sum of the logged losses, from which the end of
        training reports ``train_loss`` (their mean over the run)."""
        return {"trl_train_tokens": getattr(self, "_total_train_tokens", None),
                "loss_total": self._total_loss_scalar}

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        """Take back what :meth:`checkpoint_state` returned; subclasses call ``super()`` too."""
        if state["trl_train_tokens"] is not None:
            self._total_train_tokens = state["trl_train_tokens"]
        self._loss_total_at_checkpoint = state.get("loss_total")  # absent in checkpoints of segrl < session 7

    def save_checkpoint_files(self, folder: Path) -> None:
        """Write binary state into the checkpoint ``folder`` (every process calls it; the main one writes)."""

    def load_checkpoint_files(self, folder: Path) -> None:
        """Read what :meth:`save_checkpoint_files` wrote."""

    # ---- transformers' hooks

    def _save_checkpoint(self, model, trial):
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is marked complete (below)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        run_dir = Path(self._get_output_dir(trial=trial))
        folder = run_dir / f"checkpoint-{self.state.global_step}"
        state_file = folder / STATE_FILE.format(process=self.args.process_index)
        state_file.write_text(json.dumps(self.checkpoint_state()) + "\n", encoding="utf-8")
        self.save_checkpoint_files(folder)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every process's files are written before the main one vouches for them
        if self.args.should_save:
            mark_complete(folder, self.state.global_step, Path(self.args.output_dir) / METRICS)
            rotate_checkpoints(output_dir=str(run_dir), save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if resume_from_checkpoint is not None:
            if not isinstance(resume_from_checkpoint, (str, Path)):
                raise UserError("resume_from_checkpoint must be a checkpoint directory "
                                "(segrl.checkpoints.start_run finds the newest complete one)")
            folder = Path(resume_from_checkpoint)
            state_file = folder / STATE_FILE.format(process=self.args.process_index)
            if not state_file.is_file():
                raise UserError(f"{folder} has no {state_file.name}: resume with as many processes as the run had, "
                                "from a checkpoint written by segrl")
            self.load_checkpoint_state(json.loads(state_file.read_text(encoding="utf-8")))
            self.load_checkpoint_files(folder)
            resume_from_checkpoint = str(folder)
        return super().train(resume_from_checkpoint, *args, **kwargs)


class _RestoreLossTotal(TrainerCallback):
    """transformers resets its loss sum, and counts ``train_loss``'s steps from the resumed step, at the start of
    ``train()``; just after that (``on_train_begin``) this puts back the sum of the checkpoint, so that a resumed
    run's ``train_loss`` is the mean over all its steps, as the uninterrupted run's is."""

    def __init__(self, trainer: ResumableTrainerMixin):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer._loss_total_at_checkpoint is not None:
            trainer._total_loss_scalar = trainer._loss_total_at_checkpoint
            trainer._initial_global_step = 0

