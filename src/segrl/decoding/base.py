"""What every decoding method shares: the per-prompt result, prompt checks, per-row random streams."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import torch

from segrl.errors import UserError

__all__ = ["Decoded", "check_positive_ints", "encode_prompt", "eos_token_ids", "row_generator"]


@dataclass
class Decoded:
    """One prompt's decoded response and what it cost.

    Attributes:
        index: the prompt's position in the input.
        prompt: the prompt as given.
        text: the response (special tokens removed); None when the prompt was skipped.
        reward: the scorer's reward of the response; None when skipped or when the scorer failed on it.
        tokens: response tokens (EOS included when the response ended with it).
        policy_tokens: tokens the policy ran forward after the prompt: every sampled token, rejected candidates
            included, and tokens fed again (CARDS' fallback to an earlier candidate).
        rm_calls: reward evaluations the method made (vanilla makes none: its reward is measured, not used).
        rm_tokens: prompt + response tokens (policy tokenizer) summed over those evaluations.
        wall_time: seconds from the prompt entering the batch to its response being done (latency, shared with
            the prompts decoded beside it; the job's total wall time is the cost).
        finish: ``"eos"``, ``"length"`` (``max_new_tokens`` reached) or ``"skipped"``.
        segments: CARDS: accepted segments.
        rejections: CARDS: rejected candidates.
        fallbacks: CARDS: positions where ``max_rejections`` rejections in a row forced the best candidate.
        reward_errors: evaluations where the scorer raised or gave a non-finite score (counted as rejections by
            CARDS, never chosen by Best-of-N unless all fail).
        error: why the prompt was skipped, if it was.
    """

    index: int
    prompt: Any
    text: str | None
    reward: float | None
    tokens: int = 0
    policy_tokens: int = 0
    rm_calls: int = 0
    rm_tokens: int = 0
    wall_time: float = 0.0
    finish: str = "skipped"
    segments: int = 0
    rejections: int = 0
    fallbacks: int = 0
    reward_errors: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def encode_prompt(tokenizer, model, prompt: Any, max_new_tokens: int) -> list[int]:
    """The prompt's token ids; raises :class:`UserError` for an empty prompt or one too long for the context.

    A prompt is too long when prompt + ``max_new_tokens`` exceeds the model's ``max_position_embeddings``.
    """
    from segrl.prepare import tokenize_prompt

    if (isinstance(prompt, str) and not prompt.strip()) or (isinstance(prompt, list) and not prompt):
        raise UserError("the prompt is empty")
    ids = tokenize_prompt(tokenizer, prompt, "prompt")
    if not ids:
        raise UserError("the prompt has no tokens")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and len(ids) + max_new_tokens > context:
        raise UserError(f"the prompt has {len(ids)} tokens; with max_new_tokens={max_new_tokens} it exceeds the "
                        f"model's context of {context}")
    return ids


def row_generator(seed: int, *key: Any) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and a key (method, prompt index, sample index): a prompt's samples do
    not depend on which prompts share its batch, nor on the batch size."""
    digest = hashlib.sha256(repr((seed, *key)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def eos_token_ids(model, tokenizer) -> set[int]:
    """The ids that end a response: the tokenizer's EOS and the model's generation config's."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if not ids:
        raise UserError("the tokenizer and the model define no EOS token; a response could never end")
    return ids


def check_positive_ints(config, names: tuple[str, ...]) -> None:
    """Raise :class:`UserError` unless each named field of ``config`` is an integer >= 1."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be an integer >= 1, got {value!r}")
