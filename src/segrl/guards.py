"""Numerical guards: find non-finite values, name the samples behind them, count skipped optimizer steps.

Pure helpers with no trainer state; the trainers call them at their check points (docs/NUMERICAL_GUARDS.md has the
table of what is checked where, and what happens):

- :func:`nonfinite_rows`: the rows of a tensor that hold a NaN or ±inf (entries off an optional mask ignored);
- :func:`sample_text` / :func:`describe_samples`: prompt and completion text, truncated, for messages;
- :class:`NumericalError`: a run stopped by a guard; its message names the quantity, the step and the samples;
- :class:`SkipCounter`: skipped optimizer steps, total and consecutive; raises after ``limit`` in a row.

A reward function's ``None`` ("not applicable", which TRL turns into NaN and leaves out with ``nansum``) is not a
non-finite *value*; only a NaN or ±inf that a function returned as a number is. Telling them apart is the caller's
job (it must look before TRL's conversion): these helpers see only numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from segrl.errors import UserError

MAX_CONSECUTIVE_SKIPS = 3  # optimizer steps skipped in a row before a run stops
TEXT_LIMIT = 200  # characters of a prompt or completion quoted in a message
MAX_SAMPLES = 4  # samples quoted in one message


class NumericalError(UserError):
    """A run stopped by a numerical guard: a NaN or ±inf where a finite number is needed.

    The message says which quantity (a reward function by name, the advantages, the loss, the gradient norm), the
    optimizer step (1-based: the step being computed) and the samples behind it. A :class:`UserError`, so the CLI
    prints it as one line and exits with status 2.
    """


def nonfinite_rows(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the rows (dim 0) of ``values`` that hold at least one NaN or ±inf, ascending (LongTensor).

    ``mask`` (broadcastable to ``values``, bool or 0/1): entries where it is False are ignored, whatever they hold.
    A 0-dim tensor is one row.
    """
    bad = ~torch.isfinite(values.detach())
    if mask is not None:
        bad = bad & mask.bool()
    if bad.dim() == 0:
        bad = bad.reshape(1)
    return bad.reshape(bad.shape[0], -1).any(dim=1).nonzero().flatten().cpu()


def is_finite(value: Any) -> bool:
    """Whether a Python or tensor number is finite (a tensor: all of its entries)."""
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach()).all())
    return math.isfinite(float(value))


def is_nonfinite_number(value: Any) -> bool:
    """Whether ``value`` is a number (Python, NumPy or a one-element tensor) that is NaN or ±inf. None, and anything
    ``float`` cannot read, is not (the caller's own conversion reports the latter)."""
    if value is None:
        return False
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError, RuntimeError):
        return False


def shorten(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` cut to ``limit`` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sample_text(value: Any) -> str:
    """Plain text of a prompt or completion: a string as is, a conversation (list of messages) as its contents
    joined by newlines, anything else by ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        return "\n".join(m["content"] if isinstance(m["content"], str) else str(m["content"]) for m in value)
    return str(value)


def describe_sample(prompt: Any = None, completion: Any = None, label: str = "", text: Any = None) -> str:
    """One sample for a message: ``label prompt '...' completion '...'`` (each truncated, quoted by ``repr``), or
    ``label text '...'`` for a whole sequence (preference pairs)."""
    parts = [label] if label else []
    for name, value in (("prompt", prompt), ("completion", completion), ("text", text)):
        if value is not None:
            parts.append(f"{name} {shorten(sample_text(value))!r}")
    return " ".join(parts)


def describe_samples(samples: list[str], limit: int = MAX_SAMPLES) -> str:
    """Up to ``limit`` sample descriptions, one per line, and how many more were left out."""
    lines = [f"  {s}" for s in samples[:limit]]
    if len(samples) > limit:
        lines.append(f"  (and {len(samples) - limit} more)")
    return "\n".join(lines)


@dataclass
class SkipCounter:
    """Optimizer steps skipped by a guard: ``total`` over the run, ``consecutive`` since the last step taken.

    :meth:`record` after every optimizer step; it raises :class:`NumericalError` when ``consecutive`` reaches
    ``limit`` (a run that cannot take a step would otherwise spin on without learning).
    """

    limit: int = MAX_CONSECUTIVE_SKIPS
    total: int = 0
    consecutive: int = 0

    def state(self) -> dict:
        """The counts, for a checkpoint (:meth:`restore` takes them back; ``limit`` is configuration)."""
        return {"total": self.total, "consecutive": self.consecutive}

    def restore(self, state: dict) -> None:
        self.total, self.consecutive = state["total"], state["consecutive"]

    def record(self, skipped: bool, step: int, reason: str = "") -> None:
        if not skipped:
            self.consecutive = 0
            return
        self.total += 1
        self.consecutive += 1
        if self.consecutive >= self.limit:
            raise NumericalError(
                f"Step {step}: {self.consecutive} optimizer steps in a row were skipped for non-finite values; "
                f"stopping the run. Last: {reason}"
            )
