"""TRL's GRPO with one addition: a running count of generated tokens, the cost axis for comparing methods.

RL cost is dominated by generation, and SPO spends extra generation on Monte Carlo rollouts; comparing methods
at equal *generated tokens* (not equal steps) is what makes a comparison fair. ``tokens/generated`` is the
cumulative number of completion tokens sampled so far (over all processes), logged with TRL's metrics;
subclasses add their own extra generation through :meth:`count_generated`.
"""

from __future__ import annotations

from typing import Any

from trl import GRPOTrainer


class TokenCountingGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` that logs ``tokens/generated`` (cumulative completion tokens sampled, all processes)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated_tokens = 0

    def count_generated(self, local_tokens: int) -> None:
        """Add ``local_tokens`` generated on this process to the run's total (summed over processes)."""
        import torch

        total = self.accelerator.reduce(torch.tensor(float(local_tokens), device=self.accelerator.device), "sum")
        self.generated_tokens += int(total.item())

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self.count_generated(int(output["completion_mask"].sum().item()))
        self._metrics[mode]["tokens/generated"] = [self.generated_tokens]
        return output
