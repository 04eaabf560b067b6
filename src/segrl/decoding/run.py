"""A decoding job: one method over many prompts, streamed to disk, with totals.

:func:`decode` picks the method (``cards``, ``bon``, ``vanilla``). :func:`run` writes one JSON line per prompt as it
finishes to ``<out>.partial`` (flushed, so a crash keeps every finished prompt), then the rows in input order to
``<out>`` and the totals to ``<out stem>.summary.json``, both through atomic renames.

:func:`estimate_target_reward` sets CARDS' r* the paper's way, "just above the average reward of plain sampling":
vanilla samples of the first prompts (their own random streams), r* = mean + 0.5 · standard deviation of their
rewards (segrl's reading of "just above"; pass ``target_reward`` to choose it yourself).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from segrl.decoding.base import Decoded
from segrl.decoding.cards import CardsConfig, cards
from segrl.decoding.sampling import SamplingConfig, best_of_n
from segrl.errors import UserError
from segrl.files import OutputError, write_text_atomic

__all__ = ["METHODS", "decode", "estimate_target_reward", "run", "summarize"]

METHODS = ("cards", "bon", "vanilla")


def decode(method: str, model, tokenizer, scorer, prompts: list[Any], config: CardsConfig | SamplingConfig
           ) -> Iterator[Decoded]:
    """Decode ``prompts`` with ``method``; yields one :class:`Decoded` per prompt (CARDS in finishing order)."""
    if method == "cards":
        if not isinstance(config, CardsConfig):
            raise UserError("cards needs a CardsConfig")
        return cards(model, tokenizer, scorer, prompts, config)
    if method not in METHODS:
        raise UserError(f"unknown decoding method {method!r}; expected one of {', '.join(METHODS)}")
    if not isinstance(config, SamplingConfig):
        raise UserError(f"{method} needs a SamplingConfig")
    return best_of_n(model, tokenizer, scorer, prompts, config, select=method == "bon")


def estimate_target_reward(model, tokenizer, scorer, prompts: list[Any], config: SamplingConfig,
                           num_prompts: int = 16) -> tuple[float, dict[str, float]]:
    """r* = mean + 0.5 · std of vanilla rewards on the first ``num_prompts`` prompts; returns (r*, what it saw)."""
    sample = prompts[:num_prompts]
    results = list(best_of_n(model, tokenizer, scorer, sample, replace(config, n=1, seed=config.seed + 1), select=False))
    rewards = [r.reward for r in results if r.reward is not None]
    if len(rewards) < 2:
        raise UserError("cannot estimate the target reward: fewer than 2 calibration prompts were scored; "
                        "pass --target_reward")
    mean, std = statistics.fmean(rewards), statistics.stdev(rewards)
    return mean + 0.5 * std, {"calibration_prompts": len(rewards), "vanilla_mean": mean, "vanilla_std": std}


def summarize(results: list[Decoded], wall_time: float) -> dict[str, Any]:
    """Totals over a job: mean reward over scored prompts, and the costs summed over all prompts."""
    decoded = [r for r in results if r.error is None]
    rewards = [r.reward for r in decoded if r.reward is not None]
    total = {name: sum(getattr(r, name) for r in decoded) for name in
             ("tokens", "policy_tokens", "rm_calls", "rm_tokens", "segments", "rejections", "fallbacks",
              "reward_errors")}
    return {
        "prompts": len(results),
        "skipped": len(results) - len(decoded),
        "scored": len(rewards),
        "mean_reward": statistics.fmean(rewards) if rewards else None,
        **total,
        "eos_share": sum(r.finish == "eos" for r in decoded) / len(decoded) if decoded else None,
        "wall_time": wall_time,
        "prompts_per_second": len(decoded) / wall_time if wall_time > 0 else None,
    }


def run(method: str, model, tokenizer, scorer, prompts: list[Any], config: CardsConfig | SamplingConfig,
        out: str | Path, extra: dict[str, Any] | None = None,
        progress: Callable[[Decoded, int, int], None] | None = None) -> dict[str, Any]:
    """Decode and write ``out`` (JSONL, input order) and ``<out stem>.summary.json``; return the summary.

    ``progress(result, done, total)`` is called after each prompt. ``extra`` is recorded in the summary (e.g. how
    r* was chosen).
    """
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle = partial.open("w", encoding="utf-8")
    except OSError as err:
        raise OutputError(f"cannot write {partial}: {err.strerror or err}") from err
    results: list[Decoded] = []
    began = time.perf_counter()
    with handle:
        for result in decode(method, model, tokenizer, scorer, prompts, config):
            results.append(result)
            handle.write(json.dumps(_jsonable(result.to_dict()), ensure_ascii=False) + "\n")
            handle.flush()
            if progress is not None:
                progress(result, len(results), len(prompts))
    wall_time = time.perf_counter() - began
    results.sort(key=lambda r: r.index)
    lines = "".join(json.dumps(_jsonable(r.to_dict()), ensure_ascii=False) + "\n" for r in results)
    write_text_atomic(out, lines)
    from segrl.training import run_record

    summary = {"method": method, "config": asdict(config), **(extra or {}), **summarize(results, wall_time),
               **run_record()}
    write_text_atomic(out.with_name(out.stem + ".summary.json"), json.dumps(_jsonable(summary), indent=2) + "\n")
    partial.unlink()
    return summary


def _jsonable(value):
    """NaN and infinities become null: JSON has no such numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value
