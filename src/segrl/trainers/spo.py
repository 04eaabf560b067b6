"""SPO-chain on TRL: ``SPOConfig`` / ``SPOTrainer``, thin subclasses of ``GRPOConfig`` / ``GRPOTrainer``.

Segment Policy Optimization (Guo et al. 2025, arXiv 2505.23564), chain variant for short chains of thought:

1. Sample completions with GRPO's own generation path (HF ``generate`` or TRL's vLLM path) and score them.
2. Partition each completion. ``partition="cutpoint"`` (the paper): the probability p_t of each sampled token under
   the policy at the sampling temperature (TRL's log-probs are computed at that temperature); tokens with
   p_t < ``cutpoint_threshold`` (ρ = 0.9) are cutpoints, every ``cutpoint_interval``-th (k = 5) is kept, and a
   segment opens at each kept cutpoint. ``partition="fixed"``: every ``segment_length`` tokens (ablation).
3. Value every segment-start state s_k = prompt + completion[:b_k] by Monte Carlo: ``num_mc_samples`` (N = 9 in the
   paper's GSM8K runs) continuations from s_k through the trainer's own generation path, each scored by the
   reward functions; V̂(s_k) = mean. A continuation that would run past ``max_completion_length`` (counted from the
   start of the completion) is truncated and scores 0. Identical states (the same prompt and prefix, e.g. two
   completions that share a beginning) are estimated once.
4. Advantages (:func:`segrl.advantages.chain_advantages`): A_k = V̂(s_{k+1}) − V̂(s_k), the last segment R − V̂(s_K).
   Segment 0, whose start is the bare prompt, gets A = 0 unless its first token is a kept cutpoint (then the prompt
   state is valued by MC) or ``segment0_baseline="group_mean"`` (the mean final reward of the prompt's completions,
   which are samples from that state, so it costs no rollout).
5. Probability mask (``use_prob_mask``, on by default): only tokens with p_t < ρ keep their advantage and enter
   the loss (and so the KL term); if a batch has none, all completion tokens are used. Advantages are whitened over
   the tokens in the loss (``whiten_advantages``).
6. The loss is TRL's (``loss_type``, ``epsilon``, ``beta`` ...) with (B, T) advantages, which ``GRPOTrainer``
   accepts as they are. The mask reaches the loss through TRL's ``tool_mask`` input, which the loss multiplies into
   ``completion_mask``: the one per-token weight TRL's loss already supports.

Deviations from the paper and the released code, and why:
- The paper's loss is PPO-clip summed over tokens and averaged over sequences; here any TRL ``loss_type`` is used
  (default TRL's ``"dapo"``, token-level mean), so that SPO and the GRPO baseline share one loss and differ only in
  their advantages.
- Reward functions must be Python callables (TRL's signature); reward *models* are not supported for the MC
  scoring here, since TRL's reward-model path gathers across processes, which unequal MC batch sizes would break.
- MC continuations are sampled from the generation-time policy, in chunks of ``mc_batch_size`` sequences; on
  several processes each process values its own completions (no cross-process prefix dedup).

Metrics (under ``segments/``): ``per_completion`` (mean segments per completion), ``mean_length`` (tokens),
``mc_states`` (states valued), ``dedup_rate`` (fraction of requested states that were duplicates), ``mc_tokens``
and ``policy_tokens`` (generated tokens), ``masked_in_fraction`` (completion tokens in the loss),
``mask_fallback`` (batches that fell back to all tokens) and ``time/mc_seconds``; ``tokens/generated`` (cumulative,
policy plus MC) is the cost axis shared with the GRPO baseline (:mod:`segrl.trainers.grpo`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from trl import GRPOConfig
from trl.data_utils import is_conversational

from segrl import advantages as adv
from segrl import segmentation as seg
from segrl.errors import UserError
from segrl.trainers.grpo import TokenCountingGRPOTrainer


@dataclass
class SPOConfig(GRPOConfig):
    """``GRPOConfig`` plus SPO-chain's fields; every GRPO field (``num_generations``, ``temperature``, ``beta``,
    ``epsilon``, ``loss_type``, ``use_vllm`` ...) keeps its TRL meaning."""

    spo_mode: str = field(
        default="chain",
        metadata={"help": "'chain' (MC values at cutpoint boundaries of sampled completions) or 'tree' (trees of "
                  "fixed-length segments whose samples are the training data)."},
    )
    partition: str = field(
        default="cutpoint",
        metadata={"help": "'cutpoint': segments open at every k-th low-probability token (SPO); 'fixed': every "
                  "segment_length tokens (ablation)."},
    )
    cutpoint_threshold: float = field(
        default=0.9, metadata={"help": "ρ: a sampled token with probability < ρ is a cutpoint (and is masked in)."}
    )
    cutpoint_interval: int = field(default=5, metadata={"help": "k: keep every k-th cutpoint as a boundary (int5)."})
    segment_length: int = field(
        default=30, metadata={"help": "M: tokens per segment for partition='fixed' and for the tree's inner levels."}
    )
    tree_branching: list[int] = field(
        default_factory=lambda: [6, 6, 6],
        metadata={"help": "Tree mode: children per node at each depth (6 6 6 in the paper); the last depth runs to "
                  "the end of the completion."},
    )
    tree_advantage: str = field(
        default="rloo",
        metadata={"help": "Tree mode: 'rloo' (A = V(node) - V(parent)) or 'grpo' (divided by the siblings' std)."},
    )
    num_mc_samples: int = field(
        default=9, metadata={"help": "N: Monte Carlo continuations per segment-start state (9 in the paper)."}
    )
    mc_batch_size: int = field(default=256, metadata={"help": "Sequences per generate call for MC rollouts."})
    use_prob_mask: bool = field(
        default=True, metadata={"help": "Train only on low-probability tokens (p < cutpoint_threshold)."}
    )
    segment0_baseline: str = field(
        default="none",
        metadata={"help": "Value of the bare prompt when it is not estimated: 'none' (segment 0 gets A = 0, as "
                  "released) or 'group_mean' (mean final reward of the prompt's completions)."},
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Whiten advantages over the tokens in the loss (mean 0, std 1)."}
    )

    def __post_init__(self):
        choices = {"spo_mode": ("chain", "tree"), "partition": ("cutpoint", "fixed"),
                   "segment0_baseline": ("none", "group_mean"), "tree_advantage": ("rloo", "grpo")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"SPOConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("cutpoint_interval", "segment_length", "num_mc_samples", "mc_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"SPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.tree_branching or min(self.tree_branching) < 1:
            raise UserError(f"SPOConfig.tree_branching must be positive integers, got {self.tree_branching}")
        if self.spo_mode == "tree" and (self.use_vllm or self.beta != 0.0):
            raise UserError("SPO-tree runs with HF generation and beta = 0 for now (use_vllm and the KL term are "
                            "supported in chain mode)")
        super().__post_init__()


class SPOTrainer(TokenCountingGRPOTrainer):
    """``GRPOTrainer`` whose advantages are SPO-chain's Monte Carlo segment advantages (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if any(isinstance(func, nn.Module) for func in self.reward_funcs):
            raise UserError("SPOTrainer scores Monte Carlo rollouts with Python reward functions only")
        self._last_rewards_per_func = None
        self.last_example: dict | None = None  # one completion of the latest batch, with its advantages

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Keep GRPO's rewards (gathered over processes) so that R needs no second scoring.
        self._last_rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._last_rewards_per_func

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.args.spo_mode == "tree":
            return self._tree_batch(inputs)
        return self._chain_batch(inputs)

    def _chain_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        args, device = self.args, self.accelerator.device
        mode = "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        completion_mask = completion_mask.bool()

        local = slice(self.accelerator.process_index * len(inputs), (self.accelerator.process_index + 1) * len(inputs))
        rewards_per_func = self._last_rewards_per_func
        final_rewards = (rewards_per_func * self.reward_weights.to(device)).nansum(dim=1)
        final_rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        group_baseline = adv.group_means(final_rewards, self.num_generations)[local]
        final_rewards = final_rewards[local]

        token_probs = self._sampling_token_probs(output)
        if args.partition == "cutpoint":
            segment_ids = seg.cutpoint_segments(token_probs, completion_mask, args.cutpoint_threshold, args.cutpoint_interval)
            estimate_at = seg.low_probability_mask(token_probs, completion_mask, args.cutpoint_threshold)
        else:
            segment_ids = seg.fixed_length_segments(completion_mask, args.segment_length)
            estimate_at = None
        boundaries = adv.chain_boundaries(segment_ids, estimate_at)

        start = time.perf_counter()
        values, mc_stats = self._estimate_values(inputs, prompt_ids, prompt_mask, completion_ids, boundaries)
        self._metrics[mode]["segments/time/mc_seconds"].append(time.perf_counter() - start)
        if mode == "train":
            self.count_generated(int(mc_stats["mc_tokens"]))
            self._metrics[mode]["tokens/generated"] = [self.generated_tokens]

        baseline = group_baseline if args.segment0_baseline == "group_mean" else None
        token_advantages = adv.chain_advantages(boundaries.start_values(values), final_rewards, segment_ids, baseline)
        self._finish(output, inputs, token_advantages, token_probs, segment_ids, final_rewards)
        lengths = seg.segment_lengths(segment_ids).float()
        metrics = self._metrics[mode]
        metrics["segments/per_completion"].append(seg.num_segments(segment_ids).float().mean().item())
        metrics["segments/mean_length"].append((lengths.sum() / (lengths > 0).sum().clamp(min=1)).item())
        metrics["segments/policy_tokens"].append(completion_mask.sum().item())
        for name, value in mc_stats.items():
            metrics[f"segments/{name}"].append(value)
        return output

    def _finish(self, output, inputs, token_advantages, token_probs, segment_ids, final_rewards) -> None:
        """Apply the probability mask and whitening, and put advantages and mask where TRL's loss reads them."""
        args, mode = self.args, "train" if self.model.training else "eval"
        completion_mask = output["completion_mask"].bool()
        loss_mask, fell_back = adv.probability_mask(
            token_probs, completion_mask, args.cutpoint_threshold, enabled=args.use_prob_mask
        )
        self.last_example = self._example(inputs, output["completion_ids"], completion_mask, segment_ids,
                                          token_advantages * loss_mask, final_rewards)
        if args.whiten_advantages:
            moments = self.accelerator.reduce(adv.masked_moments(token_advantages, loss_mask), reduction="sum")
            token_advantages = adv.whiten(token_advantages, loss_mask, moments=moments)
        output["advantages"] = token_advantages * loss_mask
        output["tool_mask"] = loss_mask.long()
        output["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
        self._metrics[mode]["segments/masked_in_fraction"].append(
            (loss_mask.sum() / completion_mask.sum().clamp(min=1)).item()
        )
        self._metrics[mode]["segments/mask_fallback"].append(float(fell_back))

    def _example(self, inputs, completion_ids, completion_mask, segment_ids, advantages, final_rewards) -> dict:
        """One completion of the batch (the first with a non-zero advantage) for reports: its token pieces, segment
        ids and per-token advantages (before whitening, 0 outside the probability mask)."""
        nonzero = (advantages != 0).any(dim=1).nonzero()
        row = int(nonzero[0]) if len(nonzero) else 0
        keep = completion_mask[row]
        return {
            "prompt": inputs[row]["prompt"] if isinstance(inputs[row]["prompt"], str) else str(inputs[row]["prompt"]),
            "pieces": [self.processing_class.decode([t]) for t in completion_ids[row][keep].tolist()],
            "segment_ids": segment_ids[row][keep].tolist(),
            "advantages": advantages[row][keep].tolist(),
            "reward": float(final_rewards[row]),
        }

    @torch.no_grad()
    def _sampling_token_probs(self, output: dict[str, Any]) -> torch.Tensor:
        """p_t of each completion token at the sampling temperature, (B, T); reuses GRPO's log-probs if it has them."""
        logps = output.get("old_per_token_logps")
        if logps is None:
            input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            logps, _, _ = self._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, output["completion_ids"].size(1)
            )
            # These are exactly the log-probs the loss would otherwise recompute as "old" ones; keep them.
            output["old_per_token_logps"] = logps
        return logps.exp()

    def _estimate_values(self, inputs, prompt_ids, prompt_mask, completion_ids, boundaries) -> tuple[torch.Tensor, dict]:
        """Monte Carlo value of every boundary state: the mean reward of ``num_mc_samples`` continuations."""
        args, n = self.args, self.args.num_mc_samples
        states: dict[tuple[int, ...], int] = {}  # prefix token ids -> index of its unique state
        state_of_boundary, state_rows, state_prefix_len = [], [], []
        for row, prefix_len in zip(boundaries.row.tolist(), boundaries.prefix_length.tolist()):
            prompt = prompt_ids[row][prompt_mask[row].bool()].tolist()
            key = tuple(prompt + completion_ids[row, :prefix_len].tolist())
            if key not in states:
                states[key] = len(states)
                state_rows.append(row)
                state_prefix_len.append(prefix_len)
            state_of_boundary.append(states[key])
        prefixes = list(states)

        state_values, mc_tokens = [], 0
        for chunk_start in range(0, len(prefixes), max(1, args.mc_batch_size // n)):
            chunk = range(chunk_start, min(chunk_start + max(1, args.mc_batch_size // n), len(prefixes)))
            repeated = [list(prefixes[i]) for i in chunk for _ in range(n)]
            continuations, _ = self._generate_single_turn(repeated, None, {}, n)
            mc_tokens += sum(len(c) for c in continuations)
            scores = self._score_continuations(
                inputs, completion_ids, [state_rows[i] for i in chunk for _ in range(n)],
                [state_prefix_len[i] for i in chunk for _ in range(n)], continuations,
            )
            state_values.append(scores.view(-1, n).mean(dim=1))
        values = torch.cat(state_values) if state_values else torch.zeros(0)
        requested = len(state_of_boundary)
        stats = {
            "mc_states": float(len(prefixes)),
            "dedup_rate": (requested - len(prefixes)) / requested if requested else 0.0,
            "mc_tokens": float(mc_tokens),
        }
        index = torch.tensor(state_of_boundary, dtype=torch.long)
        return values[index].to(self.accelerator.device), stats

    def _score_continuations(self, inputs, completion_ids, rows, prefix_lens, continuations) -> torch.Tensor:
        """Reward of prefix + continuation for each rollout (weighted sum of the reward functions); a rollout that
        runs past ``max_completion_length`` without EOS, or that every reward function leaves unscored, gets 0."""
        full_ids = [completion_ids[row, :p].tolist() + list(cont) for row, p, cont in zip(rows, prefix_lens, continuations)]
        full_ids = [ids[: self.max_completion_length] for ids in full_ids]
        unfinished = torch.tensor([not any(t in self.eos_token_ids for t in ids) for ids in full_ids])
        completions = self.processing_class.batch_decode(full_ids, skip_special_tokens=True)
        if is_conversational(inputs[0]):
            completions = [[{"role": "assistant", "content": text}] for text in completions]
        prompts = [inputs[row]["prompt"] for row in rows]
        columns = {k: [inputs[row][k] for row in rows] for k in inputs[0] if k not in ("prompt", "completion")}
        scores = torch.zeros(len(rows), len(self.reward_funcs))
        for i, func in enumerate(self.reward_funcs):
            rewards = func(prompts=prompts, completions=completions, completion_ids=full_ids, **columns)
            scores[:, i] = torch.tensor([torch.nan if r is None else r for r in rewards], dtype=torch.float32)
        total = (scores * self.reward_weights.cpu()).nansum(dim=1)
        return total.masked_fill(unfinished | torch.isnan(scores).all(dim=1), 0.0)
