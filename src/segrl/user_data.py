"""A user's own prompts and reward functions for ``segrl train grpo|spo|dense|drlc``, in place of a built-in task's.

- **Prompts** (:func:`load_prompts`): a JSONL file, one object per line with a ``prompt`` (text, or chat messages
  ``[{"role": ..., "content": ...}]``) and whatever other columns the reward functions read (they arrive as keyword
  lists, TRL's convention); or anything ``datasets.load_dataset`` opens (a local data directory, a cached hub id)
  with a ``prompt`` column. Every row must have the same columns: a reward function would otherwise see ``None``
  for the rows that lack one.
- **Reward functions** (:func:`load_reward_functions`): by explicit path, ``my_rewards:exact_match`` or, as TRL's
  ``trl grpo --reward_funcs`` takes it, ``my_rewards.exact_match`` (a module importable from the installed packages
  or the working directory, and a function in it); nothing is imported that the user did not name. They take
  TRL's signature ``f(prompts, completions, **columns) -> list[float | None]``.
- **Held-out evaluation** with user reward functions (:class:`RewardEvaluation`): the weighted sum of the functions
  (``reward_weights``), logged as ``eval/reward`` and ``eval/reward_greedy`` (a built-in task logs ``accuracy``).
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segrl.errors import UserError

__all__ = ["RewardEvaluation", "file_digest", "import_function", "load_prompts", "load_reward_functions"]


def load_prompts(source: str, split: str, flag: str):
    """The rows of ``source`` (a JSONL file, or ``split`` of what ``datasets.load_dataset`` opens) as a
    ``datasets.Dataset``; :class:`UserError` naming ``flag``, the file and line for a row without a usable prompt
    or with other columns than the first row's."""
    from datasets import Dataset

    path = Path(source)
    if path.suffix in (".jsonl", ".json") or path.is_file():
        from segrl.files import read_jsonl_numbered

        numbered = read_jsonl_numbered(path, {})
        columns = set(numbered[0][1])
        for line, row in numbered:
            where = f"{flag} {path}, line {line}"
            if "prompt" not in row:
                raise UserError(f"{where}: missing field 'prompt'")
            _check_prompt(row["prompt"], where)
            if set(row) != columns:
                raise UserError(f"{where}: columns {sorted(row)} differ from the first row's {sorted(columns)}")
        return Dataset.from_list([row for _, row in numbered])
    from datasets import load_dataset

    try:
        dataset = load_dataset(str(source), split=split)
    except Exception as err:  # datasets raises many types for "not found"; all mean the same to the user
        raise UserError(f"{flag}: cannot open '{source}' (split '{split}'): {str(err).splitlines()[0]}") from err
    if "prompt" not in dataset.column_names:
        raise UserError(f"{flag} {source}: no 'prompt' column (columns: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise UserError(f"{flag} {source} holds no rows")
    for index, prompt in enumerate(dataset["prompt"]):
        _check_prompt(prompt, f"{flag} {source}, row {index}")
    return dataset


def _check_prompt(prompt: Any, where: str) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: empty 'prompt'")
        return
    messages_ok = isinstance(prompt, list) and prompt and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in prompt)
    if not messages_ok:
        raise UserError(f"{where}: 'prompt' must be text or a list of {{'role': ..., 'content': ...}} messages, "
                        f"got {type(prompt).__name__}")


def import_function(spec: str, flag: str) -> Callable:
    """The function ``module:function`` names: the one way segrl imports user code (``--reward_funcs`` of
    ``segrl train``, ``--reward`` of ``segrl decode``). The working directory is searched last, after the
    installed packages, so that a module next to the user's data imports without PYTHONPATH and shadows nothing.
    :class:`UserError` naming ``flag`` for anything else."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise UserError(f"{flag} {spec!r}: expected module:function, e.g. my_rewards:exact_match")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{flag} {spec}: cannot import {name!r} from {module_name!r} ({err})") from None
    if not callable(function):
        raise UserError(f"{flag} {spec}: {name!r} is not callable")
    return function


def load_reward_functions(specs: list[str]) -> list[Callable]:
    """The reward functions of ``--reward_funcs``: ``module:function``, or TRL's dotted ``module.function``
    (:func:`import_function`)."""
    return [import_function(spec if ":" in spec else ":".join(spec.rsplit(".", 1)), "--reward_funcs")
            for spec in specs]


class RewardEvaluation:
    """Held-out evaluation with a user's reward functions: ``reward`` is their weighted sum per completion (None
    where every function returns None; a None counts 0 otherwise, as in TRL's ``nansum``), ``score_name`` the
    metric's name."""

    score_name = "reward"

    def __init__(self, functions: list[Callable], weights: list[float] | None):
        self.functions, self.weights = functions, weights or [1.0] * len(functions)

    def reward(self, prompts, completions, **columns) -> list[float | None]:
        per_function = [list(f(prompts=prompts, completions=completions, **columns)) for f in self.functions]
        totals = []
        for row in zip(*per_function):
            if all(r is None for r in row):
                totals.append(None)
                continue
            weighted = [(w, float(r)) for w, r in zip(self.weights, row) if r is not None]
            if not all(math.isfinite(v) for _, v in weighted):
                raise UserError("a reward function returned a non-finite number in held-out evaluation")
            totals.append(sum(w * v for w, v in weighted))
        return totals


def file_digest(source: str) -> str | None:
    """SHA-256 of the file ``source`` (recorded in ``config.json``), or None when it is not a file."""
    path = Path(source)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
