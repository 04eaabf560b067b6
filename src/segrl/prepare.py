"""Segmentation as data preparation: add a frozen reference model's entropy segments to a preference dataset.

The segment reward model (:mod:`segrl.segment_rm`) is trained on responses cut by the entropy threshold of the
reference model. Computing the entropies is one forward pass of that model per response; doing it once here, when
the data is prepared, means reward-model training runs one model instead of two (as the paper does).

Input rows hold ``prompt``, ``chosen`` and ``rejected`` (TRL's preference columns): plain strings, or
conversational message lists (the prompt goes through the tokenizer's chat template with the generation prompt, a
response is the text of its assistant messages). Every other column is kept as it is.

Tokens are laid out as at RL time: ``prompt_ids`` as TRL's GRPO tokenizes a prompt, then the response tokenized on
its own (no special tokens), then EOS. Added columns:

- ``chosen_ids``, ``rejected_ids``: the full token ids (prompt, response, EOS); TRL's ``RewardTrainer`` takes a
  dataset with these columns as already tokenized;
- ``prompt_length``: the number of prompt tokens;
- ``chosen_segment_ids``, ``rejected_segment_ids``: per token of the ids above, the segment index (entropy >
  ``threshold`` opens a segment), -1 on the prompt and on EOS (the tail rule).

Skipped rows, counted and reported, never silently dropped: chosen identical to rejected, an empty response, a pair
longer than ``max_length`` tokens or than the model's context (``max_position_embeddings``). A row with a missing
or non-text field is an error naming the row.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from segrl import segmentation as seg
from segrl.errors import UserError
from segrl.scoring import completion_entropies_and_logps

logger = logging.getLogger(__name__)

__all__ = ["load_preference_rows", "prepare_segments", "tokenize_pair", "tokenize_prompt", "write_jsonl"]

REQUIRED = ("prompt", "chosen", "rejected")


def load_preference_rows(source: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Rows of a preference dataset: a JSONL file, or anything ``datasets.load_dataset`` opens (a hub id in the
    local cache, a directory saved with ``save_to_disk`` is not: use JSONL for those)."""
    from segrl.files import read_jsonl

    path = Path(source)
    if path.suffix == ".jsonl" or path.is_file():
        return read_jsonl(path, {})
    from datasets import load_dataset

    try:
        return list(load_dataset(str(source), split=split))
    except Exception as err:  # datasets raises many types for "not found"; all mean the same to the user
        raise UserError(f"Cannot open the preference dataset '{source}': {err}") from err


