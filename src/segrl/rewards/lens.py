"""LENS-style multi-level rewards for grounding: format (sentence level), box IoU² (box level), mask IoU² (segment
level), summed by GRPO.

Paper: Zhu et al., "LENS: Learning to Segment Anything with Unified Reinforced Reasoning", arXiv 2508.14153 (AAAI
2026). LENS trains a vision-language model to reason in a think block, answer a box, and segment from it; one GRPO
objective sums rewards at three granularities of the same output (8 samples per prompt, group-normalised
advantages, k3 KL). The vision stack is out of scope here; these are the three rewards, in TRL's reward signature
``fn(prompts, completions, **columns) -> list[float | None]``, for any dataset with a ``box`` column (ground-truth
``[x1, y1, x2, y2]``) and a ``mask`` column (the ground-truth region as COCO-style uncompressed RLE, see
:func:`rle_encode`). ``GRPOTrainer(reward_funcs=REWARD_FUNCS)`` sums them with weight 1 and logs each one as
``rewards/<function name>/mean``; segrl's ``grounding`` task uses them as its training rewards.

Coordinates: a continuous plane, x to the right, y down; a box is ``[x1, y1, x2, y2]``. A mask is a (H, W) boolean
tensor whose pixel (row j, column i) covers [i, i+1] x [j, j+1].

The rewards
-----------
- :func:`format_reward` (sentence level): 1 when the whole completion is one think block followed by one answer
  block, ``<think>...</think> <answer>...</answer>``, with only whitespace around and between them and no
  think/answer tag inside either block (anchored regex, dot matches newline); else 0.
- :func:`box_iou_reward` (box level): IoU(pred, gt)², where pred is :func:`parse_box` of the completion.
- :func:`mask_iou_reward` (segment level): IoU(rasterised pred box, gt mask)² on the mask's grid. In LENS the
  predicted mask comes from SAM prompted with the model's box; here the predicted region *is* the box, rasterised
  (:func:`rasterize_box`), so the two IoUs differ exactly where the target is not a rectangle: the exact bounding
  box of a disc scores mask IoU ≈ π/4, of a triangle ≈ 1/2.

Parsing the box (:func:`parse_box`): the completion must hold exactly one ``<answer>...</answer>`` block with no
tag inside (several answers, nested or unclosed tags: unparsed); its first four numbers are the box, so
``[a,b,c,d]``, ``(a,b,c,d)`` and ``(a,b),(c,d)`` all work, as in LENS. A number is ASCII digits with an optional
sign and decimal part, not glued to a letter (``x1`` and ``1e5`` are not numbers); one longer than 16 characters
is rejected. The corners are sorted (``[x2, y2, x1, y1]`` is the same box). Nothing is ever evaluated as code.
An unparsed completion scores 0 on both IoU rewards; a missing ground truth (None) gives None, which TRL ignores.

Deviations from the release, each a bug there (spec): the ground truth is read as data, never with ``eval``; IoU
is 0, not a division error, when the union is empty (two zero-area boxes, or an empty mask and an empty
prediction); the format regex escapes its alternatives (the release's unescaped ``|`` matched almost anything).
Beyond the release: coordinates out of the canvas are kept as given for box IoU (the extra area only lowers it)
and clipped to the grid when rasterised.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from segrl.errors import UserError
from segrl.tasks import completion_text

_BLOCK_BODY = r"(?:(?!</?(?:think|answer)>).)*"  # block content: anything but another think/answer tag
FORMAT_PATTERN = re.compile(rf"\A\s*<think>{_BLOCK_BODY}</think>\s*<answer>{_BLOCK_BODY}</answer>\s*\Z", re.DOTALL)
_ANSWER_BLOCK = re.compile(rf"<answer>({_BLOCK_BODY})</answer>", re.DOTALL)
_NUMBER = re.compile(r"(?<![\w.])[-+]?[0-9]+(?:\.[0-9]+)?(?!\w|\.[0-9])")
_MAX_NUMBER_CHARS = 16


# ----------------------------------------------------------------------------------------------------------------
# parsing


def format_ok(text: str) -> bool:
    """Whether ``text`` is exactly one think block then one answer block (see the module docstring)."""
    return FORMAT_PATTERN.match(text) is not None


def answer_text(text: str) -> str | None:
    """The content of the completion's single answer block; None when there is none, several, or a nested or
    unclosed answer tag."""
    blocks = _ANSWER_BLOCK.findall(text)
    if len(blocks) != 1 or text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return None
    return blocks[0]


def parse_box(text: str) -> tuple[float, float, float, float] | None:
    """The box ``(x1, y1, x2, y2)`` with sorted corners from the first four numbers of the single answer block;
    None when there is no such block, fewer than four numbers, or a number too long to be a coordinate."""
    answer = answer_text(text)
    if answer is None:
        return None
    numbers = _NUMBER.findall(answer)[:4]
    if len(numbers) < 4 or any(len(n) > _MAX_NUMBER_CHARS for n in numbers):
        return None
    a, b, c, d = (float(n) for n in numbers)
    return min(a, c), min(b, d), max(a, c), max(b, d)


# ----------------------------------------------------------------------------------------------------------------
# geometry


def box_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of boxes, row by row. ``pred``, ``gt``: (N, 4) ``[x1, y1, x2, y2]`` with x1 <= x2, y1 <= y2 (a box with
    inverted corners has zero area). Returns (N,) float64; 0 where the union is empty."""
    pred, gt = pred.to(torch.float64), gt.to(torch.float64)
    inter_w = (torch.minimum(pred[:, 2], gt[:, 2]) - torch.maximum(pred[:, 0], gt[:, 0])).clamp(min=0)
    inter_h = (torch.minimum(pred[:, 3], gt[:, 3]) - torch.maximum(pred[:, 1], gt[:, 1])).clamp(min=0)
    inter = inter_w * inter_h
    area_pred = (pred[:, 2] - pred[:, 0]).clamp(min=0) * (pred[:, 3] - pred[:, 1]).clamp(min=0)
    area_gt = (gt[:, 2] - gt[:, 0]).clamp(min=0) * (gt[:, 3] - gt[:, 1]).clamp(min=0)
    union = area_pred + area_gt - inter
    return torch.where(union > 0, inter / union.clamp(min=torch.finfo(torch.float64).tiny), 0.0)


