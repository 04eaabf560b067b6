"""Advantage estimators: SPO's segment advantages (chain and tree), its probability mask, whitening, GRPO's, and
per-token estimators for dense rewards (return-to-go, GAE, PRIME's leave-one-out group baseline).

Pure functions on tensors, vectorised over the batch, with no trainer or model state. An ``SPOTrainer`` (a subclass
of TRL's ``GRPOTrainer``) hands their (B, T) per-token advantages and per-token mask to TRL's loss, which unsqueezes
only (B,) advantages and so takes (B, T) ones as they are.

SPO, Segment Policy Optimization (Guo et al. 2025, arXiv 2505.23564; released code: AIFrameResearch/SPO, a fork of
VinePPO's ``treetune``). Critic-free: each segment gets a Monte Carlo advantage.

**SPO-chain** (:func:`chain_boundaries`, :func:`chain_advantages`). Cut a completion into segments at kept cutpoints
(:func:`segrl.segmentation.cutpoint_segments`: tokens with p < 0.9 at the sampling temperature, every 5th kept). The
boundary state of segment k is ``s_k = prompt + completion[:b_k]``, b_k the position of its first token; its value
V̂(s_k) is the mean reward of N continuations sampled from s_k (N = 9 in the paper's GSM8K runs). Then::

    A_k = V̂(s_{k+1}) - V̂(s_k)         for every segment but the row's last,
    A_K = R - V̂(s_K)                  for the last, R the completion's own final reward.

All tokens of a segment share A_k; worked example from the paper: values 2/3 then 1/3 give A = -1/3. Segment 0 starts
at a kept cutpoint only when the first completion token is low-probability; otherwise its start (the bare prompt) is
not estimated and segment 0 gets A = 0, as in the released code. Option ``segment0_baseline``: use instead a baseline
for the prompt state, the natural one being the mean final reward of the prompt's group of completions
(:func:`group_means`): those completions *are* samples from the prompt state, so it costs no rollout (it includes the
completion's own reward, as GRPO's baseline does). A completion with no cutpoint is one segment with no estimated
boundary: A = 0 everywhere, or R - baseline with the option (then equal to GRPO's advantage without std scaling,
``group_advantages(..., scale_rewards="none")``).

**SPO-tree** (:func:`tree_values`, :func:`tree_advantages`). Trees of segments (depth 3, branching 6-6-6 in the
paper) as flat node arrays: ``parent`` (N,) long, -1 on roots. Backup: V(leaf) = its reward, V(node) = mean of its
children's V. Advantage of a non-root node: A(n) = V(n) - V(parent(n)), i.e. V(n) minus the mean of its siblings
*including itself*; worked example: children 1, 2/3, 0 give V(parent) = 5/9 and A = 4/9 for the first child.

**Probability mask** (:func:`probability_mask`, on by default for SPO): only tokens with p < rho = 0.9 under the
sampling-time policy keep their advantage and enter the policy loss, the whitening statistics and the KL term.

**Whitening** (:func:`masked_moments`, :func:`whiten`): (A - mean) / (std + 1e-8) over the masked-in tokens.

**GRPO** (:func:`group_advantages`, :func:`group_means`): TRL 1.16's group advantage, for baselines and cross-checks.

Matches with, and deviations from, the paper and the released code (the released source is not in our reference
index; we read its ``TreeEpisodeUtils.extract_edges_from_tree``, its ``compute_tree_update_values`` and treetune's
``PPOTrainer._compute_actor_loss`` through third-party ports that state they copy them, and VinePPO's
``treetune/trainers/utils.py`` directly):

- Tree ``mode="rloo"`` is what the released ``adv_method="rloo"`` computes: ``child_reward - parent_reward``. Despite
  its name this is *not* leave-one-out (the sibling mean includes the node itself); we keep the name so that
  configs carry over. A true leave-one-out baseline would scale it by n / (n - 1) for n siblings.
- Tree ``mode="grpo"``: the released code computes ``(child_reward - parent_reward) / (parent_reward_std + 1e-8)``
  with a std stored on the parent; which std we could not see. We use the population std (ddof 0) of the siblings'
  values, the natural companion of V(parent) being their plain mean, and eps = 1e-8 as released. When the siblings'
  std is 0 the advantage is set to exactly 0 (the released formula gives 0 / 1e-8 = 0 too when values are exact,
  but rounding in a mean of equal floats could leave a spurious ±1e-9-ish numerator).
- The released tree code keeps only edges with a non-zero advantage as training examples
  (``only_adv_greater_than_zero``, which tests ``!= 0``); selecting them is the trainer's job.
- Chain: a segment whose end value is missing (possible only with a partition whose middle boundaries are not all
  estimated, e.g. a custom ``estimate_at``) gets A = 0, like one with a missing start value. Rewards or values that
  are NaN (unscorable) likewise give A = 0, as TRL does for unscorable completions.
- Probability mask: the released loss keeps tokens with ``exp(old_logp) < 0.9`` (strict), i.e.
  :func:`segrl.segmentation.low_probability_mask`. The fallback (a batch with no low-probability token uses every
  completion token) is the spec's addition; the released code has none.
- Whitening: VinePPO's ``masked_whiten`` computes (A - mean) * rsqrt(var + 1e-8) with the population variance; we use
  (A - mean) / (std + 1e-8), also population. They differ only when the std is below about 1e-3. Statistics are
  global across processes when the trainer all-reduces :func:`masked_moments` (as treetune's
  ``get_global_statistics_no_move`` all-reduces sum and count).
- :func:`group_advantages` reproduces ``GRPOTrainer._generate_and_score_completions`` in TRL 1.16 (grpo_trainer.py
  lines 2765-2787 and 2810, ``multi_objective_aggregation="sum_then_normalize"``): NaN-aware group mean,
  Bessel-corrected std (``trl.trainer.utils.nanstd``), ``/ (std + 1e-4)``, NaN advantages set to 0.

**Dense per-token rewards** (the segment reward model's RL, Yin et al. 2025, arXiv 2501.02790; rewards from
:func:`segrl.shaping.kl_shaped_rewards`). Every estimator takes (B, T) rewards and a (B, T) ``mask``, True on the
completion tokens, whose True positions in a row are contiguous (right padding, or a prompt+completion layout with
the prompt False), as everywhere in segrl; the outputs are 0 off the mask, and rewards and values there are ignored
(even NaN). A NaN reward on the mask spreads to the earlier tokens of its row (and, in
:func:`dense_group_advantages`, to its group): drop an unscorable completion by masking it out entirely.

- :func:`returns_to_go`: G_t = Σ_{s≥t} γ^{s-t} r_s over the row's completion tokens.
- :func:`gae`, for PPO with a critic (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized
  Advantage Estimation", arXiv 1506.02438, eq. 16): δ_t = r_t + γ V_{t+1} - V_t, with V = 0 after the last
  completion token (the episode ends there, so nothing is bootstrapped), and A_t = Σ_l (γλ)^l δ_{t+l}, i.e.
  A_t = δ_t + γλ A_{t+1}; the critic's target is A_t + V_t. The segment-RM paper's PPO uses γ = 1, λ = 0.95 (the
  defaults). With λ = 1, A_t + V_t is the return-to-go.
- :func:`dense_group_advantages`, the critic-free option: PRIME's return with a leave-one-out baseline (Cui et al.
  2025, "Process Reinforcement through Implicit Rewards", arXiv 2502.01456, the return of implicit process rewards
  with an RLOO baseline), for G completions per prompt laid out consecutively (TRL's GRPO layout)::

      A^i_t = Σ_{s≥t} γ^{s-t} (r^i_s - b_i),    b_i = 1/(G-1) Σ_{j≠i} (Σ_s r^j_s) / |y^j|,

  the baseline being the mean, over the other completions of the prompt, of their average per-token reward. Deviation
  from PRIME's released verl recipe (``compute_rloo_advantage_return``): it computes r^i_s · G/(G-1) - (Σ_j m_j)/(G-1)
  per token (m_j the average reward of completion j), which equals the paper's r^i_s - b_i only on average over a
  completion (the difference is (r^i_s - m_i)/(G-1)); we follow the paper. A completion with no token on the mask is
  left out of the others' baselines (so a masked-out, unscorable completion does not drag them towards 0); a
  completion whose group has no other non-empty completion gets b_i = 0.

Error conventions: option values a user sets (``mode``, ``scale_rewards``, ``num_generations``) raise
:class:`segrl.errors.UserError`; inconsistent tensors passed by code (shapes, a malformed tree) raise ``ValueError``.
"""

