"""Monte Carlo rollouts that encode each state once: N sampled continuations share their state's KV cache.

SPO-chain values a segment-start state (prompt + completion prefix) by sampling N continuations from it. Handing
``generate`` the state N times, as TRL's ``_generate_single_turn`` would, encodes (prefills) the same prefix N
times. :func:`sample_continuations` instead runs one forward pass over the distinct, left-padded states minus their
last token, repeats that cache N times along the batch (``DynamicCache.batch_repeat_interleave``), and calls
``generate`` on the N-times-repeated full states with it, so that ``generate`` encodes only each row's last token
and then samples as usual.

The samples come from the same distribution as the repeated-state call: the same ``GenerationConfig`` (TRL's, with
its temperature, top-k, top-p, min-p and repetition penalty, which sees the whole state) drives the same logits
processors; the same left padding, attention mask and position ids (``cumsum(mask) - 1``, as ``generate`` derives
them) give the same keys and values, up to float rounding of differently shaped matmuls. Output: completion ids per
row, cut after the first EOS, as ``_generate_single_turn`` returns them.

Limits: only caches made of plain full-attention layers (``DynamicLayer``) are shared; sliding-window or other
cache layers, a ``cache_implementation`` in the generation config, or a model that returns another cache make
:func:`sample_continuations` return ``None`` (logged once per reason), and the caller rolls out the old way. The
model must be the unwrapped module (the caller enters TRL's ``unwrap_model_for_generation``); vLLM and transformers'
continuous batching are the caller's business. The cache repeated N times takes as much memory as the old path's.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging

import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, DynamicLayer

logger = logging.getLogger(__name__)

__all__ = ["sample_continuations", "shared_prefix_inputs"]


def sample_continuations(model, states: list[list[int]], num_samples: int, max_new_tokens: int,
                         generation_config: GenerationConfig) -> list[list[int]] | None:
    """Sample ``num_samples`` continuations of each state, encoding every state once.

    Args:
        model: the (unwrapped) causal LM.
        states: S non-empty token-id lists (prompt + completion prefix), distinct or not.
        num_samples: N continuations per state.
        max_new_tokens: the most tokens a continuation may have.
        generation_config: the sampling settings, as ``generate`` takes them (TRL's ``trainer.generation_config``);
            its ``pad_token_id`` pads and its ``eos_token_id`` ends a continuation.

    Returns:
        S x N token-id lists, state-major (state i's samples are rows i*N .. i*N + N - 1), each ending with EOS if
        it stopped there; or ``None`` when this model's cache cannot be shared (see the module docstring).
    """
    inputs = shared_prefix_inputs(model, states, num_samples, generation_config)
    if inputs is None:
        return None
    config = copy.deepcopy(generation_config)
    config.max_new_tokens = max_new_tokens
    sequences = model.generate(**inputs, generation_config=config)  # (S*N, W + generated), under no_grad
    return _cut_at_eos(sequences[:, inputs["input_ids"].shape[1]:], generation_config.eos_token_id)


@torch.no_grad()
def shared_prefix_inputs(model, states: list[list[int]], num_samples: int,
                         generation_config: GenerationConfig) -> dict | None:
    """``generate``'s inputs for ``num_samples`` continuations of each state, every state encoded once.

    Returns ``input_ids`` and ``attention_mask`` (S*N, W): each state left-padded to the longest, W, with
    ``generation_config.pad_token_id``, repeated N times (state-major); and ``cache``, the ``DynamicCache`` of their
    first W - 1 columns (layer tensors (S*N, heads, W - 1, head_dim)), so that ``generate`` encodes only the last
    column (absent when W = 1: there is no prefix to share). ``None`` when the cache cannot be shared.
    """
    device = next(model.parameters()).device
    width = max(len(s) for s in states)
    ids = torch.full((len(states), width), generation_config.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros(len(states), width, dtype=torch.long, device=device)
    for row, state in enumerate(states):
        ids[row, width - len(state):] = torch.tensor(state, device=device)
        mask[row, width - len(state):] = 1
    inputs = {"input_ids": ids.repeat_interleave(num_samples, dim=0),
              "attention_mask": mask.repeat_interleave(num_samples, dim=0)}
    if width > 1:
        cache = _prefix_cache(model, ids[:, :-1], mask[:, :-1], generation_config)
        if cache is None:
            return None
        cache.batch_repeat_interleave(num_samples)
        inputs["cache"] = cache
    return inputs


def _prefix_cache(model, ids: torch.Tensor, mask: torch.Tensor, generation_config: GenerationConfig):
    """The ``DynamicCache`` of the (S, W - 1) left-padded prefixes ``ids`` (``mask`` 1 on real tokens), or ``None``
    when it would not be a plain full-attention one. Position ids are those ``generate`` derives from the mask."""
    if generation_config.cache_implementation is not None:
        _log_once(f"the generation config asks for a {generation_config.cache_implementation!r} cache")
        return None
    cache = DynamicCache(config=model.config)  # layer types from the config: sliding windows show up here
    if not _plain(cache):
        _log_once(f"the model's cache has {_layer_kinds(cache)} layers")
        return None
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    # The prefix's logits are never read; the last position's is the cheapest to compute where the model allows.
    extra = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True, **extra)
    if out.cache is not cache or not _plain(cache) or cache.get_seq_length() != ids.shape[1]:
        _log_once(f"the model returned a {type(out.cache).__name__} with {_layer_kinds(out.cache)} layers")
        return None
    return cache


def _plain(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def _layer_kinds(cache) -> str:
    return ", ".join(sorted({type(layer).__name__ for layer in getattr(cache, "layers", None) or []})) or "no"


@functools.cache  # once per reason and process
def _log_once(reason: str) -> None:
    logger.warning("Monte Carlo rollouts re-encode each state for every sample: %s, so the prefix cache is not "
                   "shared", reason)


def _cut_at_eos(completions: torch.Tensor, eos_token_id) -> list[list[int]]:
    """(B, T) generated ids -> B lists, each cut after its first EOS (later columns are generate's padding)."""
    if eos_token_id is None:
        eos_token_id = []
    eos = torch.tensor(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id],
                       dtype=torch.long, device=completions.device)
    is_eos = torch.isin(completions, eos)
    lengths = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completions.shape[1])
    return [row[:length].tolist() for row, length in zip(completions.cpu(), lengths.tolist())]