def mask_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of boolean masks, (N, H, W) each. Returns (N,) float64; 0 where the union is empty."""
    inter = (pred & gt).flatten(1).sum(1).to(torch.float64)
    union = (pred | gt).flatten(1).sum(1).to(torch.float64)
    return torch.where(union > 0, inter / union.clamp(min=1), 0.0)


def rasterize_box(box, height: int, width: int) -> torch.Tensor:
    """The (H, W) boolean mask of the pixels whose centre (i + 0.5, j + 0.5) lies in the closed box
    ``[x1, x2] x [y1, y2]``: for integer corners, columns x1..x2-1 and rows y1..y2-1."""
    x1, y1, x2, y2 = (float(v) for v in box)
    centres_x = torch.arange(width, dtype=torch.float64) + 0.5
    centres_y = torch.arange(height, dtype=torch.float64) + 0.5
    cols = (centres_x >= x1) & (centres_x <= x2)
    rows = (centres_y >= y1) & (centres_y <= y2)
    return rows[:, None] & cols[None, :]


def rle_encode(mask: torch.Tensor) -> dict[str, list[int]]:
    """COCO-style uncompressed RLE of a (H, W) boolean mask: ``{"size": [H, W], "counts": [...]}``, the run
    lengths of the column-major flattening, starting with a run of zeros (possibly empty)."""
    if mask.dim() != 2:
        raise ValueError(f"rle_encode: expected a (H, W) mask, got shape {tuple(mask.shape)}")
    flat = mask.bool().t().reshape(-1)
    changes = (torch.nonzero(flat[1:] != flat[:-1]).flatten() + 1).tolist()
    bounds = [0, *changes, flat.numel()]
    counts = [b - a for a, b in zip(bounds, bounds[1:])]
    if flat.numel() and bool(flat[0]):
        counts.insert(0, 0)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def rle_decode(rle: Any) -> torch.Tensor:
    """The (H, W) boolean mask of an RLE from :func:`rle_encode`; :class:`UserError` when it is malformed."""
    size = rle.get("size") if isinstance(rle, dict) else None
    counts = rle.get("counts") if isinstance(rle, dict) else None
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        raise UserError(f"mask: expected an RLE {{'size': [H, W], 'counts': [...]}} with positive H, W; got {rle!r:.200}")
    if (not isinstance(counts, (list, tuple))
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
            or sum(counts) != size[0] * size[1]):
        raise UserError(f"mask: RLE counts must be non-negative integers summing to H*W = {size[0] * size[1]}")
    values = torch.arange(len(counts)) % 2 == 1
    flat = torch.repeat_interleave(values, torch.tensor(counts, dtype=torch.long))
    return flat.reshape(size[1], size[0]).t().contiguous()


def _gt_box(box: Any) -> torch.Tensor:
    if (not isinstance(box, (list, tuple)) or len(box) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)):
        raise UserError(f"box: expected the ground truth as 4 finite numbers [x1, y1, x2, y2], got {box!r:.200}")
    return torch.tensor([float(v) for v in box], dtype=torch.float64)


# ----------------------------------------------------------------------------------------------------------------
# TRL reward functions


def _texts(completions) -> list[str]:
    return [text if (text := completion_text(c)) is not None else "" for c in completions]


def _column(name: str, values: Any, n: int) -> list:
    if values is None:
        raise UserError(f"the dataset has no {name!r} column (one ground truth per completion)")
    if len(values) != n:
        raise UserError(f"got {n} completions but {len(values)} values in column {name!r}")
    return list(values)


def _ious(completions, name: str, truths, read_truth, iou) -> list[float | None]:
    """``iou(parsed box, read_truth(truth))`` of each completion with its ground truth in column ``name``: 0.0 for
    an unparsed answer, None where the ground truth is None; the ground truth is read (validated) either way."""
    ious: list[float | None] = []
    for text, truth in zip(_texts(completions), _column(name, truths, len(completions))):
        if truth is None:
            ious.append(None)
            continue
        truth = read_truth(truth)
        pred = parse_box(text)
        ious.append(0.0 if pred is None else float(iou(pred, truth)))
    return ious


def box_ious(completions, box) -> list[float | None]:
    """Plain IoU of each completion's parsed box (:func:`parse_box`) with its ``box`` ground truth: 0.0 for an
    unparsed answer, None where the ground truth is None; :class:`UserError` for a missing or malformed column."""
    return _ious(completions, "box", box, _gt_box,
                 lambda pred, gt: box_iou(torch.tensor([pred], dtype=torch.float64), gt[None])[0])


def mask_ious(completions, mask) -> list[float | None]:
    """Plain IoU of each completion's rasterised parsed box with its ``mask`` ground truth (RLE) on the mask's
    grid: 0.0 for an unparsed answer, None where the ground truth is None; :class:`UserError` for a missing or
    malformed column."""
    return _ious(completions, "mask", mask, rle_decode,
                 lambda pred, gt: mask_iou(rasterize_box(pred, *gt.shape)[None], gt[None])[0])


def format_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 for a completion that is exactly a think block then an answer block, else 0.0 (sentence level)."""
    return [1.0 if format_ok(text) else 0.0 for text in _texts(completions)]


def box_iou_reward(prompts, completions, box=None, **kwargs) -> list[float | None]:
    """IoU(parsed box, ``box``)²; 0.0 for an unparsed answer, None where the ground truth is None (box level)."""
    return [None if iou is None else iou ** 2 for iou in box_ious(completions, box)]


def mask_iou_reward(prompts, completions, mask=None, **kwargs) -> list[float | None]:
    """IoU(rasterised parsed box, ``mask``)² on the mask's grid; 0.0 for an unparsed answer, None where the
    ground truth is None (segment level)."""
    return [None if iou is None else iou ** 2 for iou in mask_ious(completions, mask)]


#: The three LENS rewards, in the order GRPO sums and logs them.
REWARD_FUNCS = [format_reward, box_iou_reward, mask_iou_reward]

__all__ = [
    "FORMAT_PATTERN", "REWARD_FUNCS", "answer_text", "box_iou", "box_iou_reward", "box_ious", "format_ok",
    "format_reward", "mask_iou", "mask_iou_reward", "mask_ious", "parse_box", "rasterize_box", "rle_decode", "rle_encode",
]