from dataclasses import dataclass

import torch

from segrl.errors import UserError
from segrl.segmentation import (
    broadcast_to_tokens,
    low_probability_mask,
    num_segments,
    segment_first_index,
)

__all__ = [
    "ChainBoundaries",
    "TREE_MODES",
    "chain_advantages",
    "chain_boundaries",
    "dense_group_advantages",
    "gae",
    "group_advantages",
    "group_means",
    "masked_moments",
    "probability_mask",
    "returns_to_go",
    "tree_advantages",
    "tree_values",
    "whiten",
]

TREE_MODES = ("rloo", "grpo")


def _float_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (integer or half-precision inputs are promoted)."""
    return torch.promote_types(dtype, torch.float32)


# ------------------------------------------------------------------------------------------------ SPO-chain


@dataclass(frozen=True)
class ChainBoundaries:
    """The boundary states whose value SPO-chain must estimate, one entry per (row, segment), row-major.

    Attributes:
        row: (M,) long, the batch row of each boundary.
        segment: (M,) long, the segment that the boundary opens (its value is that segment's start value).
        prefix_length: (M,) long, b: completion tokens before the boundary. The state to roll out from is the row's
            prompt followed by its first b completion tokens; b = 0 is the bare prompt. Rows of the same prompt share
            that state, and rows that agree on their first b tokens share theirs: estimate each distinct state once.
        num_rows: B.
        num_segments: S, the batch's largest segment count (columns of :meth:`start_values`).
    """

    row: torch.Tensor
    segment: torch.Tensor
    prefix_length: torch.Tensor
    num_rows: int
    num_segments: int

    def __len__(self) -> int:
        return self.row.numel()

    def start_values(self, values: torch.Tensor) -> torch.Tensor:
        """Scatter the estimated values into the ``start_values`` of :func:`chain_advantages`.

        Args:
            values: (M,) float, V̂ of each boundary, in this object's order.

        Returns:
            (B, S) float (at least float32): V̂ at the start of each segment, NaN where not estimated or absent.
        """
        if values.shape != self.row.shape:
            raise ValueError(f"expected {len(self)} boundary values, got shape {tuple(values.shape)}")
        out = torch.full(
            (self.num_rows, self.num_segments), float("nan"), dtype=_float_dtype(values.dtype), device=values.device
        )
        out[self.row.to(values.device), self.segment.to(values.device)] = values.to(out.dtype)
        return out


def chain_boundaries(segment_ids: torch.Tensor, estimate_at: torch.Tensor | None = None) -> ChainBoundaries:
    """The boundary states to estimate by Monte Carlo for SPO-chain, and where their values go.

    A segment's start state is estimated when its first token is True in ``estimate_at``. For SPO's cutpoint
    segments pass the low-probability mask (:func:`segrl.segmentation.low_probability_mask` with the ``rho`` used to
    segment): every segment after the first opens at a kept cutpoint, which is low-probability, and segment 0 opens
    at one exactly when the first completion token is low-probability (the first low-probability token is always
    kept), in which case its boundary is the bare prompt (prefix length 0).

    Args:
        segment_ids: (B, T) long, -1 off the completion (e.g. :func:`segrl.segmentation.cutpoint_segments`). The
            completion positions of a row are assumed contiguous, as everywhere in :mod:`segrl.segmentation`.
        estimate_at: (B, T) bool, see above. None: estimate the start of every segment but segment 0 (the prompt
            state is never valued), e.g. for fixed-length partitions.

    Returns:
        :class:`ChainBoundaries`. Round trip::

            bounds = chain_boundaries(ids, low_probability_mask(probs, mask, rho))
            values = ...  # mean reward of N continuations from prompt + completion[:b] for each b in bounds
            advantages = chain_advantages(bounds.start_values(values), rewards, ids)
    """
    first = segment_first_index(segment_ids)  # (B, S), -1 on absent segments
    batch, total = first.shape
    present = first >= 0
    prefix = first - first[:, :1].clamp(min=0)  # completion tokens before each segment's first token
    if estimate_at is None:
        estimated = present & (torch.arange(total, device=first.device) >= 1)
    else:
        if estimate_at.shape != segment_ids.shape:
            raise ValueError(
                f"estimate_at has shape {tuple(estimate_at.shape)}, segment_ids {tuple(segment_ids.shape)}"
            )
        estimated = present & estimate_at.bool().gather(1, first.clamp(min=0))
    row, segment = estimated.nonzero(as_tuple=True)
    return ChainBoundaries(row, segment, prefix[row, segment], batch, total)


def chain_advantages(
    start_values: torch.Tensor,
    final_rewards: torch.Tensor,
    segment_ids: torch.Tensor,
    segment0_baseline: torch.Tensor | None = None,
) -> torch.Tensor:
    """SPO-chain per-token advantages: A_k = V̂(start of k+1) - V̂(start of k), and R - V̂(start of last).

    Args:
        start_values: (B, S') float, V̂ of the state at the start of each segment (the Monte Carlo estimate at the
            prefix just before the segment's first token), NaN where not estimated (segment 0 when the prompt state
            was not valued) or where the row has no such segment. S' must be at least the batch's largest segment
            count; extra columns are ignored. :meth:`ChainBoundaries.start_values` builds it.
        final_rewards: (B,) float, R, each completion's own reward.
        segment_ids: (B, T) long, -1 off the completion.
        segment0_baseline: optional (B,) float, used as segment 0's start value where that is NaN, e.g.
            ``group_means(final_rewards, num_generations)``. Default None: such a segment 0 gets A = 0 (released code).

    Returns:
        (B, T) float (at least float32): each completion token carries its segment's advantage, 0 off the completion.
        A segment whose start or end value is NaN gets 0 (so does the last segment when R is NaN); a completion with
        no estimated boundary is all 0 (R - baseline with ``segment0_baseline``).
    """
    batch = segment_ids.shape[0]
    dtype = _float_dtype(start_values.dtype)
    counts = num_segments(segment_ids)  # (B,)
    total = int(counts.max()) if batch else 0
    if start_values.dim() != 2 or start_values.shape[0] != batch or start_values.shape[1] < total:
        raise ValueError(
            f"start_values must have shape (B={batch}, S>={total}) for these segment_ids, "
            f"got {tuple(start_values.shape)}"
        )
    if final_rewards.shape != (batch,):
        raise ValueError(f"final_rewards must have shape ({batch},), got {tuple(final_rewards.shape)}")
    if total == 0:
        return torch.zeros(segment_ids.shape, dtype=dtype, device=segment_ids.device)

    start = start_values[:, :total].to(dtype)
    if segment0_baseline is not None:
        if segment0_baseline.shape != (batch,):
            raise ValueError(f"segment0_baseline must have shape ({batch},), got {tuple(segment0_baseline.shape)}")
        start = start.clone()
        start[:, 0] = torch.where(start[:, 0].isnan(), segment0_baseline.to(dtype), start[:, 0])
    nan_column = torch.full((batch, 1), float("nan"), dtype=dtype, device=start.device)
    end = torch.cat([start[:, 1:], nan_column], dim=1)  # end of segment k = start of segment k + 1
    last = (counts - 1).clamp(min=0).unsqueeze(1)  # rows without segments write into a column nobody reads
    end = end.scatter(1, last, final_rewards.to(dtype).unsqueeze(1))
    advantages = end - start
    advantages = torch.where(advantages.isnan(), torch.zeros_like(advantages), advantages)
    return broadcast_to_tokens(advantages, segment_ids, fill=0.0)


# ------------------------------------------------------------------------------------------------- SPO-tree


def _tree_depths(parent: torch.Tensor) -> torch.Tensor:
    """Depth of every node (0 for roots); raises on out-of-range parents and cycles."""
    if parent.dim() != 1:
        raise ValueError(f"parent must be 1-D (N,), got shape {tuple(parent.shape)}")
    size = parent.numel()
    if size and (int(parent.min()) < -1 or int(parent.max()) >= size):
        raise ValueError(f"parent entries must be -1 (root) or a node index in [0, {size})")
    depth = torch.zeros_like(parent)
    ancestor = parent.clone()
    for _ in range(size + 1):  # one pass per level: trees are shallow
        has = ancestor >= 0
        if not bool(has.any()):
            return depth
        depth += has.long()
        ancestor = torch.where(has, parent[ancestor.clamp(min=0)], ancestor)
    raise ValueError("parent contains a cycle")


def tree_values(parent: torch.Tensor, leaf_reward: torch.Tensor) -> torch.Tensor:
    """Back values up a batch of trees: V(leaf) = its reward, V(node) = mean of its children's V.

    Args:
        parent: (N,) long, each node's parent index, -1 for roots. Nodes may be listed in any order and any number of
            trees may share the arrays; leaves may sit at different depths (a child that finished before its cap).
        leaf_reward: (N,) float, the reward of each leaf, NaN on internal nodes. The caller decides the reward of a
            node left unfinished at the last depth (SPO: 0).

    Returns:
        (N,) float (at least float32), V of every node.

    Raises:
        ValueError: a leaf without a reward (NaN), a node with children and a reward, a cycle, or bad shapes.
    """
    depth = _tree_depths(parent)
    if leaf_reward.shape != parent.shape:
        raise ValueError(f"leaf_reward has shape {tuple(leaf_reward.shape)}, parent {tuple(parent.shape)}")
    dtype = _float_dtype(leaf_reward.dtype)
    is_child = parent >= 0
    children = torch.zeros(parent.shape, dtype=dtype, device=parent.device)
    children.index_add_(0, parent[is_child], torch.ones(int(is_child.sum()), dtype=dtype, device=parent.device))
    leaf = children == 0
    missing = leaf & leaf_reward.isnan()
    if bool(missing.any()):
        raise ValueError(f"leaves without a reward (NaN): nodes {missing.nonzero().flatten().tolist()}")
    extra = ~leaf & ~leaf_reward.isnan()
    if bool(extra.any()):
        raise ValueError(f"nodes with children must have NaN leaf_reward: nodes {extra.nonzero().flatten().tolist()}")

    values = torch.where(leaf, leaf_reward.to(dtype), torch.full_like(children, float("nan")))
    for level in range(int(depth.max()) if depth.numel() else 0, 0, -1):  # deepest level first
        kids = (depth == level).nonzero().flatten()
        sums = torch.zeros_like(values).index_add_(0, parent[kids], values[kids])
        backed_up = (depth == level - 1) & ~leaf
        values = torch.where(backed_up, sums / children.clamp(min=1), values)
    return values


def tree_advantages(parent: torch.Tensor, values: torch.Tensor, mode: str = "rloo", eps: float = 1e-8) -> torch.Tensor:
    """SPO-tree advantage of every node from its value and its parent's.

    Args:
        parent: (N,) long, -1 for roots (as in :func:`tree_values`).
        values: (N,) float, V of every node (:func:`tree_values`).
        mode: ``"rloo"`` (released code's name, the default): A(n) = V(n) - V(parent(n)), which with backed-up
            values is V(n) minus the mean of its siblings including itself (not leave-one-out, see the module
            docstring). ``"grpo"``: the same divided by (std + eps), std the population std (ddof 0) of the values
            of n and its siblings; A = 0 where that std is 0.
        eps: added to the std in ``"grpo"`` mode (released code: 1e-8).

    Returns:
        (N,) float (at least float32); 0 on roots.
    """
    if mode not in TREE_MODES:
        raise UserError(f"unknown tree advantage mode {mode!r}: expected one of {list(TREE_MODES)}")
    _tree_depths(parent)
    if values.shape != parent.shape:
        raise ValueError(f"values has shape {tuple(values.shape)}, parent {tuple(parent.shape)}")
    values = values.to(_float_dtype(values.dtype))
    is_child = parent >= 0
    up = parent.clamp(min=0)
    diff = torch.where(is_child, values - values[up], torch.zeros_like(values))
    if mode == "rloo":
        return diff

    kids = is_child.nonzero().flatten()
    count = torch.zeros_like(values).index_add_(0, parent[kids], torch.ones_like(values[kids]))
    mean = torch.zeros_like(values).index_add_(0, parent[kids], values[kids]) / count.clamp(min=1)
    squares = torch.zeros_like(values).index_add_(0, parent[kids], (values[kids] - mean[parent[kids]]) ** 2)
    sibling_std = (squares / count.clamp(min=1)).sqrt()[up]
    scaled = diff / (sibling_std + eps)
    return torch.where(is_child & (sibling_std > 0), scaled, torch.zeros_like(values))


# ---------------------------------------------------------------------------------- probability mask, whitening


def probability_mask(
    token_probs: torch.Tensor, completion_mask: torch.Tensor, rho: float = 0.9, enabled: bool = True
) -> tuple[torch.Tensor, bool]:
    """SPO's probability mask with the spec's fallback: the tokens that receive advantages and enter the loss.

    Args:
        token_probs: (B, T) float, probability of each sampled token under the sampling-time policy at the sampling
            temperature (:func:`segrl.segmentation.sampled_token_probs`, or ``exp`` of TRL's old per-token logps,
            which it computes at that temperature).
        completion_mask: (B, T) bool or 0/1, True on completion tokens.
        rho: keep tokens with p < rho (strict; released code and default 0.9).
        enabled: False returns the completion mask (the "mask off" ablation).

    Returns:
        ``(mask, fell_back)``: mask (B, T) bool; fell_back True when no completion token of the batch passed and the
        whole completion mask was used instead (log it as a metric). The test is over the tensors passed: under
        several processes each one decides for its own batch.
    """
    completion_mask = completion_mask.bool()
    if not enabled:
        return completion_mask, False
    low = low_probability_mask(token_probs, completion_mask, rho)
    if bool(low.any()):
        return low, False
    return completion_mask, True


def masked_moments(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Count, sum and sum of squares of ``values`` over the masked-in entries, for global whitening statistics.

    Under several processes, all-reduce (sum) the result before :func:`whiten`, e.g.
    ``torch.distributed.all_reduce(moments)`` or ``accelerator.reduce(moments, "sum")``.

    Args:
        values: (B, T) float; entries off the mask are ignored (even NaN).
        mask: (B, T) bool or 0/1.

    Returns:
        (3,) float64: ``[count, sum, sum of squares]``.
    """
    mask = mask.bool()
    kept = torch.where(mask, values.double(), torch.zeros((), dtype=torch.float64, device=values.device))
    return torch.stack([mask.sum().double(), kept.sum(), (kept * kept).sum()])


def whiten(
    values: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor | None = None, eps: float = 1e-8
) -> torch.Tensor:
    """(values - mean) / (std + eps) over the masked-in entries; 0 off the mask.

    The std is the population std (ddof 0). A mask with no entry returns all 0; one entry, or all-equal entries,
    give std 0 and so 0 everywhere (never NaN).

    Args:
        values: (B, T) float, e.g. per-token advantages.
        mask: (B, T) bool or 0/1, the tokens that enter the statistics (SPO: the probability mask).
        moments: optional (3,) ``[count, sum, sum of squares]`` from :func:`masked_moments`, all-reduced across
            processes for global statistics. Default: this batch's own.
        eps: added to the std.

    Returns:
        (B, T) of ``values``' dtype (at least float32).
    """
    mask = mask.bool()
    if moments is None:
        moments = masked_moments(values, mask)
    count, total, squares = moments.double().to(values.device).unbind()
    count = count.clamp(min=1)
    mean = total / count
    std = (squares / count - mean * mean).clamp(min=0).sqrt()
    whitened = (values.double() - mean) / (std + eps)
    out = torch.where(mask, whitened, torch.zeros_like(whitened))
    return out.to(_float_dtype(values.dtype))


# ---------------------------------------------------------------------------------------------------- GRPO


def _nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Bessel-corrected std ignoring NaN, NaN where fewer than 2 values (as ``trl.trainer.utils.nanstd``)."""
    dims = () if dim is None else (dim,)
    mean = torch.nanmean(x, dim=dim, keepdim=True) if dims else torch.nanmean(x)
    variance = torch.nanmean((x - mean) ** 2, dim=dim) if dims else torch.nanmean((x - mean) ** 2)
    count = (~x.isnan()).sum(dim=dim) if dims else (~x.isnan()).sum()
    correction = torch.where(count > 1, count / (count - 1), torch.full_like(variance, float("nan")))
    return (variance * correction).sqrt()


def _grouped(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    if rewards.dim() != 1 or num_generations < 1 or rewards.numel() % num_generations:
        raise ValueError(
            f"rewards must be 1-D with a length divisible by num_generations={num_generations}, "
            f"got shape {tuple(rewards.shape)}"
        )
    return rewards.to(_float_dtype(rewards.dtype)).view(-1, num_generations)


def group_means(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """Mean reward of each prompt's group, repeated for each of its completions (NaN rewards ignored).

    Args:
        rewards: (B,) float, completions grouped consecutively by prompt, ``num_generations`` each (TRL's layout).
        num_generations: G.

    Returns:
        (B,) float: the baseline for ``segment0_baseline`` of :func:`chain_advantages` (NaN for an all-NaN group).
    """
    grouped = _grouped(rewards, num_generations)
    return torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)


def group_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str | bool = "group", eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's advantages as TRL 1.16's ``GRPOTrainer`` computes them (``sum_then_normalize``).

    ``(r - group mean) / (std + 1e-4)``, the std with Bessel's correction; NaN rewards (unscorable completions) are
    left out of the statistics and get advantage 0, as are all members of a group whose std is undefined.

    Args:
        rewards: (B,) float, grouped consecutively by prompt (TRL's layout).
        num_generations: G, completions per prompt.
        scale_rewards: ``"group"`` or True (TRL's default): the group's std; ``"batch"``: the std of all rewards;
            ``"none"`` or False: no division (Dr. GRPO).
        eps: TRL's 1e-4.

    Returns:
        (B,) float (at least float32).
    """
    scale = {True: "group", False: "none"}.get(scale_rewards, scale_rewards)
    if scale not in ("group", "batch", "none"):
        raise UserError(f"unknown scale_rewards {scale_rewards!r}: expected 'group', 'batch', 'none', True or False")
    grouped = _grouped(rewards, num_generations)
    flat = grouped.flatten()
    advantages = flat - torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale == "group":
        std = _nanstd(grouped, dim=1).repeat_interleave(num_generations) if num_generations > 1 else None
    elif scale == "batch":
        std = _nanstd(flat).expand_as(flat) if flat.numel() > 1 else None
    else:
        std = None
    if scale != "none":
        advantages = advantages / ((std if std is not None else torch.zeros_like(flat)) + eps)
    return torch.nan_to_num(advantages, nan=0.0)


# ---------------------------------------------------------------------------------------- dense per-token rewards


def _check_dense(mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    """``mask`` as bool, after checking that every tensor has its (B, T) shape."""
    if mask.dim() != 2:
        raise ValueError(f"mask must be (B, T), got shape {tuple(mask.shape)}")
    for name, tensor in tensors.items():
        if tensor.shape != mask.shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, mask {tuple(mask.shape)}")
    return mask.bool()


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Discounted return-to-go G_t = Σ_{s≥t} γ^{s-t} r_s over each row's completion tokens.

    Args:
        rewards: (B, T) float, per-token rewards (e.g. :func:`segrl.shaping.kl_shaped_rewards`); ignored off the mask.
        mask: (B, T) bool or 0/1, True on completion tokens, contiguous in each row.
        gamma: discount γ (spec: 1).

    Returns:
        (B, T) float (at least float32), 0 off the mask.
    """
    mask = _check_dense(mask, rewards=rewards)
    rewards = rewards.to(_float_dtype(rewards.dtype))
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = torch.where(mask[:, t], rewards[:, t] + gamma * running, running)
        out[:, t] = torch.where(mask[:, t], running, 0.0)
    return out


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's completion tokens (V = 0 after the last one).

    Args:
        rewards: (B, T) float, per-token rewards r_t; ignored off the mask.
        values: (B, T) float, the critic's V(s_t) at each completion token; ignored off the mask.
        mask: (B, T) bool or 0/1, True on completion tokens, contiguous in each row.
        gamma: discount γ (paper: 1).
        lam: GAE λ (paper: 0.95).

    Returns:
        ``(advantages, returns)``, both (B, T) float (at least float32), 0 off the mask: A_t = δ_t + γλ A_{t+1} with
        δ_t = r_t + γ V_{t+1} - V_t, and returns = A + V (the value targets).
    """
    mask = _check_dense(mask, rewards=rewards, values=values)
    dtype = torch.promote_types(_float_dtype(rewards.dtype), values.dtype)
    rewards, values = rewards.to(dtype), values.to(dtype)
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        valid = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        next_value = torch.where(valid, values[:, t], next_value)
        next_advantage = torch.where(valid, advantage, next_advantage)
        advantages[:, t] = torch.where(valid, advantage, 0.0)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def dense_group_advantages(
    rewards: torch.Tensor, mask: torch.Tensor, num_generations: int, gamma: float = 1.0
) -> torch.Tensor:
    """PRIME's critic-free advantage: return-to-go of r_t minus a leave-one-out group baseline.

    A^i_t = Σ_{s≥t} γ^{s-t} (r^i_s - b_i), b_i the mean over the prompt's other completions j of their average
    per-token reward Σ_s r^j_s / |y^j| (see the module docstring for completions with no token on the mask).

    Args:
        rewards: (B, T) float, per-token rewards; ignored off the mask.
        mask: (B, T) bool or 0/1, True on completion tokens, contiguous in each row.
        num_generations: G >= 2, completions per prompt; rows are grouped consecutively, G at a time (TRL's layout).
        gamma: discount γ.

    Returns:
        (B, T) float (at least float32), 0 off the mask.

    Raises:
        UserError: ``num_generations`` below 2 (a leave-one-out baseline needs another completion).
    """
    if num_generations < 2:
        raise UserError(f"num_generations must be at least 2 for a leave-one-out baseline, got {num_generations}")
    mask = _check_dense(mask, rewards=rewards)
    batch = rewards.shape[0]
    if batch % num_generations:
        raise ValueError(f"batch size {batch} is not divisible by num_generations={num_generations}")
    rewards = rewards.to(_float_dtype(rewards.dtype))
    kept = torch.where(mask, rewards, 0.0)
    counts = mask.sum(dim=1)
    present = (counts > 0).to(rewards.dtype)  # completions that count in the others' baselines
    average = kept.sum(dim=1) / counts.clamp(min=1)  # (B,) average per-token reward, 0 for an empty completion
    group_sum = average.view(-1, num_generations).sum(dim=1).repeat_interleave(num_generations)
    group_count = present.view(-1, num_generations).sum(dim=1).repeat_interleave(num_generations)
    others = group_count - present
    baseline = torch.where(others > 0, (group_sum - average) / others.clamp(min=1), 0.0)
    return returns_to_go(kept - baseline.unsqueeze(1), mask, gamma)
