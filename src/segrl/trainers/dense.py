"""RL with dense (per-token) rewards on TRL: ``DenseRewardConfig`` / ``DenseRewardTrainer``, thin subclasses of
``GRPOConfig`` / ``GRPOTrainer``.

Yin et al. 2025 (arXiv 2501.02790), §2.3 and §4: the policy is trained with PPO on per-token rewards

    r_t = clip(r̃_t, −10, 10) − β (log π(y_t) − log π_ref(y_t)),   β = 0.01 (``kl_coef``, the k1 estimator),

where r̃_t comes from a dense reward source (:mod:`segrl.dense_rewards`: the segment reward model with its
normaliser and interpolation; DRLC's critic spans, :mod:`segrl.trainers.drlc`) plus, on the last completion
token, the weighted sum of TRL's reward functions (``reward_weights``; a holistic reward, or 0 to only log the task's reward). Advantages:

- ``advantage_estimator="gae"`` (the paper): PPO's critic, here called the *value model* V (a separate model,
  initialised from ``value_model_path`` or the policy's starting weights, with a fresh value head; "critic" in
  segrl means DRLC's span critic) read at the state before each token; GAE with γ = 1, λ = 0.95
  (:func:`segrl.advantages.gae`); V is fitted to the GAE returns with PPO's clipped value loss
  (:func:`segrl.losses.clipped_value_loss`, clip 0.25; the paper uses 0.2 for the bandit reward) for
  ``num_iterations`` epochs over the rollout batch in minibatches of ``per_device_train_batch_size``, with its own
  AdamW at ``value_learning_rate`` (9e-6 in the paper) and gradient clipping ``max_grad_norm``.
- ``advantage_estimator="group"`` (critic-free): return-to-go of the rewards minus a leave-one-out group baseline
  of the other completions' mean per-token reward, as PRIME does for implicit process rewards
  (:func:`segrl.advantages.dense_group_advantages`; needs ``num_generations`` ≥ 2).

Advantages are whitened over the batch's tokens (``whiten_advantages``); the policy loss is TRL's (``loss_type``,
``epsilon`` = PPO-clip 0.2, ...) on (B, T) advantages, which ``GRPOTrainer`` accepts as they are. TRL's own KL term
stays off (``beta`` must be 0): the KL is inside the reward, as in the paper.

Deviations from the paper, and why:
- The policy loss is any TRL ``loss_type`` (default TRL's); the paper uses PPO's token-level clipped loss.
  ``loss_type="dapo"`` is that loss up to the normalisation constant.
- The value model is updated when the batch is generated, before the policy's updates on it; PPO updates both on the
  same minibatches. The two networks share nothing, so only the order of independent updates differs.
- The reference model is a frozen copy of the policy's starting weights (or the PEFT model with its adapter
  disabled) that also gives the segmenter its entropies, so the reward model's segments cost no extra model.

A row whose dense or holistic reward is NaN is skipped (zero advantage, out of the loss and of the value model's
targets) and counted in ``dense/skipped_rows``: NaN is a source's "no reward for this row", and a holistic reward is
NaN only where a reward function returned None.

Numerical guards (docs/NUMERICAL_GUARDS.md): the base trainer's (:mod:`segrl.trainers.grpo`: a reward function's
NaN/±inf number, non-finite advantages or loss stop the run; a non-finite gradient norm skips the step), plus: a
dense source's ±inf stops the run naming the source and the rows (the reward clip would silently make it ±10);
non-finite KL-shaped rewards (policy or reference log-probs) or value-model values stop it, the latter before the
value model is fitted to them; the value model's own optimizer step is skipped on a non-finite loss or gradient norm
(counted in ``guards/value_skipped_steps``; 3 in a row stop the run), a decision reduced over processes.

Multi-process (``accelerate launch``; docs/SCALING.md): each process scores, values and shapes the rewards of its
slice of the global batch. The value model is wrapped for data parallelism (DDP by ``accelerate``; under DeepSpeed
ZeRO-1/2, which leaves a model outside its engine alone, torch's DDP; sharded under FSDP 2): each process fits its
own rows, all making the same number of minibatch steps, and each process's token-mean loss is weighted by its
share of the minibatch's tokens, so that the averaged gradient is the gradient of the token mean over all processes.
The critic-free baseline gathers the rewards of the global batch (a prompt's group may span processes) and keeps
this process's rows. Whitening uses moments summed over processes; the ``dense/*`` and ``value/*`` metrics are
global (sums or ratios of sums), a source's own per-batch metrics are averaged over processes. The main process
saves the value model (under FSDP its shards are gathered first). DeepSpeed ZeRO-3 is refused: the reference copy
and the value model would be partitioned models outside DeepSpeed's engine.

Checkpoints (:mod:`segrl.trainers.resumable`) hold the value model (``value_model.safetensors``), its AdamW state and
its skip counts besides the policy's, so that ``--resume`` continues PPO where it stopped.

Metrics: ``dense/reward`` (mean summed dense reward per completion), ``dense/kl`` (mean k1 per token),
``dense/skipped_rows``, the source's metrics (``segments/*``, ``critic/*``), and with a value model ``value/loss``,
``value/clipfrac``, ``value/explained_variance``.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate.utils import gather_object, is_peft_model
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from trl import GRPOConfig
from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, use_adapter

from segrl import advantages as adv
from segrl import guards
from segrl.dense_rewards import Rollout
from segrl.errors import UserError
from segrl.losses import clipped_value_loss
from segrl.scoring import completion_entropies_and_logps, completion_token_scores
from segrl.shaping import kl_shaped_rewards
from segrl.trainers.grpo import TokenCountingGRPOTrainer

logger = logging.getLogger(__name__)

ESTIMATORS = ("gae", "group")
VALUE_WEIGHTS, VALUE_OPTIMIZER = "value_model.safetensors", "value_optimizer.pt"  # in each checkpoint
INTERPOLATIONS = ("even", "last", "broadcast")


@dataclass
class DenseRewardConfig(GRPOConfig):
    """``GRPOConfig`` plus the dense-reward fields; every GRPO field keeps its TRL meaning (``beta`` must stay 0)."""

    reward_model: str | None = field(
        default=None, metadata={"help": "Directory of a segment reward model from `segrl train rm` (the dense source)."}
    )
    normalizer: str | None = field(
        default=None, metadata={"help": "JSON from `segrl fit-normalizer` (location-aware or global); none = raw."}
    )
    interpolation: str = field(
        default="even",
        metadata={"help": "Segment reward -> tokens: 'even' (split evenly), 'last' (on the last token), 'broadcast'."},
    )
    kl_coef: float = field(default=0.01, metadata={"help": "β of the k1 KL penalty inside the per-token reward."})
    reward_clip: float = field(default=10.0, metadata={"help": "Per-token rewards are clipped to ±reward_clip."})
    advantage_estimator: str = field(
        default="gae", metadata={"help": "'gae' (PPO with a critic, the paper) or 'group' (critic-free, PRIME)."}
    )
    gamma: float = field(default=1.0, metadata={"help": "Discount γ (GAE and return-to-go)."})
    lam: float = field(default=0.95, metadata={"help": "GAE λ."})
    value_model_path: str | None = field(
        default=None, metadata={"help": "Value model's starting weights (a causal-LM directory); default: the policy's."}
    )
    value_learning_rate: float = field(default=9e-6, metadata={"help": "Value model's AdamW learning rate."})
    value_clip: float = field(default=0.25, metadata={"help": "PPO value clipping (0.2 in the paper's bandit runs)."})
    whiten_advantages: bool = field(default=True, metadata={"help": "Whiten advantages over the batch's tokens."})

    def __post_init__(self):
        if self.advantage_estimator not in ESTIMATORS:
            raise UserError(f"DenseRewardConfig.advantage_estimator must be one of {ESTIMATORS}, "
                            f"got {self.advantage_estimator!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise UserError(f"DenseRewardConfig.interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}")
        if self.beta != 0:
            raise UserError("DenseRewardConfig: the KL penalty is in the reward (kl_coef); leave TRL's beta at 0")
        for name in ("reward_clip", "value_clip", "value_learning_rate"):
            if not getattr(self, name) > 0:
                raise UserError(f"DenseRewardConfig.{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.lam <= 1 or not 0 <= self.gamma <= 1:
            raise UserError(f"DenseRewardConfig: gamma and lam must lie in [0, 1], got {self.gamma}, {self.lam}")
        super().__post_init__()


class DenseRewardTrainer(TokenCountingGRPOTrainer):
    """``GRPOTrainer`` whose advantages come from dense per-token rewards (see the module docstring).

    Args (besides ``GRPOTrainer``'s):
        dense_rewards: a dense reward source (:mod:`segrl.dense_rewards`), or None for holistic rewards only.
        value_model: V for ``advantage_estimator="gae"`` (default: built from ``value_model_path`` or the
            policy's starting weights by :func:`segrl.segment_rm.new_reward_model`).
    """

    def __init__(self, model, reward_funcs, args: DenseRewardConfig, *rest, dense_rewards=None, value_model=None,
                 **kwargs):
        # The reference is copied before TRL prepares the policy: accelerate then sets a wrapped ``forward`` on the
        # instance, and a later deep copy would keep calling the trained policy's forward (a KL of 0 forever).
        reference = None
        if isinstance(model, str):
            model = create_model_from_path(model, **(args.model_init_kwargs or {}))
        if not is_peft_model(model) and kwargs.get("peft_config") is None:  # else: the adapter turned off
            reference = copy.deepcopy(model).eval().requires_grad_(False)
        super().__init__(model, reward_funcs, args, *rest, **kwargs)
        plugin = getattr(self.accelerator.state, "deepspeed_plugin", None)
        if self.is_deepspeed_enabled and plugin is not None and plugin.zero_stage == 3:
            # The policy is loaded partitioned (zero.Init); its reference copy and the value model would be
            # partitioned models outside DeepSpeed's engine, with empty weights.
            raise UserError("The dense trainer does not run under DeepSpeed ZeRO-3 (its reference and value models "
                            "live outside DeepSpeed's engine): use ZeRO-1/2 or FSDP")
        self.reference = reference.to(self.accelerator.device) if reference is not None else None
        self.dense_rewards = dense_rewards
        policy = self.accelerator.unwrap_model(self.model)
        self.value_model = self.value_optimizer = None
        self.value_skip_counter = guards.SkipCounter(self.max_consecutive_skips)
        if self.args.advantage_estimator == "gae":
            if value_model is None:
                from segrl.segment_rm import new_reward_model

                source = self.args.value_model_path or policy.config._name_or_path
                value_model = new_reward_model(source, "bandit", None, seed=self.args.seed, bias=True)
            if self.args.disable_dropout:
                disable_dropout_in_model(value_model)
            acc = self.accelerator
            if acc.is_fsdp2:
                # accelerate's prepare_model refuses FSDP2. fsdp2_prepare_model shards the model; with
                # fsdp_cpu_ram_efficient_loading, transformers loaded it on the meta device on every process but
                # the first (it was loaded after the process group started), and it gets the first one's weights.
                from accelerate.utils.fsdp_utils import fsdp2_prepare_model

                self.value_model = fsdp2_prepare_model(acc, value_model.train())
            elif self.is_deepspeed_enabled and acc.num_processes > 1:
                # accelerate leaves a model outside DeepSpeed's engine unwrapped, and its gradients would not be
                # averaged: torch's DDP does that, as accelerate's own wrapping does without DeepSpeed.
                value_model = value_model.to(acc.device).train()
                self.value_model = torch.nn.parallel.DistributedDataParallel(
                    value_model, device_ids=[acc.local_process_index] if acc.device.type == "cuda" else None)
            else:
                self.value_model = acc.prepare_model(value_model.to(acc.device).train())
            self.value_optimizer = torch.optim.AdamW(self.value_model.parameters(), lr=self.args.value_learning_rate)

    @torch.no_grad()
    def _reference_entropies_and_logps(self, input_ids, attention_mask, num_completion_tokens):
        batch_size = self.args.per_device_train_batch_size
        args = (input_ids, attention_mask, num_completion_tokens, self.temperature, batch_size)
        if self.reference is not None:
            return completion_entropies_and_logps(self.reference, *args)
        model = self.accelerator.unwrap_model(self.model)
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            return completion_entropies_and_logps(model, *args)

    def _holistic_rewards(self, batch_size: int) -> torch.Tensor:
        """(B,) weighted sum of TRL's reward functions for this process's rows; NaN when a weighted one is missing."""
        local = slice(self.accelerator.process_index * batch_size, (self.accelerator.process_index + 1) * batch_size)
        rewards_per_func = self._last_rewards_per_func[local]
        weights = self.reward_weights.to(rewards_per_func.device)
        weighted = weights != 0
        rewards = (rewards_per_func[:, weighted] * weights[weighted]).sum(dim=1)
        return rewards

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output = super()._generate_and_score_completions(inputs)
        args, mode = self.args, "train" if self.model.training else "eval"
        prompt_ids, prompt_mask = output["prompt_ids"], output["prompt_mask"]
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        mask = completion_mask.bool()
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        num_tokens = completion_ids.shape[1]

        entropy, ref_logps = self._reference_entropies_and_logps(input_ids, attention_mask, num_tokens)
        logps = self._sampling_logps(output)
        token_rewards = torch.zeros_like(logps)
        holistic = self._holistic_rewards(len(inputs))
        if self.dense_rewards is not None:
            rollout = Rollout(
                prompts=[x["prompt"] for x in inputs],
                completions=self.processing_class.batch_decode(
                    [ids[keep].tolist() for ids, keep in zip(completion_ids, mask)], skip_special_tokens=True
                ),
                prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids,
                completion_mask=completion_mask, reference_entropy=entropy, eos_token_ids=list(self.eos_token_ids),
                holistic_rewards=holistic,
            )
            token_rewards = self.dense_rewards(rollout).to(logps.device).masked_fill(~mask, 0.0)
            self._log_source_metrics(mode)
            # NaN is the sources' "skip this row"; ±inf is a bug that the reward clip would silently turn into ±10.
            self._stop_if_nonfinite_rows(f"dense rewards (±inf) from {type(self.dense_rewards).__name__}",
                                         token_rewards.masked_fill(torch.isnan(token_rewards), 0.0), mask, output)
        last = (mask.long().cumsum(dim=1) == mask.sum(dim=1, keepdim=True)) & mask
        token_rewards = token_rewards + last * holistic.nan_to_num(0.0)[:, None]

        skipped = torch.isnan(token_rewards).any(dim=1) | torch.isnan(holistic)
        loss_mask = mask & ~skipped[:, None]
        token_rewards = token_rewards.nan_to_num(0.0)
        rewards = kl_shaped_rewards(token_rewards, logps, ref_logps, loss_mask, beta=args.kl_coef, clip=args.reward_clip)
        self._stop_if_nonfinite_rows("KL-shaped rewards (policy or reference log-probs)", rewards, loss_mask, output)

        if args.advantage_estimator == "gae":
            advantages = self._gae_and_value_update(input_ids, attention_mask, num_tokens, rewards, loss_mask, mode,
                                                    output)
        else:
            advantages = self._group_advantages(rewards, loss_mask)
        self._set_token_advantages(output, advantages, loss_mask, args.whiten_advantages)

        kept = loss_mask.any(dim=1)
        self._log_global(
            mode,
            ratios={"dense/reward": ((token_rewards * loss_mask).sum(dim=1)[kept].sum().item(), kept.sum().item()),
                    "dense/kl": (((logps - ref_logps) * loss_mask).sum().item(), loss_mask.sum().item())},
            totals={"dense/skipped_rows": skipped.sum().item()},
        )
        return output

    def _log_source_metrics(self, mode: str) -> None:
        """Move the dense source's own metrics (per-batch values) into the trainer's, averaged over processes."""
        source = getattr(self.dense_rewards, "metrics", {})
        names = sorted(source)
        if self.accelerator.num_processes > 1:  # a source may log a name on some processes only
            names = sorted(set(gather_object(names)))
        self._log_global(mode, ratios={name: (sum(source.get(name, [])), len(source.get(name, []))) for name in names})
        for values in source.values():
            values.clear()

    def _group_advantages(self, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The critic-free advantages of this process's rows, computed over the global batch: TRL's sampler keeps
        a prompt's ``num_generations`` completions together in the global batch, not on one process."""
        acc, gamma = self.accelerator, self.args.gamma
        if acc.num_processes == 1:
            advantages = adv.dense_group_advantages(rewards, mask, self.num_generations, gamma=gamma)
            return advantages.masked_fill(~mask, 0.0)
        rows, width = rewards.shape
        all_rewards = acc.gather(acc.pad_across_processes(rewards, dim=1))  # right-padded, as completions are
        all_mask = acc.gather(acc.pad_across_processes(mask.long(), dim=1)).bool()
        advantages = adv.dense_group_advantages(all_rewards, all_mask, self.num_generations, gamma=gamma)
        local = slice(acc.process_index * rows, (acc.process_index + 1) * rows)
        return advantages[local, :width].masked_fill(~mask, 0.0)

    def _gae_and_value_update(self, input_ids, attention_mask, num_tokens, rewards, mask, mode,
                              output: dict[str, Any]) -> torch.Tensor:
        """GAE advantages from the value model's values at rollout time, then its fit to the returns. Non-finite
        values stop the run before the value model is fitted to them."""
        args, batch_size = self.args, self.args.per_device_train_batch_size
        with torch.no_grad():
            old_values = completion_token_scores(self.value_model, input_ids, attention_mask, num_tokens, shift=1,
                                                 batch_size=batch_size)
        self._stop_if_nonfinite_rows("value-model values", old_values, mask, output)
        advantages, returns = adv.gae(rewards, old_values, mask, gamma=args.gamma, lam=args.lam)
        if mode == "train":
            self._fit_value_model(input_ids, attention_mask, num_tokens, old_values, returns, mask)
        # 1 - var(residual) / var(target) over the global batch's tokens, from moments summed over processes.
        moments = torch.cat([adv.masked_moments(returns - old_values, mask), adv.masked_moments(returns, mask)])
        if self.accelerator.num_processes > 1:
            moments = self.accelerator.reduce(moments, "sum")
        count, residual_sum, residual_squares, _, target_sum, target_squares = moments.cpu().tolist()
        if count > 1:
            residual_var = (residual_squares - residual_sum**2 / count) / (count - 1)
            target_var = (target_squares - target_sum**2 / count) / (count - 1)
            self._metrics[mode]["value/explained_variance"].append(1 - residual_var / max(target_var, 1e-8))
        return advantages

    def _fit_value_model(self, input_ids, attention_mask, num_tokens, old_values, returns, mask) -> None:
        args, acc, stats = self.args, self.accelerator, []
        self.value_model.train()
        for _ in range(args.num_iterations):
            for rows in torch.randperm(input_ids.shape[0]).split(args.per_device_train_batch_size):
                values = completion_token_scores(self.value_model, input_ids[rows], attention_mask[rows], num_tokens, shift=1)
                loss, clip_fraction = clipped_value_loss(values, old_values[rows], returns[rows], mask[rows],
                                                         args.value_clip)
                tokens = mask[rows].sum().float()
                if acc.num_processes > 1:
                    # DDP averages the processes' gradients; weighting each token mean by its share of the
                    # minibatch's tokens makes that average the gradient of the token mean over all processes.
                    # (Every process makes the same number of minibatch steps, so the collectives pair up.)
                    share = tokens * acc.num_processes / acc.reduce(tokens.to(acc.device), "sum").clamp(min=1)
                    loss_for_gradient = loss * share.to(loss.device)
                else:
                    loss_for_gradient = loss
                self.value_optimizer.zero_grad(set_to_none=True)
                loss_for_gradient.backward()
                norm = torch.nn.utils.clip_grad_norm_(self.value_model.parameters(), args.max_grad_norm or math.inf)
                self._value_step(loss, norm)
                stats.append([loss.item() * tokens.item(), clip_fraction.item() * tokens.item(), tokens.item()])
        # Token means over all processes, minibatch by minibatch: one collective.
        stats = torch.tensor(stats, dtype=torch.float64, device=acc.device).view(-1, 3)
        if acc.num_processes > 1:
            stats = acc.reduce(stats, "sum")
        count = stats[:, 2].clamp(min=1)
        self._metrics["train"]["value/loss"].extend((stats[:, 0] / count).tolist())
        self._metrics["train"]["value/clipfrac"].extend((stats[:, 1] / count).tolist())

    def _value_step(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """The value model's optimizer step, skipped (gradients set to None, parameters and AdamW state untouched)
        when its loss or gradient norm is not finite on any process; counted in ``guards/value_skipped_steps``, and
        ``max_consecutive_skips`` in a row stop the run. A collective: every process makes the same minibatch steps."""
        bad = not (guards.is_finite(loss) and guards.is_finite(grad_norm))
        reason = f"value-model loss {loss.item()}, gradient norm {float(grad_norm)}" if bad else ""
        skip = self._any_process(bad)
        if skip:
            self.value_optimizer.zero_grad(set_to_none=True)
            logger.warning("Step %d: %s; value-model optimizer step skipped", self._guard_step,
                           reason or "non-finite value-model loss or gradient on another process")
        else:
            self.value_optimizer.step()
        self.value_skip_counter.limit = self.max_consecutive_skips
        try:
            self.value_skip_counter.record(skip, self._guard_step, f"value model: {reason}")
        finally:
            self._metrics["train"]["guards/value_skipped_steps"] = [float(self.value_skip_counter.total)]

    # ---- checkpoints (segrl.trainers.resumable): the value model, its optimizer and its skip counts

    def checkpoint_state(self) -> dict:
        return {**super().checkpoint_state(), "value_skipped_steps": self.value_skip_counter.state()}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self.value_skip_counter.restore(state["value_skipped_steps"])

    def save_checkpoint_files(self, folder: Path) -> None:
        super().save_checkpoint_files(folder)
        if self.value_model is None:
            return
        if self.is_fsdp_enabled:  # gather the shards of the weights and of AdamW's state: every process takes part
            weights, optimizer = get_state_dict(self.value_model, self.value_optimizer,
                                                options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if self.args.should_save:
                safetensors.torch.save_file(weights, str(folder / VALUE_WEIGHTS))
                torch.save(optimizer, folder / VALUE_OPTIMIZER)
        elif self.args.should_save:
            safetensors.torch.save_model(self.accelerator.unwrap_model(self.value_model), str(folder / VALUE_WEIGHTS))
            torch.save(self.value_optimizer.state_dict(), folder / VALUE_OPTIMIZER)

    def load_checkpoint_files(self, folder: Path) -> None:
        super().load_checkpoint_files(folder)
        if self.value_model is None:
            return
        if not (folder / VALUE_WEIGHTS).is_file():
            raise UserError(f"{folder} has no {VALUE_WEIGHTS}: it was not written by a GAE run")
        # Read onto the CPU; loading copies the tensors to the parameters' devices.
        optimizer = torch.load(folder / VALUE_OPTIMIZER, weights_only=True, map_location="cpu")
        if self.is_fsdp_enabled:  # every process reads the whole state and keeps its shards
            set_state_dict(self.value_model, self.value_optimizer,
                           model_state_dict=safetensors.torch.load_file(str(folder / VALUE_WEIGHTS)),
                           optim_state_dict=optimizer, options=StateDictOptions(full_state_dict=True))
        else:
            safetensors.torch.load_model(self.accelerator.unwrap_model(self.value_model), str(folder / VALUE_WEIGHTS))
            self.value_optimizer.load_state_dict(optimizer)

    def save_value_model(self, path) -> None:
        """Save the value model (safetensors) next to the policy, e.g. to resume or inspect its values. Every process
        calls it (FSDP gathers the shards); the main one writes."""
        if self.value_model is not None:
            state_dict = self.accelerator.get_state_dict(self.value_model)  # gathers FSDP shards: every process
            if self.args.should_save:
                self.accelerator.unwrap_model(self.value_model).save_pretrained(path, state_dict=state_dict,
                                                                                safe_serialization=True)
