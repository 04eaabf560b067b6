"""Segment-level reward model (Yin et al. 2025, "Segmenting Text and Learning Their Rewards", arXiv 2501.02790).

A reward model that gives every *segment* of a response its own reward, learned from ordinary sequence-level
preference pairs:

- **Model**: the causal-LM backbone (initialised from the SFT/reference model) with a bias-free linear head on the
  final hidden state, initialised N(0, 1/(d + 1)). It is a ``transformers`` ``AutoModelForTokenClassification`` with
  one label, ``token_classification_bias=False`` and no head dropout, so ``save_pretrained`` / ``from_pretrained``,
  PEFT and TRL work on it as on any model. The head's output at token t is r(x, y_≤t).
- **Segment reward**: the head's output at the segment's **last** token (:func:`segment_rewards`).
- **Sequence score**: e(x, y) = the **average** of y's segment rewards (:func:`sequence_scores`).
- **Loss**: Bradley–Terry, −log σ(e(x, y_w) − e(x, y_l)), no margin (:class:`segrl.trainers.segment_rm.SegmentRewardTrainer`).
- **Segmentation**: the entropy threshold of the frozen reference model (:func:`segrl.segmentation.entropy_segments`,
  tail rule: the last segment ends before EOS), precomputed once per dataset by :mod:`segrl.prepare`.

The two baselines come from the same code through :func:`variant_segment_ids`: ``"token"`` (every completion token
is a segment, the paper's threshold 0) and ``"bandit"`` (one segment over the whole completion, EOS included, read
at EOS: the classic sequence-level reward model). The variant and the threshold are stored in the model's config
(``config.segrl_segmentation``), so that RL segments the policy's samples the way the reward model was trained.

Deviation: ``"token"`` makes every completion token its own segment directly instead of thresholding entropies at
0 (identical whenever every entropy is positive, and it needs no reference forward pass).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from safetensors import SafetensorError
from transformers import AutoConfig, AutoModelForTokenClassification
from transformers.utils import logging as transformers_logging

from segrl import segmentation as seg
from segrl.errors import UserError

__all__ = [
    "VARIANTS",
    "load_reward_model",
    "new_reward_model",
    "segment_rewards",
    "segmentation_of",
    "sequence_scores",
    "variant_segment_ids",
]

#: How a response is cut: entropy-threshold segments, one segment per token, or one segment per response.
VARIANTS = ("segment", "token", "bandit")


def variant_segment_ids(segment_ids: torch.Tensor, completion_mask: torch.Tensor, variant: str) -> torch.Tensor:
    """The segment ids that ``variant`` reads rewards from.

    Args:
        segment_ids: (B, T) long, entropy-threshold segments with the tail rule (EOS is -1).
        completion_mask: (B, T) bool, True on every completion token, EOS included.
        variant: ``"segment"`` (``segment_ids`` as they are), ``"token"`` (each non-EOS completion token alone) or
            ``"bandit"`` (the whole completion, EOS included, as segment 0).

    Returns:
        (B, T) long segment ids.
    """
    if variant == "segment":
        return segment_ids
    if variant == "token":
        body = segment_ids >= 0
        return (body.long().cumsum(dim=1) - 1).masked_fill(~body, -1)
    if variant == "bandit":
        return torch.zeros_like(segment_ids).masked_fill(~completion_mask.bool(), -1)
    raise UserError(f"Unknown reward-model variant {variant!r}; expected one of {', '.join(VARIANTS)}")


def segment_rewards(token_scores: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Each segment's reward: the head's output at the segment's last token.

    Args:
        token_scores: (B, T) float, the head's output at each completion token.
        segment_ids: (B, T) long.

    Returns:
        (B, S) float, NaN for segments a row does not have (differentiable in ``token_scores``).
    """
    last = seg.segment_last_index(segment_ids)
    picked = token_scores.gather(1, last.clamp(min=0))
    return picked.masked_fill(last < 0, math.nan)


def sequence_scores(token_scores: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """e(x, y): the mean of the row's segment rewards.

    Args:
        token_scores: (B, T) float.
        segment_ids: (B, T) long.

    Returns:
        (B,) float; NaN for a row with no segment (callers count and skip those).
    """
    rewards = segment_rewards(token_scores, segment_ids)
    present = ~torch.isnan(rewards)
    total = torch.where(present, rewards, torch.zeros_like(rewards)).sum(dim=1)
    count = present.sum(dim=1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


@contextmanager
def _quiet_loading():
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def new_reward_model(path, variant: str, threshold: float | None, seed: int = 0, bias: bool = False):
    """A scalar-head model on the backbone at ``path``: a fresh bias-free head, N(0, 1/(d + 1)).

    Also the critic of :mod:`segrl.trainers.dense` (``variant="bandit"``, ``bias=True``: a value head).

    Args:
        path: a causal-LM directory or hub id (its LM head is dropped).
        variant: see :data:`VARIANTS`; stored in the config with ``threshold``.
        threshold: the entropy threshold c of the ``"segment"`` variant (None for the others).
        seed: seeds the head's initialisation.
    """
    if variant not in VARIANTS:
        raise UserError(f"Unknown reward-model variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if variant == "segment" and threshold is None:
        raise UserError("The 'segment' variant needs the entropy threshold it was segmented with")
    torch.manual_seed(seed)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=1, trust_remote_code=False)
        config.token_classification_bias, config.classifier_dropout = bias, 0.0
        with _quiet_loading():  # the head is missing from the checkpoint by design: no report about it
            model = AutoModelForTokenClassification.from_pretrained(path, config=config, use_safetensors=True,
                                                                        trust_remote_code=False)
    except SafetensorError as err:
        raise UserError(f"Cannot build a reward model on '{path}': damaged weights ({err})") from err
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot build a reward model on '{path}': {str(err).strip().splitlines()[0]}") from err
    head = model.score
    hidden = head.weight.shape[1]
    torch.nn.init.normal_(head.weight, mean=0.0, std=(1.0 / (hidden + 1)) ** 0.5)
    if head.bias is not None:
        torch.nn.init.zeros_(head.bias)
    model.config.segrl_segmentation = {"variant": variant, "threshold": threshold}
    return model


def segmentation_of(model) -> tuple[str, float | None]:
    """``(variant, threshold)`` stored in a segment reward model's config."""
    info = getattr(model.config, "segrl_segmentation", None)
    if not isinstance(info, dict) or info.get("variant") not in VARIANTS:
        raise UserError(
            f"{getattr(model.config, '_name_or_path', 'the model')} is not a segrl reward model "
            "(its config has no segrl_segmentation entry; train one with `segrl train rm`)"
        )
    return info["variant"], info.get("threshold")


def load_reward_model(path, device: str | None = None):
    """Load a reward model saved by ``segrl train rm`` (safetensors only) and check its segmentation entry."""
    try:
        model = AutoModelForTokenClassification.from_pretrained(path, use_safetensors=True, trust_remote_code=False)
    except SafetensorError as err:
        raise UserError(f"Cannot load the reward model at '{path}': damaged weights ({err})") from err
    except (OSError, ValueError) as err:
        raise UserError(f"Cannot load the reward model at '{path}': {str(err).strip().splitlines()[0]}") from err
    if model.config.num_labels != 1:
        raise UserError(f"{path}: a reward model has one output, this one has {model.config.num_labels}")
    segmentation_of(model)
    return model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
