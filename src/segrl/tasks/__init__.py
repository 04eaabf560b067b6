"""Built-in tasks: deterministic data generators, verifiers and oracles that run offline.

Use :func:`get_task` to get a task module by name (``get_task("arith")``). Each task is one module, imported
lazily, that follows this contract:

``make_dataset(split: str, num_examples: int, seed: int = 0, **difficulty) -> datasets.Dataset``
    ``split`` is ``"train"`` or ``"test"``. The rows use TRL's column names: ``prompt`` (str), ``completion``
    (str, the demonstration used for SFT), plus the task's ground-truth columns (for ``arith``: ``answer``).
    The result is a pure function of ``(split, num_examples, seed, difficulty)``; the train and test splits are
    disjoint (no test problem text appears in train, for any sizes and seeds). A smaller ``num_examples`` gives
    a prefix of a larger one. ``difficulty`` holds the task's documented knobs; an unknown knob or a bad value
    raises :class:`segrl.errors.UserError`.

``reward(prompts, completions, **columns) -> list[float | None]``
    TRL's reward-function signature (``GRPOTrainer(reward_funcs=[task.reward])`` works as is): the extra dataset
    columns arrive as keyword lists (``answer=[...]``), and TRL's own extra keywords (``completion_ids``,
    ``trainer_state``, ...) are accepted and ignored. A completion may be a plain string or a conversational list
    of messages (``[{"role": "assistant", "content": "..."}]``). Garbage completions score the task's minimum;
    they never raise.

``corpus(seed: int = 0) -> list[str]``
    Text to train the task's own tokenizer on (used by the ``tiny-<task>`` presets, :mod:`segrl.tiny`).

Built-in tasks: ``arith`` (multi-step arithmetic word problems), ``facts`` (K one-line arithmetic facts per
prompt, each true or false; a per-line oracle reward and Bradley-Terry preference pairs), ``sentiment`` (review
openings to continue; VADER's compound score of the continuation as the reward, and VADER word scores for a lexicon
critic), ``toymt`` (translate simple English sentences into two toy languages; word-level F1 against the reference as
the reward, and simulated MQM ratings of MT systems of known quality for the ReMedy metric), ``grounding`` (text
scenes of shapes and a referring question, answered with a box; the LENS rewards).

Two optional members: ``reward_funcs`` (a list of reward functions in the same signature, the training rewards
that GRPO sums and logs one by one, where a task has several; ``grounding``: format, box IoU², mask IoU²; else
``[reward]``) and ``metrics(prompts, completions, **columns) -> dict[str, float]`` (held-out metrics logged beside
the mean ``reward``; ``grounding``: format rate, mean box and mask IoU).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from segrl.errors import UserError

#: Task name -> module that implements it (imported only when asked for).
TASKS: dict[str, str] = {
    "arith": "segrl.tasks.arith",
    "facts": "segrl.tasks.facts",
    "grounding": "segrl.tasks.grounding",
    "sentiment": "segrl.tasks.sentiment",
    "toymt": "segrl.tasks.toymt",
}


def task_names() -> list[str]:
    """The names of the built-in tasks, sorted."""
    return sorted(TASKS)


def get_task(name: str) -> ModuleType:
    """Return the module of the built-in task ``name`` (see this package's docstring for its contract).

    Raises :class:`UserError` for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in TASKS:
        raise UserError(f"Unknown task {name!r}; the built-in tasks are: {', '.join(task_names())}")
    return importlib.import_module(TASKS[name])


def completion_text(completion: Any) -> str | None:
    """Plain text of a completion given as a string or as TRL's conversational messages (the assistant messages'
    text, content blocks included, joined by newlines); None for anything else. Never raises."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, (list, tuple)):
        parts = []
        for message in completion:
            if not isinstance(message, dict) or message.get("role", "assistant") != "assistant":
                continue
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):  # content blocks: [{"type": "text", "text": ...}]
                parts.extend(
                    b["text"] for b in content if isinstance(b, dict) and isinstance(b.get("text"), str)
                )
        return "\n".join(parts)
    return None


def with_defaults(task: str, defaults: dict[str, Any], difficulty: dict[str, Any]) -> dict[str, Any]:
    """``difficulty`` over the task's ``defaults``; an unknown knob raises :class:`UserError` listing the knobs."""
    unknown = sorted(set(difficulty) - set(defaults))
    if unknown:
        raise UserError(
            f"{task}: unknown difficulty knob(s) {', '.join(unknown)}; the knobs are {', '.join(defaults)}"
        )
    return {**defaults, **difficulty}


def check_call(task: str, splits: tuple[str, ...], split: Any, size: Any, seed: Any,
               size_name: str = "num_examples") -> None:
    """Raise :class:`UserError` unless ``split`` is one of ``splits``, ``size`` an integer >= 0 and ``seed`` an
    integer (bools are not integers here): the arguments every task's ``make_rows`` takes."""
    if split not in splits:
        raise UserError(f"{task}: split must be one of {', '.join(splits)}, got {split!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise UserError(f"{task}: {size_name} must be an integer >= 0, got {size!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"{task}: seed must be an integer, got {seed!r}")


def need_int(task: str, knobs: dict[str, Any], name: str, low: int) -> None:
    """Raise :class:`UserError` unless ``knobs[name]`` is an integer (not a bool) >= ``low``."""
    value = knobs[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{task}: difficulty knob {name} must be an integer >= {low}, got {value!r}")


def canonical_ops(task: str, ops: Any) -> str:
    """A non-empty string of operators from ``+-*`` in canonical order without repeats, else :class:`UserError`."""
    if not isinstance(ops, str) or not ops or set(ops) - set("+-*"):
        raise UserError(f"{task}: difficulty knob ops must be a non-empty string of '+', '-', '*', got {ops!r}")
    return "".join(o for o in "+-*" if o in ops)


__all__ = ["TASKS", "canonical_ops", "check_call", "completion_text", "get_task", "need_int", "task_names", "with_defaults"]
