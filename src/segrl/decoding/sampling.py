"""The baselines of CARDS: vanilla sampling and Best-of-N, with the same sampler and the same reward source.

- **Vanilla**: one sample per prompt (top-k 40 at temperature 0.7, up to ``max_new_tokens``); its reward is measured
  for the report, not used (``rm_calls`` 0).
- **Best-of-N** (N = 4, 8, 16 in the benchmark): N independent samples per prompt, each scored once by the reward
  source on the whole response; the highest score wins (a sample the scorer failed on never wins unless all did).

Batching: the prompt is prefilled once and its KV cache copied to its N rows (the prompt is not recomputed per
sample); rows leave the batch as they reach EOS. Each sample draws from its own random stream keyed by (seed,
prompt index, sample index), so sample j of a prompt is the same whatever N, batch size or neighbours: Best-of-4's
candidates are the first four of Best-of-16's, and vanilla's is the first of both.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from segrl.decoding.base import Decoded, check_positive_ints, encode_prompt, eos_token_ids, row_generator
from segrl.decoding.batch import SequenceBatch, sample_top_k
from segrl.decoding.scorers import safe_scores
from segrl.errors import UserError

__all__ = ["SamplingConfig", "best_of_n", "sample_responses"]


@dataclass
class SamplingConfig:
    """Vanilla sampling (``n=1``) and Best-of-N."""

    n: int = 1
    """Samples per prompt; Best-of-N keeps the best-scored one. With 1 and ``select=False``: vanilla sampling."""
    top_k: int = 40
    """Sample from the ``top_k`` most likely tokens (CARDS' setting)."""
    temperature: float = 0.7
    """Sampling temperature (CARDS samples at its beta, 0.7)."""
    max_new_tokens: int = 128
    """Response length cap (CARDS' L_max)."""
    batch_size: int = 16
    """Sequences decoded together (prompts per batch: ``max(1, batch_size // n)``)."""
    seed: int = 0
    """Seeds every sample's random stream."""

    def __post_init__(self):
        check_positive_ints(self, ("n", "top_k", "max_new_tokens", "batch_size"))
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature must be a finite number > 0, got {self.temperature!r}")


@torch.no_grad()
def sample_responses(
    model, prompt_ids: list[list[int]], generators: list[list[torch.Generator]], eos_ids: set[int], top_k: int,
    temperature: float, max_new_tokens: int, pad_token_id: int = 0,
) -> list[list[list[int]]]:
    """Sample ``len(generators[i])`` responses for each prompt i, all in one batch.

    Args:
        prompt_ids: P non-empty prompts' token ids.
        generators: for each prompt, one generator per sample.
        eos_ids: a sampled id in this set ends its response (and is kept in it).

    Returns:
        ``responses[i][j]``: the token ids of prompt i's sample j.
    """
    counts = [len(g) for g in generators]
    batch, first_logits = SequenceBatch.prefill(model, prompt_ids, pad_token_id)
    rows = torch.arange(len(prompt_ids), device=first_logits.device).repeat_interleave(torch.tensor(counts, device=first_logits.device))
    batch.select(rows)
    logits = first_logits[rows]
    owners = [(i, j) for i, c in enumerate(counts) for j in range(c)]  # the (prompt, sample) of each batch row
    flat_generators = [generators[i][j] for i, j in owners]
    responses: list[list[list[int]]] = [[[] for _ in range(c)] for c in counts]
    device = logits.device
    for step in range(max_new_tokens):
        tokens = sample_top_k(logits, flat_generators, top_k, temperature)
        open_rows = []
        for row, (token, (i, j)) in enumerate(zip(tokens.tolist(), owners)):
            responses[i][j].append(token)
            if token not in eos_ids:
                open_rows.append(row)
        if not open_rows or step == max_new_tokens - 1:
            break
        if len(open_rows) < len(owners):  # finished rows leave the batch
            keep = torch.tensor(open_rows, device=device)
            batch.select(keep)
            tokens, owners = tokens[keep], [owners[r] for r in open_rows]
            flat_generators = [flat_generators[r] for r in open_rows]
        logits = batch.feed(tokens[:, None], torch.ones(len(owners), 1, dtype=torch.bool, device=device))[:, -1]
    return responses


def best_of_n(
    model, tokenizer, scorer, prompts: list[Any], config: SamplingConfig, select: bool = True
) -> Iterator[Decoded]:
    """Decode ``prompts`` by Best-of-N (``select=True``) or vanilla sampling (``n=1, select=False``).

    Yields one :class:`Decoded` per prompt, in input order. A prompt that is empty or too long for the context is
    yielded as skipped with its ``error``; the rest go on.
    """
    if not select and config.n != 1:
        raise UserError("vanilla sampling draws one sample per prompt (n=1)")
    eos_ids = eos_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    per_batch = max(1, config.batch_size // config.n)
    for start in range(0, len(prompts), per_batch):
        began = time.perf_counter()
        indices = range(start, min(start + per_batch, len(prompts)))
        encoded, skipped = {}, {}
        for index in indices:
            try:
                encoded[index] = encode_prompt(tokenizer, model, prompts[index], config.max_new_tokens)
            except UserError as err:
                skipped[index] = str(err)
        responses = {}
        if encoded:
            generators = [[row_generator(config.seed, "sample", i, j) for j in range(config.n)] for i in encoded]
            sampled = sample_responses(model, list(encoded.values()), generators, eos_ids, config.top_k,
                                       config.temperature, config.max_new_tokens, pad)
            responses = dict(zip(encoded, sampled))
        flat = [(i, ids) for i in encoded for ids in responses[i]]
        texts = [tokenizer.decode(ids, skip_special_tokens=True) for _, ids in flat]
        scores, _ = safe_scores(scorer, [prompts[i] for i, _ in flat], texts)
        elapsed = time.perf_counter() - began
        position = 0
        for index in indices:
            if index in skipped:
                yield Decoded(index, prompts[index], None, None, error=skipped[index])
                continue
            n = config.n
            own = scores[position : position + n]
            best = max(range(n), key=lambda j: -math.inf if math.isnan(own[j]) else own[j])
            ids, text = responses[index][best], texts[position + best]
            prompt_len = len(encoded[index])
            yield Decoded(
                index, prompts[index], text, None if math.isnan(own[best]) else own[best],
                tokens=len(ids),
                policy_tokens=sum(len(r) for r in responses[index]),
                rm_calls=n if select else 0,
                rm_tokens=sum(prompt_len + len(r) for r in responses[index]) if select else 0,
                wall_time=elapsed,
                finish="eos" if ids and ids[-1] in eos_ids else "length",
                reward_errors=sum(math.isnan(s) for s in own),
            )
            position += n