def _response_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) for m in value):
        parts = [m.get("content") for m in value if m.get("role", "assistant") == "assistant"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    return None


def tokenize_pair(tokenizer, row: dict[str, Any], where: str) -> tuple[list[int], list[int], list[int]]:
    """``(prompt_ids, chosen_ids, rejected_ids)`` of one row; response ids end with EOS."""
    for name in REQUIRED:
        if name not in row:
            raise UserError(f"{where}: missing field '{name}'")
    prompt_ids = tokenize_prompt(tokenizer, row["prompt"], where)
    responses = []
    for name in ("chosen", "rejected"):
        text = _response_text(row[name])
        if text is None:
            raise UserError(f"{where}: field '{name}' should be text or a list of messages")
        responses.append(tokenizer(text=text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return prompt_ids, responses[0], responses[1]


def tokenize_prompt(tokenizer, prompt: Any, where: str) -> list[int]:
    """Token ids of a prompt as GRPO lays it out: plain text as the tokenizer encodes it (special tokens included),
    a list of messages through the chat template with the generation prompt."""
    if isinstance(prompt, str):
        return list(tokenizer(text=prompt)["input_ids"])
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        if getattr(tokenizer, "chat_template", None) is None:
            raise UserError(f"{where}: field 'prompt' is a list of messages, but the model's tokenizer has no chat "
                            "template to format it; give the prompt as text")
        bad = [m for m in prompt if not isinstance(m.get("role"), str) or "content" not in m]
        if bad:
            raise UserError(f"{where}: field 'prompt': every message needs a 'role' (text) and a 'content', got "
                            f"{bad[0]!r:.100}")
        try:
            return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                      return_dict=True)["input_ids"])
        except Exception as err:  # the template raised (jinja2's TemplateError, e.g. "roles must alternate")
            raise UserError(f"{where}: field 'prompt': the chat template refused the messages "
                            f"({str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__})") from None
    raise UserError(f"{where}: field 'prompt' should be text or a list of messages, got {type(prompt).__name__}")


def _skip_reason(row: dict[str, Any], ids: tuple[list[int], list[int], list[int]], max_length: int | None,
                 context: int | None = None) -> str | None:
    if _response_text(row["chosen"]) == _response_text(row["rejected"]):
        return "chosen equals rejected"
    prompt_ids, chosen_ids, rejected_ids = ids
    if len(chosen_ids) == 1 or len(rejected_ids) == 1:  # EOS only
        return "empty response"
    longest = len(prompt_ids) + max(len(chosen_ids), len(rejected_ids))
    if max_length is not None and longest > max_length:
        return f"longer than max_length={max_length}"
    if context is not None and longest > context:
        return f"longer than the model's context of {context} tokens"
    return None


@torch.no_grad()
def _segment_ids(model, sequences: list[tuple[list[int], int]], threshold: float, pad_id: int) -> list[list[int]]:
    """Segment ids over each full sequence (prompt + response + EOS) of one batch, -1 on the prompt and EOS."""
    device = next(model.parameters()).device
    ids = pad_sequence([torch.tensor(s) for s, _ in sequences], batch_first=True, padding_value=pad_id).to(device)
    lengths = torch.tensor([len(s) for s, _ in sequences], device=device)
    positions = torch.arange(ids.shape[1], device=device)
    attention = positions < lengths[:, None]
    # position 0 has no distribution that predicts it, and is always a prompt token: give it entropy 0
    entropy, _ = completion_entropies_and_logps(model, ids, attention.long(), ids.shape[1] - 1)
    entropy = torch.nn.functional.pad(entropy, (1, 0))
    prompt_lengths = torch.tensor([p for _, p in sequences], device=device)
    body = attention & (positions >= prompt_lengths[:, None]) & (positions < (lengths - 1)[:, None])
    segment_ids = seg.entropy_segments(entropy, body, threshold)
    return [row[:length].tolist() for row, length in zip(segment_ids.cpu(), lengths.tolist())]


def prepare_segments(
    rows: Iterable[dict[str, Any]], model, tokenizer, threshold: float, max_length: int | None = None,
    batch_size: int = 16, progress: Callable[[int, int], None] | None = None, source: str = "input",
) -> tuple[list[dict[str, Any]], Counter]:
    """Add token ids and entropy segments (see the module docstring) to preference rows.

    Args:
        rows: dicts with ``prompt``, ``chosen``, ``rejected``.
        model: the frozen reference causal LM (the SFT model the reward model starts from).
        tokenizer: its tokenizer.
        threshold: entropy threshold c in nats (1.75 for Phi-3-mini, 2.0 for Llama-3 8B in the paper).
        max_length: skip pairs whose prompt + longer response exceeds this many tokens.
        batch_size: sequences per forward pass.
        progress: called with (rows done, rows total) after each batch.
        source: name of the input in error messages.

    Returns:
        ``(prepared_rows, skipped)``: the kept rows with the added columns, and the number of rows skipped per
        reason.
    """
    rows = list(rows)
    if not rows:
        raise UserError(f"{source} holds no rows")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise UserError(f"the entropy threshold must be a finite number, got {threshold!r}")
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    skipped: Counter = Counter()
    kept, sequences = [], []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise UserError(f"{source}, row {index}: expected an object with prompt/chosen/rejected")
        ids = tokenize_pair(tokenizer, row, f"{source}, row {index}")
        reason = _skip_reason(row, ids, max_length, context)
        if reason is not None:
            skipped[reason] += 1
            continue
        prompt_ids, chosen_ids, rejected_ids = ids
        kept.append((row, prompt_ids, chosen_ids, rejected_ids))
        sequences += [(prompt_ids + chosen_ids, len(prompt_ids)), (prompt_ids + rejected_ids, len(prompt_ids))]
    if not kept:
        raise UserError(f"{source}: every row was skipped ({dict(skipped)})")

    # Long and short sequences in separate batches: sort by length, segment, put back in order.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    segment_ids: list[list[int] | None] = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        for i, ids in zip(batch, _segment_ids(model, [sequences[i] for i in batch], threshold, tokenizer.pad_token_id)):
            segment_ids[i] = ids
        if progress is not None:
            progress(min(start + batch_size, len(order)) // 2, len(kept))

    prepared = []
    for k, (row, prompt_ids, chosen_ids, rejected_ids) in enumerate(kept):
        prepared.append({
            **row,
            "chosen_ids": prompt_ids + chosen_ids,
            "rejected_ids": prompt_ids + rejected_ids,
            "prompt_length": len(prompt_ids),
            "chosen_segment_ids": segment_ids[2 * k],
            "rejected_segment_ids": segment_ids[2 * k + 1],
        })
    if skipped:
        logger.warning("%s: skipped %d of %d rows: %s", source, sum(skipped.values()), len(rows), dict(skipped))
    return prepared, skipped


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically (a crash leaves any earlier file in place)."""
    from segrl.files import write_text_atomic

    return write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))
