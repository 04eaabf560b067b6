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
"""

from __future__ import annotations

from typing import Any

import torch
from trl import GRPOTrainer

from segrl import advantages as adv


class TokenCountingGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` that logs ``tokens/generated`` (cumulative completion tokens sampled, all processes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated_tokens = 0
        self._last_rewards_per_func: torch.Tensor | None = None

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
        # Keep GRPO's rewards (gathered over processes, (N, num_reward_funcs)) so that no one scores twice.
        self._last_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._last_rewards_per_func

    def _set_token_advantages(self, output: dict[str, Any], advantages: torch.Tensor, loss_mask: torch.Tensor,
                              whiten: bool) -> None:
        """Hand (B, T) advantages to TRL's loss: whitened over the tokens in ``loss_mask`` (across processes) if
        ``whiten``, zero off it; the mask goes in as ``tool_mask``, the one per-token weight TRL's loss applies."""
        if whiten:
            moments = self.accelerator.reduce(adv.masked_moments(advantages, loss_mask), reduction="sum")
            advantages = adv.whiten(advantages, loss_mask, moments=moments)
        output["advantages"] = advantages * loss_mask
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
