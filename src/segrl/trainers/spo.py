"""SPO on TRL: ``SPOConfig`` / ``SPOTrainer``, thin subclasses of ``GRPOConfig`` / ``GRPOTrainer``.

Segment Policy Optimization (Guo et al. 2025, arXiv 2505.23564), critic-free RL with Monte Carlo segment
advantages. ``spo_mode="chain"`` (short chains of thought):

1. Sample completions with GRPO's own generation path (HF ``generate`` or TRL's vLLM path) and score them.
2. Partition each completion. ``partition="cutpoint"`` (the paper): the probability p_t of each sampled token under
   the policy at the sampling temperature (TRL's log-probs are computed at that temperature); tokens with
   p_t < ``cutpoint_threshold`` (ρ = 0.9) are cutpoints, every ``cutpoint_interval``-th (k = 5) is kept, and a
   segment opens at each kept cutpoint. Ablations: ``partition="fixed"``, every ``segment_length`` tokens;
   ``partition="delimiter"``, at each ``delimiter`` of the decoded text (``newline``: one arith step per segment).
3. Value every segment-start state s_k = prompt + completion[:b_k] by Monte Carlo: ``num_mc_samples`` (N = 9 in the
   paper's GSM8K runs) continuations from s_k through the trainer's own generation path, each scored by the
   reward functions; V̂(s_k) = mean. A continuation that would run past ``max_completion_length`` (counted from the
   start of the completion) is truncated and scores 0. Identical states (the same prompt and prefix, e.g. two
   completions that share a beginning) are estimated once.
4. Advantages (:func:`segrl.advantages.chain_advantages`): A_k = V̂(s_{k+1}) − V̂(s_k), the last segment R − V̂(s_K).
   Segment 0, whose start is the bare prompt, gets A = 0 unless its first token is a kept cutpoint (then the prompt
   state is valued by MC) or ``segment0_baseline="group_mean"`` (the mean final reward of the prompt's completions,
   which are samples from that state, so it costs no rollout).

``spo_mode="tree"`` (long chains of thought): one tree per prompt (the sampler's group of ``num_generations``
copies of a prompt becomes one tree). Each node at depth d gets ``tree_branching[d]`` children (6-6-6 in the
paper); inner children are continuations of at most ``segment_length`` (M) tokens, the last level runs to the end;
a node's children are sampled together from its context, encoded once (:mod:`segrl.mc_rollouts`).
A child that ends with EOS is a leaf scored by the reward; one still unfinished at the last level, or cut by
``max_completion_length``, is a leaf with reward 0. Backup V(node) = mean of its children
(:func:`segrl.advantages.tree_values`), A(node) = V(node) − V(parent) (``tree_advantage="rloo"``), or divided by
the siblings' std (``"grpo"``). Sample reuse: every non-root node with A ≠ 0 is one training example, prompt =
the prompt and its ancestors' segments, completion = its own segment, all its tokens sharing A.

Both modes then apply the **probability mask** (``use_prob_mask``, on by default): only tokens with p_t < ρ keep
their advantage and enter the loss (and so the KL term); if a batch has none, all completion tokens are used.
Advantages are whitened over the tokens in the loss (``whiten_advantages``). The loss is TRL's (``loss_type``,
``epsilon``, ``beta`` ...) with (B, T) advantages, which ``GRPOTrainer`` accepts as they are. The mask reaches the
loss through TRL's ``tool_mask`` input, which the loss multiplies into ``completion_mask``: the one per-token
weight TRL's loss already supports.

Deviations from the paper and the released code, and why:
- The paper's loss is PPO-clip summed over tokens and averaged over sequences; here any TRL ``loss_type`` is used
  (default TRL's ``"dapo"``, token-level mean), so that SPO and the GRPO baseline share one loss and differ only in
  their advantages.
- Reward functions must be Python callables (TRL's signature); reward *models* are not supported for the MC
  scoring here, since TRL's reward-model path gathers across processes, which unequal MC batch sizes would break.
- MC continuations are sampled from the generation-time policy, in chunks of ``mc_batch_size`` sequences, each
  chunk capped at the room its shortest prefix leaves before ``max_completion_length`` (HF generation's
  ``max_new_tokens`` or the ``max_tokens`` TRL sends to vLLM). With HF generation each state is encoded once and
  its KV cache shared by its N samples (:mod:`segrl.mc_rollouts`; vLLM, continuous batching, lockstep runs, caches
  other than plain full-attention ones and a replaced ``_generate_single_turn`` get the state N times; vLLM's
  prefix caching then shares the prefix).
- Tree mode: vLLM on one process only (see Multi-process), and without TRL's vLLM importance-sampling correction
  (``vllm_importance_sampling_correction=False`` must be set): the examples' old log-probs are the trainer's, as
  in TRL without the correction. The optional replay buffer
  (``replay_iterations``, off by default) keeps up to ``replay_per_prompt`` examples per prompt of each earlier
  iteration, as the released code does. The number of examples varies from batch to batch; it is trimmed to a
  multiple of ``steps_per_generation``, which TRL splits it into. The buffer is saved in every checkpoint.

Multi-process (``accelerate launch``; docs/SCALING.md): each process samples and scores its slice of the global
batch, as TRL's GRPO does. Chain: the processes gather their segment-start states, deduplicate them over the global
batch (first occurrence in process order) and split the distinct states into contiguous blocks of equal size (±1);
each process rolls out its block and the values are all-gathered, so every distinct state is rolled out exactly
once. With vLLM, ZeRO-3 or FSDP (:attr:`~segrl.trainers.grpo.TokenCountingGRPOTrainer._generation_in_lockstep`)
the blocks are padded to equal size with a repeat whose rollouts are discarded (counted as generated tokens), since
there every process must make the same generate calls. The probability mask's fallback is decided over the global
batch, and whitening uses global moments; the ``segments/*`` metrics are global (sums or ratios of sums over
processes, times the slowest process's). Tree: each process grows the trees of its own prompts, so each process's
generation batch (``per_device_train_batch_size`` x ``steps_per_generation``) must hold whole groups of
``num_generations``; the number of training examples then differs between processes, which TRL's default
``loss_type="dapo"`` (normalised by the global token count) handles exactly, while per-process normalisations
weigh processes equally. Tree mode needs DDP or ZeRO-1/2 and HF generation (its generate and forward calls differ
between processes). Given the same completions and MC values, the advantages equal a single-process run's
(tests/test_multiprocess.py).

Metrics (under ``segments/``; chain): ``per_completion`` (mean segments per completion), ``mean_length`` (tokens),
``mc_states`` (states valued), ``dedup_rate`` (fraction of requested states that were duplicates), ``mc_tokens``
and ``policy_tokens`` (generated tokens), ``masked_in_fraction`` (completion tokens in the loss),
``mask_fallback`` (batches that fell back to all tokens), ``time/generation_seconds`` (GRPO's sampling and
scoring) and ``time/mc_seconds`` (TRL's ``step_time`` is the whole step, training included); ``tokens/generated`` (cumulative,
policy plus MC) is the cost axis shared with the GRPO baseline (:mod:`segrl.trainers.grpo`). Tree:
``tree_nodes``, ``tree_examples``, ``policy_tokens`` (all of the tree's tokens), ``mean_length``,
``masked_in_fraction`` and ``time/tree_seconds``.

Numerical guards: the base trainer's (:mod:`segrl.trainers.grpo`: rewards of the sampled completions, advantages,
loss, gradient), plus the rewards of Monte Carlo continuations and tree leaves: a reward function's NaN or ±inf
number stops the run in :meth:`SPOTrainer._score`, naming the function, the prompt and the continuation. That error
is raised on the process that scored it: the number of scoring calls differs between processes, so no collective can
sit there (the launcher then ends the other processes).
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate.utils import gather_object
from torch import nn
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import is_conversational
from trl.models import unwrap_model_for_generation
from trl.trainer.utils import pad, use_adapter

from segrl import advantages as adv
from segrl import guards
from segrl import segmentation as seg
from segrl.errors import UserError
from segrl.mc_rollouts import sample_continuations
from segrl.trainers.grpo import TokenCountingGRPOTrainer


@dataclass
class SPOConfig(GRPOConfig):
    """``GRPOConfig`` plus SPO's fields; every GRPO field (``num_generations``, ``temperature``, ``beta``,
    ``epsilon``, ``loss_type``, ``use_vllm`` ...) keeps its TRL meaning."""

    spo_mode: str = field(
        default="chain",
        metadata={"help": "'chain' (MC values at cutpoint boundaries of sampled completions) or 'tree' (trees of "
                  "fixed-length segments whose samples are the training data)."},
    )
    partition: str = field(
        default="cutpoint",
        metadata={"help": "'cutpoint': segments open at every k-th low-probability token (SPO); 'fixed': every "
                  "segment_length tokens; 'delimiter': at each `delimiter` in the text (ablations)."},
    )
    delimiter: str = field(
        default="newline",
        metadata={"help": "For partition='delimiter': 'newline', 'blank_line' or 'sentence' (arith: one step per line)."},
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
    replay_iterations: int = field(
        default=0,
        metadata={"help": "Tree mode: also train on the examples of the last this-many iterations (8 in the released "
                  "code; 0 = off); stale examples keep their generation-time log-probs, so the PPO ratio acts as an "
                  "importance weight."},
    )
    replay_per_prompt: int = field(
        default=32, metadata={"help": "Tree mode: at most this many examples per prompt per iteration are replayed."}
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
        choices = {"spo_mode": ("chain", "tree"), "partition": ("cutpoint", "fixed", "delimiter"),
                   "delimiter": tuple(seg.DELIMITERS),
                   "segment0_baseline": ("none", "group_mean"), "tree_advantage": ("rloo", "grpo")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"SPOConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("cutpoint_interval", "segment_length", "num_mc_samples", "mc_batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"SPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.tree_branching or min(self.tree_branching) < 1:
            raise UserError(f"SPOConfig.tree_branching must be positive integers, got {self.tree_branching}")
        if self.spo_mode == "tree" and self.use_vllm and self.vllm_importance_sampling_correction:
            raise UserError("SPO-tree with vLLM does not apply TRL's importance-sampling correction (its examples' "
                            "log-probs are the trainer's, not vLLM's): pass --no_vllm_importance_sampling_correction "
                            "to run it without")
        super().__post_init__()
        local_batch = self.per_device_train_batch_size * self.steps_per_generation
        if self.spo_mode == "tree" and local_batch % self.num_generations:
            # Each process grows the trees of the prompts it was given: a group split between processes would
            # become two trees of the same prompt (and the wrong rows would be taken as roots).
            raise UserError(
                f"SPO-tree needs whole groups on every process: per_device_train_batch_size x steps_per_generation "
                f"({local_batch}) must be a multiple of num_generations ({self.num_generations})"
            )


class SPOTrainer(TokenCountingGRPOTrainer):
    """``GRPOTrainer`` whose advantages are SPO's Monte Carlo segment advantages (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if any(isinstance(func, nn.Module) for func in self.reward_funcs):
            raise UserError("SPOTrainer scores Monte Carlo rollouts with Python reward functions only")
        if self.args.spo_mode == "tree" and self._generation_in_lockstep:
            raise UserError("SPO-tree on several processes needs DDP or DeepSpeed ZeRO-1/2 and HF generation: its "
                            "trees make different generate and forward calls on each process, which ZeRO-3, FSDP "
                            "and vLLM cannot run")
        self.last_example: dict | None = None  # one completion of the latest batch, with its advantages
        self._replay = deque(maxlen=self.args.replay_iterations)  # tree mode: earlier iterations' examples

    def checkpoint_state(self) -> dict:
        # The replay buffer: lists of JSON-able records (token ids, advantage, value, generation-time log-probs).
        return {**super().checkpoint_state(), "replay": list(self._replay)}

    def load_checkpoint_state(self, state: dict) -> None:
        super().load_checkpoint_state(state)
        self._replay = deque(state["replay"], maxlen=self.args.replay_iterations)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.args.spo_mode == "tree":
            return self._tree_batch(inputs)
        return self._chain_batch(inputs)

    def _chain_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        start = time.perf_counter()
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

        # p_t serves the cutpoints and the probability mask only; without both (GRPO reproduced by SPO, the fixed and
        # delimiter ablations without the mask) its forward pass is skipped.
        needs_probs = args.partition == "cutpoint" or args.use_prob_mask
        token_probs = self._sampling_token_probs(output) if needs_probs else None
        if args.partition == "cutpoint":
            segment_ids = seg.cutpoint_segments(token_probs, completion_mask, args.cutpoint_threshold, args.cutpoint_interval)
            estimate_at = seg.low_probability_mask(token_probs, completion_mask, args.cutpoint_threshold)
        elif args.partition == "fixed":
            segment_ids = seg.fixed_length_segments(completion_mask, args.segment_length)
            estimate_at = None
        else:
            segment_ids = seg.delimiter_segments_of_ids(self.processing_class, completion_ids, completion_mask,
                                                        args.delimiter)
            estimate_at = None
        boundaries = adv.chain_boundaries(segment_ids, estimate_at)

        generation_seconds = time.perf_counter() - start
        start = time.perf_counter()
        values, mc_stats = self._estimate_values(inputs, prompt_ids, prompt_mask, completion_ids, boundaries)
        mc_seconds = time.perf_counter() - start
        if mode == "train":
            mc_stats["mc_tokens"] = float(self.count_generated(int(mc_stats["mc_tokens"])))  # summed over processes
            self._metrics[mode]["tokens/generated"] = [self.generated_tokens]
        else:
            mc_stats["mc_tokens"] = self.accelerator.reduce(
                torch.tensor(mc_stats["mc_tokens"], device=device), "sum").item()

        baseline = group_baseline if args.segment0_baseline == "group_mean" else None
        token_advantages = adv.chain_advantages(boundaries.start_values(values), final_rewards, segment_ids, baseline)
        self._finish(output, inputs, token_advantages, token_probs, segment_ids, final_rewards)
        lengths = seg.segment_lengths(segment_ids).float()
        self._log_global(
            mode,
            ratios={"segments/per_completion": (seg.num_segments(segment_ids).sum().item(), len(segment_ids)),
                    "segments/mean_length": (lengths.sum().item(), (lengths > 0).sum().item())},
            totals={"segments/policy_tokens": completion_mask.sum().item()},
            maxima={"segments/time/generation_seconds": generation_seconds, "segments/time/mc_seconds": mc_seconds},
        )
        for name, value in mc_stats.items():  # already global
            self._metrics[mode][f"segments/{name}"].append(value)
        return output

    def _finish(self, output, inputs, token_advantages, token_probs, segment_ids, final_rewards) -> None:
        """Apply the probability mask and whitening, and put advantages and mask where TRL's loss reads them."""
        args, mode = self.args, "train" if self.model.training else "eval"
        completion_mask = output["completion_mask"].bool()
        loss_mask, fell_back = adv.probability_mask(
            token_probs, completion_mask, args.cutpoint_threshold, enabled=args.use_prob_mask
        )
        if args.use_prob_mask and self.accelerator.num_processes > 1:
            # Fall back to all tokens only when the *global* batch has no low-probability token, as one process
            # holding it would; a process without one then trains on none of its tokens.
            passed = self.accelerator.reduce(torch.tensor(float(not fell_back), device=completion_mask.device), "sum")
            if fell_back and passed.item() > 0:
                loss_mask, fell_back = torch.zeros_like(completion_mask), False
        self.last_example = self._example(inputs, output["completion_ids"], completion_mask, segment_ids,
                                          token_advantages * loss_mask, final_rewards)
        self._set_token_advantages(output, token_advantages, loss_mask, args.whiten_advantages)
        masked_in, tokens = loss_mask.sum().item(), completion_mask.sum().item()
        self._log_global(mode, ratios={"segments/masked_in_fraction": (masked_in, tokens)})
        self._metrics[mode]["segments/mask_fallback"].append(float(fell_back))  # the same on every process

    def _example(self, inputs, completion_ids, completion_mask, segment_ids, advantages, final_rewards) -> dict:
        """One completion of the batch (the first with a non-zero advantage) for reports: its token pieces, segment
        ids and per-token advantages (before whitening, 0 outside the probability mask)."""
        nonzero = (advantages != 0).any(dim=1).nonzero()
        row = int(nonzero[0]) if len(nonzero) else 0
        keep = completion_mask[row]
        return {
            "prompt": str(inputs[row]["prompt"]),
            "pieces": [self.processing_class.decode([t]) for t in completion_ids[row][keep].tolist()],
            "segment_ids": segment_ids[row][keep].tolist(),
            "advantages": advantages[row][keep].tolist(),
            "reward": float(final_rewards[row]),  # chain: the completion's reward; tree: the node's value V
        }

    def _sampling_token_probs(self, output: dict[str, Any]) -> torch.Tensor:
        """p_t of each completion token at the sampling temperature, (B, T); reuses GRPO's log-probs if it has them."""
        return self._sampling_logps(output).exp()

    def _pad_records(self, records: list[dict]) -> dict[str, Any]:
        """TRL's batch layout for tree examples: left-padded prompts, right-padded completions, and the records'
        generation-time log-probs as ``old_per_token_logps`` when they have them."""
        device, pad_id = self.accelerator.device, self._tokenizer.pad_token_id
        prompts = [torch.tensor(r["prompt_ids"]) for r in records]
        completions = [torch.tensor(r["completion_ids"]) for r in records]
        output = {
            "prompt_ids": pad(prompts, padding_value=pad_id, padding_side="left").to(device),
            "prompt_mask": pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left").to(device),
            "completion_ids": pad(completions, padding_value=pad_id, padding_side="right").to(device),
            "completion_mask": pad([torch.ones_like(c) for c in completions], padding_value=0,
                                   padding_side="right").to(device),
        }
        if all("logps" in r for r in records):
            logps = [torch.tensor(r["logps"], dtype=torch.float32) for r in records]
            output["old_per_token_logps"] = pad(logps, padding_value=0.0, padding_side="right").to(device)
        return output

    @torch.no_grad()
    def _reference_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Log-probs of the completion tokens under the reference model (the KL term), as GRPO computes them: the
        separate reference model, or the PEFT model with its adapter disabled."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        args = (input_ids, attention_mask, output["completion_ids"].size(1))
        batch_size = self.args.per_device_train_batch_size
        if self.ref_model is not None:
            return self._get_per_token_logps_and_entropies(self.ref_model, *args, batch_size=batch_size)[0]
        model = self.accelerator.unwrap_model(self.model)
        with use_adapter(model, adapter_name="ref" if "ref" in model.peft_config else None):
            return self._get_per_token_logps_and_entropies(self.model, *args, batch_size=batch_size)[0]

    def _estimate_values(self, inputs, prompt_ids, prompt_mask, completion_ids, boundaries) -> tuple[torch.Tensor, dict]:
        """Monte Carlo value of every boundary state: the mean reward of ``num_mc_samples`` continuations.

        Identical states are valued once over the global batch: the processes gather their distinct states, keep
        each state's first occurrence in process order, and split the result into contiguous blocks of equal size
        (±1); each process rolls out its block, and the values are all-gathered. Returns this process's boundary
        values and global statistics (``mc_tokens``: generated on this process)."""
        args, n, acc = self.args, self.args.num_mc_samples, self.accelerator
        # This process's states: key (prompt + completion prefix ids) -> (input row for the reward, completion prefix).
        local: dict[tuple[int, ...], tuple[dict, list[int]]] = {}
        keys = []
        for row, prefix_len in zip(boundaries.row.tolist(), boundaries.prefix_length.tolist()):
            prefix = completion_ids[row, :prefix_len].tolist()
            key = tuple(prompt_ids[row][prompt_mask[row].bool()].tolist() + prefix)
            keys.append(key)
            local.setdefault(key, (inputs[row], prefix))
        requested = len(keys)
        per_process = [list(local.items())]
        if acc.num_processes > 1:
            per_process = gather_object(per_process)  # one list per process, in process order
            requested = int(acc.reduce(torch.tensor(float(requested), device=acc.device), "sum").item())
        states: dict[tuple[int, ...], tuple[dict, list[int]]] = {}
        for items in per_process:
            for key, payload in items:
                states.setdefault(key, payload)
        # The same list on every process, shortest prefix first: a chunk of states with similar prefixes has about
        # the same room left before max_completion_length, which caps its rollouts.
        unique = sorted(states, key=lambda key: len(states[key][1]))
        index_of = {key: i for i, key in enumerate(unique)}
        # Contiguous blocks: process p values unique[block[p]:block[p + 1]].
        procs, me = acc.num_processes, acc.process_index
        block = [len(unique) * p // procs for p in range(procs + 1)]
        width = max(block[p + 1] - block[p] for p in range(procs))
        mine = list(range(block[me], block[me + 1]))
        if self._generation_in_lockstep and unique:  # same calls everywhere: pad with a repeat, rollouts discarded
            mine += [mine[0] if mine else 0] * (width - len(mine))

        own_values, mc_tokens, chunk = [], 0, max(1, args.mc_batch_size // n)
        for chunk_start in range(0, len(mine), chunk):
            batch = [unique[i] for i in mine[chunk_start : chunk_start + chunk]]
            # A continuation longer than the room left scores 0 (truncated) whatever it holds, so none is sampled
            # past the room of the chunk's shortest prefix (in lockstep: the largest room of the processes' chunks,
            # since their calls are one generate call, or must have the same length).
            room = self.max_completion_length - min(len(states[key][1]) for key in batch)
            if self._generation_in_lockstep:
                room = int(acc.reduce(torch.tensor(room, device=acc.device), "max").item())
            continuations = self._mc_rollouts([list(key) for key in batch], n, room)
            mc_tokens += sum(len(c) for c in continuations)
            payloads = [states[key] for key in batch for _ in range(n)]
            full_ids = [prefix + list(c) for (_, prefix), c in zip(payloads, continuations)]
            scores = self._score([row for row, _ in payloads], full_ids)
            own_values.append(scores.view(-1, n).mean(dim=1))
        own = block[me + 1] - block[me]
        values = torch.cat(own_values)[:own] if own_values else torch.zeros(0)
        if acc.num_processes > 1 and unique:
            padded = torch.zeros(width, device=acc.device)
            padded[:own] = values.to(acc.device)
            gathered = acc.gather(padded).view(procs, width).cpu()
            values = torch.cat([gathered[p, : block[p + 1] - block[p]] for p in range(procs)])
        stats = {
            "mc_states": float(len(unique)),
            "dedup_rate": (requested - len(unique)) / requested if requested else 0.0,
            "mc_tokens": float(mc_tokens),
        }
        index = torch.tensor([index_of[key] for key in keys], dtype=torch.long)
        return values[index].to(acc.device), stats

    def _mc_rollouts(self, states: list[list[int]], n: int, room: int) -> list[list[int]]:
        """``n`` continuations of each state, state-major, of at most ``room`` tokens. HF generation encodes each
        state once and shares its cache among its samples (:mod:`segrl.mc_rollouts`); vLLM, continuous batching,
        lockstep runs, a cache that cannot be shared and a replaced ``_generate_single_turn`` take
        ``_generate_single_turn``, the state repeated ``n`` times."""
        # Sharing stands in for TRL's own sampler only: one that replaced it (a subclass's, a test's stand-in) keeps
        # receiving every rollout.
        trl_sampler = getattr(self._generate_single_turn, "__func__", None) is GRPOTrainer._generate_single_turn
        if trl_sampler and not (self.use_vllm or self.use_transformers_continuous_batching
                                or self._generation_in_lockstep):
            with unwrap_model_for_generation(
                self.model_wrapped, self.accelerator, gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as model:
                continuations = sample_continuations(model, states, n, room, self.generation_config)
            if continuations is not None:
                return continuations
        with self._max_new_tokens(room):
            return self._generate_single_turn([state for state in states for _ in range(n)], None, {}, n)[0]

    def _score(self, rows: list[dict], full_ids: list[list[int]]) -> torch.Tensor:
        """Reward (weighted sum of the reward functions) of each completion ``full_ids[i]`` (token ids from the start
        of the completion) of the prompt in ``rows[i]``. A completion with no EOS within ``max_completion_length``
        (truncated), or that every reward function leaves unscored, gets 0."""
        full_ids = [ids[: self.max_completion_length] for ids in full_ids]
        unfinished = torch.tensor([not any(t in self.eos_token_ids for t in ids) for ids in full_ids])
        completions = self.processing_class.batch_decode(full_ids, skip_special_tokens=True)
        if is_conversational(rows[0]):
            completions = [[{"role": "assistant", "content": text}] for text in completions]
        prompts = [row["prompt"] for row in rows]
        columns = {k: [row[k] for row in rows] for k in rows[0] if k not in ("prompt", "completion")}
        scores = torch.zeros(len(rows), len(self.reward_funcs))
        for i, func in enumerate(self.reward_funcs):
            rewards = list(func(prompts=prompts, completions=completions, completion_ids=full_ids, **columns))
            self._check_mc_rewards(self.reward_func_names[i], rewards, prompts, completions)
            scores[:, i] = torch.tensor([torch.nan if r is None else r for r in rewards], dtype=torch.float32)
        total = (scores * self.reward_weights.cpu()).nansum(dim=1)
        return total.masked_fill(unfinished | torch.isnan(scores).all(dim=1), 0.0)

    def _check_mc_rewards(self, name: str, rewards: list, prompts: list, completions: list) -> None:
        """Stop the run if reward function ``name`` returned a NaN or ±inf number (None is fine) for a Monte Carlo
        continuation or tree leaf. Raised on this process alone: the number of scoring calls differs between
        processes, so no collective can sit here (the launcher ends the other processes)."""
        bad = [row for row, r in enumerate(rewards) if guards.is_nonfinite_number(r)]
        if bad:
            samples = [guards.describe_sample(prompts[row], completions[row],
                                              label=f"reward function {name!r} returned {rewards[row]} (not None) "
                                                    f"for continuation {row}:") for row in bad]
            raise guards.NumericalError(
                f"Step {self._guard_step}: a reward must be a finite number, or None for 'not applicable'; fix the "
                f"reward function (Monte Carlo / tree scoring):\n{guards.describe_samples(samples)}"
            )

    # ------------------------------------------------------------------------------------------------ SPO-tree

    @contextmanager
    def _max_new_tokens(self, limit: int):
        """Generate at most ``limit`` tokens per sequence inside the block, so that MC rollouts sample no token that
        could not count: HF generation's ``max_new_tokens``, or the cap TRL's vLLM path sends with each request."""
        target, name = ((self.vllm_generation, "max_completion_length") if self.use_vllm
                        else (self.generation_config, "max_new_tokens"))
        previous = getattr(target, name)
        setattr(target, name, limit)
        try:
            yield
        finally:
            setattr(target, name, previous)

    def _tree_batch(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        """Grow one tree per prompt, back the leaf rewards up, and turn every non-root node with A != 0 into a
        training example: prompt = the prompt and the node's ancestors' segments, completion = its own segment."""
        args, mode = self.args, "train" if self.model.training else "eval"
        start = time.perf_counter()
        roots = inputs[:: self.num_generations]  # the sampler repeats each prompt; a tree needs it once
        root_prompt_ids, _, _ = self._tokenize_prompts([row["prompt"] for row in roots])
        # Flat node arrays; nodes 0 .. len(roots) - 1 are the roots.
        parent, root_of = [-1] * len(roots), list(range(len(roots)))
        prefix, segment = [[] for _ in roots], [[] for _ in roots]  # completion tokens before / of each node
        leaf_reward = [float("nan")] * len(roots)
        to_score = []  # leaves that ended with EOS
        open_nodes = list(range(len(roots)))
        for depth, branching in enumerate(args.tree_branching):
            last = depth == len(args.tree_branching) - 1
            requests = [node for node in open_nodes for _ in range(branching)]
            contexts = [list(root_prompt_ids[root_of[n]]) + prefix[n] + segment[n] for n in open_nodes]
            continuations = []
            # Open nodes at this depth all hold depth x M completion tokens (a shorter segment ended the branch), so
            # the room left is the same for all: generating no more keeps every sampled token, and counted.
            room = self.max_completion_length - depth * args.segment_length
            cap = room if last else min(args.segment_length, room)
            per_call = max(1, args.mc_batch_size // branching)  # nodes per generate call, each with its children
            for chunk in range(0, len(contexts), per_call):  # node-major, as `requests`
                continuations += self._mc_rollouts(contexts[chunk : chunk + per_call], branching, cap)
            open_nodes = []
            for node, continuation in zip(requests, continuations):
                child_prefix = prefix[node] + segment[node]
                child = len(parent)
                parent.append(node)
                root_of.append(root_of[node])
                prefix.append(child_prefix)
                segment.append(list(continuation)[: self.max_completion_length - len(child_prefix)])
                ended = any(t in self.eos_token_ids for t in segment[child])
                truncated = len(child_prefix) + len(segment[child]) >= self.max_completion_length
                leaf_reward.append(float("nan") if not (ended or truncated or last) else 0.0)
                if ended:
                    to_score.append(child)
                elif not (truncated or last):
                    open_nodes.append(child)
        if to_score:
            rewards = self._score([roots[root_of[n]] for n in to_score], [prefix[n] + segment[n] for n in to_score])
            for node, reward in zip(to_score, rewards.tolist()):
                leaf_reward[node] = reward

        parent_t = torch.tensor(parent)
        values = adv.tree_values(parent_t, torch.tensor(leaf_reward))
        advantages = adv.tree_advantages(parent_t, values, args.tree_advantage)
        examples = [n for n in range(len(roots), len(parent)) if advantages[n] != 0 and segment[n]]
        if not examples:  # every node agrees with its parent: keep the first level (zero advantage, zero gradient)
            examples = [n for n in range(len(roots), len(parent)) if parent[n] < len(roots) and segment[n]]
        # One record per training example: prompt ids, completion ids, advantage, value, generation-time log-probs.
        records = [
            {"prompt_ids": list(root_prompt_ids[root_of[n]]) + prefix[n], "completion_ids": segment[n],
             "advantage": float(advantages[n]), "value": float(values[n]), "root": root_of[n],
             "shown": str(roots[root_of[n]]["prompt"]) + self.processing_class.decode(prefix[n])}
            for n in examples
        ]
        logps = self._sampling_logps(self._pad_records(records))
        for record, row_logps in zip(records, logps):
            record["logps"] = row_logps[: len(record["completion_ids"])].tolist()
        batch = records + [record for iteration in self._replay for record in iteration]
        if args.replay_iterations > 0:  # the released code's on-policy buffer: stale edges keep their old log-probs
            per_root, stored = {}, []
            for record in records:
                per_root[record["root"]] = per_root.get(record["root"], 0) + 1
                if per_root[record["root"]] <= args.replay_per_prompt:
                    stored.append(record)
            self._replay.append(stored)
        spg = args.steps_per_generation  # TRL splits the batch into this many equal steps
        batch = (batch * spg)[: max(spg, len(batch) - len(batch) % spg)]

        output = self._pad_records(batch)
        completion_mask = output["completion_mask"].bool()
        token_probs = output["old_per_token_logps"].exp() * completion_mask
        if self.beta != 0.0:
            output["ref_per_token_logps"] = self._reference_logps(output)
        advantage = torch.tensor([r["advantage"] for r in batch], device=completion_mask.device)
        token_advantages = advantage.unsqueeze(1) * completion_mask
        segment_ids = torch.where(completion_mask, 0, -1)
        # For the report's example: the prompt as the node saw it (question + its ancestors' segments), and V(node).
        self._finish(output, [{"prompt": r["shown"]} for r in batch], token_advantages, token_probs, segment_ids,
                     torch.tensor([r["value"] for r in batch]))

        tree_tokens = sum(len(s) for s in segment)
        if mode == "train":
            self.count_generated(tree_tokens)
        self._metrics[mode]["tokens/generated"] = [self.generated_tokens]
        leaf_values = [r for r in leaf_reward if r == r]  # not NaN
        self._log_global(
            mode,
            ratios={"reward": (sum(leaf_values), len(leaf_values)),
                    "segments/mean_length": (completion_mask.sum().item(), len(batch))},
            totals={"segments/tree_nodes": float(len(parent) - len(roots)),
                    "segments/tree_examples": float(len(records)),
                    "segments/replayed_examples": float(len(batch) - len(records)),
                    "segments/policy_tokens": float(tree_tokens)},
            maxima={"segments/time/tree_seconds": time.perf_counter() - start},
        )
        return output
