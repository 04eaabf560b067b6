"""TRL's GRPO with one addition: a running count of generated tokens, the cost axis for comparing methods.

RL cost is dominated by generation, and SPO spends extra generation on Monte Carlo rollouts; comparing methods
at equal *generated tokens* (not equal steps) is what makes a comparison fair. ``tokens/generated`` is the
cumulative number of completion tokens sampled so far (over all processes), logged with TRL's metrics;
subclasses add their own extra generation through :meth:`count_generated`.

It also keeps what segrl's subclasses reuse instead of recomputing: the rewards of the latest batch per reward
function (gathered over processes, ``_last_rewards_per_func``) and the sampling-time log-probs
(:meth:`_sampling_logps`); and the hand-off of per-token advantages to TRL's loss (:meth:`_set_token_advantages`).
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

    def count_generated(self, local_tokens: int) -> None:
        """Add ``local_tokens`` generated on this process to the run's total (summed over processes)."""
        total = self.accelerator.reduce(torch.tensor(float(local_tokens), device=self.accelerator.device), "sum")
        self.generated_tokens += int(total.item())

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
