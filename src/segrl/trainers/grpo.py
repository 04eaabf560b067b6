"""TRL's GRPO with one addition: a running count of generated tokens, the cost axis for comparing methods.

RL cost is dominated by generation, and SPO spends extra generation on Monte Carlo rollouts; comparing methods
at equal *generated tokens* (not equal steps) is what makes a comparison fair. ``tokens/generated`` is the
cumulative number of completion tokens sampled so far (over all processes), logged with TRL's metrics;
subclasses add their own extra generation through :meth:`count_generated`.

It also keeps what segrl's subclasses reuse instead of recomputing: the rewards of the latest batch per reward
function (gathered over processes, ``_last_rewards_per_func``) and the sampling-time log-probs
(:meth:`_sampling_logps`); and the hand-off of per-token advantages to TRL's loss (:meth:`_set_token_advantages`).

Multi-process (``accelerate launch``, one process per device): TRL's own metrics are computed on gathered tensors;
the helpers here make segrl's global too. :meth:`count_generated` sums the generated tokens over processes,
:meth:`_set_token_advantages` whitens with moments summed over processes, and :meth:`_log_global` logs a metric as a
ratio of sums, a total or a maximum over processes, so that a run on P processes logs what one process holding the
global batch would. All of them are collectives: every process must call them in the same order, so none may sit
behind a condition that differs between processes. :attr:`_generation_in_lockstep` says when extra generation
(SPO's Monte Carlo rollouts) must also be issued in the same calls on every process.

Numerical guards (docs/NUMERICAL_GUARDS.md, the training-step part in :mod:`segrl.trainers.guarded`); the choice for
RL is to stop rather than train on a wrong number, except for the gradient, where a step can be skipped cleanly:

- a reward function that returns a NaN or ±inf *number* stops the run at that step
  (:class:`segrl.guards.NumericalError` naming the function, the row's prompt and completion), as does a reward
  model's non-finite score (:meth:`_calculate_rewards`, which looks at what the functions return before TRL turns
  None into NaN; after that TRL's ``nan_to_num`` on the advantages would hide it). ``None`` stays TRL's "not
  applicable";
- non-finite advantages on the loss mask stop it, naming the rows (:meth:`_set_token_advantages`, before whitening
  would spread them to every row; entries off the mask become 0);
- a non-finite loss stops it, naming the micro-batch (with finite advantages it means the policy's log-probs or
  ratios overflowed, which the next batch from the same policy would repeat);
- a non-finite gradient norm skips the optimizer step (parameters and optimizer state untouched), logs a warning and
  ``guards/skipped_steps``; 3 skips in a row stop the run.

Each decision is reduced over processes, so that all stop or skip together.

Checkpoints (:mod:`segrl.trainers.resumable`) also hold the ``tokens/generated`` count and TRL's micro-step counter.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn
from trl import GRPOTrainer
from trl.trainer.utils import is_async_callable

from segrl import advantages as adv
from segrl import guards
from segrl.errors import UserError
from segrl.trainers.guarded import GuardedTrainerMixin
from segrl.trainers.resumable import ResumableTrainerMixin

logger = logging.getLogger(__name__)


class TokenCountingGRPOTrainer(GuardedTrainerMixin, ResumableTrainerMixin, GRPOTrainer):
    """``GRPOTrainer`` that logs ``tokens/generated`` (cumulative completion tokens sampled, all processes)."""

    guard_loss_action = "stop"  # RL: see "Numerical guards" in the module docstring

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and not self.is_fsdp_enabled:
            # accelerate (1.15) turns FSDP on for GPU-like devices only: on CPUs it runs plain DDP, while
            # transformers, which reads the same variables, loads later models (the value model) on the meta device.
            raise UserError("accelerate runs an FSDP config on CPUs as plain DDP: launch with "
                            "configs/accelerate/cpu_2proc.yaml on CPUs (docs/SCALING.md)")
        self.generated_tokens = 0
        self._last_rewards_per_func: torch.Tensor | None = None
        args = self.args
        generate_every = args.steps_per_generation * self.num_iterations
        if args.save_strategy == "steps" and args.save_steps >= 1 and (
                args.save_steps * args.gradient_accumulation_steps) % generate_every:
            logger.warning("save_steps x gradient_accumulation_steps (%s x %s) is not a multiple of "
                           "steps_per_generation x num_iterations (%s): a run resumed from a checkpoint generates "
                           "a new batch where the uninterrupted run reused its buffered one",
                           args.save_steps, args.gradient_accumulation_steps, generate_every)

    def checkpoint_state(self) -> dict:
        # TRL's micro-step counter decides when to generate and which buffered slice to train on.
        return {**super().checkpoint_state(), "generated_tokens": self.generated_tokens, "micro_step": self._step}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self.generated_tokens, self._step = state["generated_tokens"], state["micro_step"]

    def count_generated(self, local_tokens: int) -> int:
        """Add ``local_tokens`` generated on this process to the run's total (summed over processes); return the
        sum over processes that was added."""
        total = int(self.accelerator.reduce(torch.tensor(float(local_tokens), device=self.accelerator.device),
                                            "sum").item())
        self.generated_tokens += total
        return total

    def _log_global(self, mode: str, ratios: dict[str, tuple[float, float]] | None = None,
                    totals: dict[str, float] | None = None, maxima: dict[str, float] | None = None) -> None:
        """Append metrics reduced over processes: ``ratios`` name -> (numerator, denominator), both summed over
        processes, logged as their ratio (nothing when the summed denominator is 0); ``totals`` summed; ``maxima``
        the max over processes (wall times: the slowest process sets the pace). A collective: every process must
        pass the same names."""
        ratios, totals, maxima = ratios or {}, totals or {}, maxima or {}
        acc, metrics = self.accelerator, self._metrics[mode]
        summed = sorted(ratios) + sorted(totals)
        if summed:
            pairs = [ratios[name] for name in sorted(ratios)] + [(totals[name], 1.0) for name in sorted(totals)]
            local = torch.tensor(pairs, dtype=torch.float64, device=acc.device)
            reduced = acc.reduce(local, "sum").cpu() if acc.num_processes > 1 else local.cpu()
            for name, (numerator, denominator) in zip(summed, reduced.tolist()):
                if name in totals:
                    metrics[name].append(numerator)
                elif denominator > 0:
                    metrics[name].append(numerator / denominator)
        if maxima:
            local = torch.tensor([maxima[name] for name in sorted(maxima)], dtype=torch.float64, device=acc.device)
            if acc.num_processes > 1:
                local = acc.gather(local).view(acc.num_processes, -1).max(dim=0).values
            for name, value in zip(sorted(maxima), local.tolist()):
                metrics[name].append(value)

    @property
    def _generation_in_lockstep(self) -> bool:
        """Whether every process must issue the same generate calls with the same number of prompts: TRL's vLLM
        server mode gathers the prompts of a call and hands results back by position, and DeepSpeed ZeRO-3 and FSDP
        gather the parameters for each generate call (a collective). Plain DDP generates independently."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return False
        plugin = getattr(acc.state, "deepspeed_plugin", None)
        zero3 = self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3
        return bool(self.use_vllm or zero3 or self.is_fsdp_enabled)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self.count_generated(int(output["completion_mask"].sum().item()))
        self._metrics[mode]["tokens/generated"] = [self.generated_tokens]
        return output

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # The reward functions are wrapped for the call, to see what they return before TRL turns None into NaN:
        # None is "not applicable" (TRL's nansum leaves it out), a NaN or ±inf *number* is a bug that TRL's
        # ``nan_to_num`` on the advantages would silently turn into 0 or a huge advantage.
        returned: dict[int, list] = {}
        functions = self.reward_funcs
        self.reward_funcs = [self._recording(func, i, returned) for i, func in enumerate(functions)]
        try:
            rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self.reward_funcs = functions
        self._check_rewards(rewards, returned, prompts, completions)
        # Keep GRPO's rewards (gathered over processes, (N, num_reward_funcs)) so that no one scores twice.
        self._last_rewards_per_func = rewards
        return rewards

    @staticmethod
    def _recording(func, index: int, returned: dict[int, list]):
        """``func`` with what it returns kept in ``returned[index]`` (a reward model, an ``nn.Module``, as is)."""
        if isinstance(func, nn.Module):
            return func
        if is_async_callable(func):
            async def recorded_async(*args, **kwargs):
                returned[index] = list(await func(*args, **kwargs))
                return returned[index]
            return recorded_async

        def recorded(*args, **kwargs):
            returned[index] = list(func(*args, **kwargs))
            return returned[index]
        return recorded

    def _check_rewards(self, rewards: torch.Tensor, returned: dict[int, list], prompts, completions) -> None:
        """Stop the run (every process) if a reward function returned a NaN or ±inf number for a local row, or a
        reward model (no None possible) scored one non-finite."""
        start = self.accelerator.process_index * len(prompts)
        local = slice(start, start + len(prompts))
        problems = []
        for i, name in enumerate(self.reward_func_names):
            if i in returned:
                bad = [(row, r) for row, r in enumerate(returned[i]) if guards.is_nonfinite_number(r)]
            else:
                column = rewards[local, i]
                bad = [(row, column[row].item()) for row in guards.nonfinite_rows(column).tolist()]
            for row, value in bad:
                label = f"reward function {name!r} returned {value} (not None) for row {row}:"
                problems.append(guards.describe_sample(prompts[row], completions[row], label=label))
        message = None
        if problems:
            message = (f"Step {self._guard_step}: a reward must be a finite number, or None for 'not applicable'; "
                       f"fix the reward function:\n{guards.describe_samples(problems)}")
        self._stop_if_any(message)

    def _describe_rows(self, output: dict[str, Any], rows) -> list[str]:
        """Prompt and completion text of ``rows`` of a rollout batch (``prompt_ids``/``completion_ids`` and masks)."""
        decode = self.processing_class.decode
        samples = []
        for row in list(rows):
            prompt = output["prompt_ids"][row][output["prompt_mask"][row].bool()]
            completion = output["completion_ids"][row][output["completion_mask"][row].bool()]
            samples.append(guards.describe_sample(decode(prompt.tolist(), skip_special_tokens=True),
                                                  decode(completion.tolist(), skip_special_tokens=True),
                                                  label=f"row {row}:"))
        return samples

    def _guard_samples(self, batch) -> list[str]:
        if not isinstance(batch, dict) or "completion_ids" not in batch:
            return super()._guard_samples(batch)
        rows = len(batch["completion_ids"])
        samples = self._describe_rows(batch, range(min(rows, guards.MAX_SAMPLES)))
        return samples + ([f"... {rows} rows"] if rows > guards.MAX_SAMPLES else [])

    def _stop_if_nonfinite_rows(self, quantity: str, values: torch.Tensor, mask: torch.Tensor | None,
                                output: dict[str, Any]) -> None:
        """Stop the run (every process: a collective) if ``values`` (B, ...) hold a NaN or ±inf on ``mask``,
        naming ``quantity``, the step and the offending rows of ``output`` (a rollout batch)."""
        rows = guards.nonfinite_rows(values, mask)
        message = None
        if len(rows):
            message = (f"Step {self._guard_step}: non-finite {quantity} in {len(rows)} of {len(values)} rows:\n"
                       f"{guards.describe_samples(self._describe_rows(output, rows.tolist()))}")
        self._stop_if_any(message)

    def _set_token_advantages(self, output: dict[str, Any], advantages: torch.Tensor, loss_mask: torch.Tensor,
                              whiten: bool) -> None:
        """Hand (B, T) advantages to TRL's loss: whitened over the tokens in ``loss_mask`` (across processes) if
        ``whiten``, zero off it; the mask goes in as ``tool_mask``, the one per-token weight TRL's loss applies.
        A NaN or ±inf advantage on the mask stops the run (checked before whitening, which would spread it to every
        row); whatever is off the mask becomes 0."""
        self._stop_if_nonfinite_rows("advantages", advantages, loss_mask, output)
        if whiten:
            moments = self.accelerator.reduce(adv.masked_moments(advantages, loss_mask), reduction="sum")
            advantages = adv.whiten(advantages, loss_mask, moments=moments)
        output["advantages"] = torch.where(loss_mask.bool(), advantages, torch.zeros((), dtype=advantages.dtype,
                                                                                      device=advantages.device))
        output["tool_mask"] = loss_mask.long()
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()

    @torch.no_grad()
    def _sampling_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Log-probs of the completion tokens at the sampling temperature, (B, T), stored as the batch's
        ``old_per_token_logps`` (they are exactly what the loss would otherwise recompute)."""
        logps = output.get("old_per_token_logps")
        if logps is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
            output["old_per_token_logps"] = logps
        return logps

