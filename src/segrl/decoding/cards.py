"""CARDS: cascade reward sampling (Li et al., "Cascade Reward Sampling for Efficient Decoding-Time Alignment",
arXiv 2406.16306, COLM 2025).

Grow the response one segment at a time and keep a segment only if the reward model likes the prefix enough:

1. Initial threshold ``r0 = (1 − α)·RM(x) + α·r*`` (:func:`initial_threshold`), where RM(x) scores the bare prompt
   (an empty response) and r* is the target reward.
2. Threshold for a candidate whose response (accepted prefix + new segment) has t tokens:
   ``τ(t) = min(r*, r0 + (t / L_max)·(r* − r0))`` (:func:`reward_threshold`).
3. Propose a segment from the accepted prefix by the uncertainty cascade: top-k (40) sampling at temperature 0.7;
   before each token, the entropy H of the full next-token distribution (temperature 1) is computed, and the
   segment ends *before* that token once it holds ≥ 4 tokens and H ≥ τ_u = 3.0
   (:func:`segrl.segmentation.cascade_ends_segment`); at most 64 tokens. A segment also ends at EOS.
4. Score ``r = RM(x, prefix + segment)``, the ordinary reward on an incomplete response.
5. Accept with probability ``min(1, exp((r − τ(t)) / β))`` (``"soft"``, β = 0.7) or iff ``r ≥ τ(t)`` (``"hard"``)
   (:func:`acceptance_probability`).
6. After K = 20 rejections in a row, accept the best candidate seen for this position.
7. Stop at EOS or when the response reaches L_max = 128 tokens.

Defaults are the paper's: τ_u 3.0, α 0.5, β 0.7, top-k 40, L_max 128, K 20, and the paper's code samples at
temperature β (here ``temperature``, 0.7, a separate field so the baselines share it). r* has no default: the paper
sets it just above the average reward of plain sampling with the same reward model (``segrl decode`` estimates it
that way when it is not given).

Beyond the paper's code, which decodes one prompt at a time and recomputes nothing it could keep:

- **Batched**: ``batch_size`` prompts decode together; every round proposes one candidate segment for each of them
  in one batched sampling loop, and scores all candidates with one scorer call. A prompt that finishes leaves the
  batch and the next prompt takes its place (continuous batching), so one slow prompt does not idle the others.
- **KV cache of the accepted prefix**: kept across retries (:class:`segrl.decoding.batch.SequenceBatch`); a rejected
  candidate's cache columns are dropped, an accepted one's kept, so no prefix is ever recomputed. Only the
  fallback to an earlier (non-latest) best candidate feeds that candidate's tokens again.
- **Per-prompt random streams**: a prompt's output does not depend on the batch it was decoded in
  (:func:`segrl.decoding.base.row_generator`).

Deviations, all small and deliberate:

- After K rejections the fallback takes the best of the K candidates just rejected (the paper's code evaluates a
  (K+1)-th candidate before falling back). A candidate the scorer failed on (exception or non-finite score) is
  rejected and ranks below every scored one; it is counted in ``reward_errors``.
- A candidate segment is cut so that the response never exceeds L_max (the paper's code can overshoot by up to a
  segment), and generation stops at EOS (the paper's code always runs to L_max).
- The candidate's EOS, when sampled, belongs to the segment, and the scorer reads the decoded text without it.

r* unreachable: nothing loops forever. The soft rule accepts any candidate with positive probability, and the
fallback bounds every position to K candidates, so a prompt costs at most about ``K · L_max`` sampled tokens;
``fallbacks`` in the output says how often the target was out of reach.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from segrl.decoding.base import Decoded, check_positive_ints, encode_prompt, eos_token_ids, row_generator
from segrl.decoding.batch import SequenceBatch, sample_top_k
from segrl.decoding.scorers import safe_scores
from segrl.errors import UserError
from segrl.segmentation import cascade_ends_segment, token_entropy

__all__ = ["CardsConfig", "acceptance_probability", "cards", "initial_threshold", "reward_threshold"]

ACCEPTANCE = ("soft", "hard")


@dataclass
class CardsConfig:
    """CARDS' settings; the defaults are the paper's."""

    target_reward: float
    """r*: the reward a response should reach (no default; set it just above plain sampling's mean reward)."""
    alpha: float = 0.5
    """α: weight of r* in the initial threshold r0 = (1 − α)·RM(x) + α·r*."""
    beta: float = 0.7
    """β: temperature of the soft acceptance rule min(1, exp((r − τ)/β))."""
    acceptance: str = "soft"
    """``"soft"`` (accept with that probability) or ``"hard"`` (accept iff r ≥ τ)."""
    tau_u: float = 3.0
    """Entropy (nats, temperature 1) of the next-token distribution at or above which a segment ends."""
    min_segment_tokens: int = 4
    """A segment holds at least this many tokens before the entropy rule may end it."""
    max_segment_tokens: int = 64
    """A segment holds at most this many tokens."""
    max_new_tokens: int = 128
    """L_max: response length cap; also the horizon of the threshold schedule."""
    max_rejections: int = 20
    """K: after this many rejections in a row, the best candidate of the position is accepted."""
    top_k: int = 40
    """Sample from the ``top_k`` most likely tokens."""
    temperature: float = 0.7
    """Sampling temperature (the paper's code samples at β)."""
    batch_size: int = 16
    """Prompts decoded together."""
    seed: int = 0
    """Seeds every prompt's random stream (sampling and soft acceptance)."""

    def __post_init__(self):
        if not isinstance(self.target_reward, (int, float)) or not math.isfinite(self.target_reward):
            raise UserError(f"target_reward (r*) must be a finite number, got {self.target_reward!r}")
        if self.acceptance not in ACCEPTANCE:
            raise UserError(f"acceptance must be one of {', '.join(ACCEPTANCE)}, got {self.acceptance!r}")
        check_positive_ints(self, ("min_segment_tokens", "max_segment_tokens", "max_new_tokens", "max_rejections",
                                   "top_k", "batch_size"))
        if self.min_segment_tokens > self.max_segment_tokens:
            raise UserError("min_segment_tokens must be <= max_segment_tokens")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"alpha must be in [0, 1], got {self.alpha!r}")
        if not all(value > 0 and math.isfinite(value) for value in (self.beta, self.temperature)):
            raise UserError(f"beta and temperature must be finite numbers > 0, got {self.beta!r} and "
                            f"{self.temperature!r}")
        if not math.isfinite(self.tau_u):
            raise UserError(f"tau_u must be a finite number, got {self.tau_u!r}")


def initial_threshold(prompt_reward: float, target_reward: float, alpha: float) -> float:
    """r0 = (1 − α)·RM(x) + α·r*. A prompt the scorer cannot score (NaN) starts at r*."""
    if math.isnan(prompt_reward):
        return target_reward
    return (1.0 - alpha) * prompt_reward + alpha * target_reward


def reward_threshold(length: int | torch.Tensor, r0: float | torch.Tensor, target_reward: float,
                     max_new_tokens: int) -> float | torch.Tensor:
    """τ(t) = min(r*, r0 + (t / L_max)·(r* − r0)) for a response of ``length`` = t tokens."""
    tau = r0 + (length / max_new_tokens) * (target_reward - r0)
    if isinstance(tau, torch.Tensor):
        return tau.clamp(max=target_reward)
    return min(target_reward, tau)


def acceptance_probability(reward: float, threshold: float, beta: float, acceptance: str = "soft") -> float:
    """min(1, exp((r − τ)/β)) for ``"soft"``; 1 if r ≥ τ else 0 for ``"hard"``; 0 for a NaN reward."""
    if math.isnan(reward):
        return 0.0
    if acceptance == "hard":
        return 1.0 if reward >= threshold else 0.0
    return min(1.0, math.exp(min(0.0, (reward - threshold) / beta)))


@dataclass
class _Candidate:
    tokens: list[int]
    reward: float
    end_logits: torch.Tensor  # (V,) the next-token logits after the candidate
    ends: bool  # EOS or L_max: the response is complete if this is accepted


@dataclass
class _Prompt:
    """A prompt in the batch: its accepted response so far and its bookkeeping."""

    index: int
    prompt: Any
    prompt_ids: list[int]
    generator: torch.Generator
    r0: float
    started: float
    response: list[int] = field(default_factory=list)
    reward: float = math.nan
    complete: bool = False
    rejections_in_a_row: int = 0
    best: _Candidate | None = None
    refeed: list[int] | None = None  # a fallback candidate whose tokens must enter the cache
    result: Decoded = None  # running counts; filled in at the end


def cards(model, tokenizer, scorer, prompts: list[Any], config: CardsConfig) -> Iterator[Decoded]:
    """Decode ``prompts`` with CARDS. Yields one :class:`Decoded` per prompt as it finishes (not in input order).

    Prompts that are empty or too long for the context are yielded as skipped, with their ``error``.
    """
    return _Decoder(model, tokenizer, scorer, config).run(prompts)


class _Decoder:
    def __init__(self, model, tokenizer, scorer, config: CardsConfig):
        self.model, self.tokenizer, self.scorer, self.config = model, tokenizer, scorer, config
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.batch: SequenceBatch | None = None
        self.prefix_logits: torch.Tensor | None = None  # (B, V) next-token logits after each accepted prefix
        self.rows: list[_Prompt] = []

    @torch.no_grad()
    def run(self, prompts: list[Any]) -> Iterator[Decoded]:
        waiting = iter(range(len(prompts)))
        exhausted = False
        while True:
            if not exhausted and len(self.rows) < self.config.batch_size:
                new, skipped, exhausted = self._take(prompts, waiting, self.config.batch_size - len(self.rows))
                yield from skipped
                self._admit(new)
            if not self.rows:
                if exhausted:
                    return
                continue
            self._round()
            yield from self._finish()

    # ------------------------------------------------------------------------------------------------ admission

    def _take(self, prompts, waiting, room: int):
        new, skipped = [], []
        while len(new) < room:
            index = next(waiting, None)
            if index is None:
                return new, skipped, True
            try:
                ids = encode_prompt(self.tokenizer, self.model, prompts[index], self.config.max_new_tokens)
            except UserError as err:
                skipped.append(Decoded(index, prompts[index], None, None, error=str(err)))
                continue
            new.append((index, prompts[index], ids))
        return new, skipped, False

    def _admit(self, new: list[tuple[int, Any, list[int]]]) -> None:
        if not new:
            return
        started = time.perf_counter()
        prompt_rewards, failures = safe_scores(self.scorer, [p for _, p, _ in new], [""] * len(new))
        batch, logits = SequenceBatch.prefill(self.model, [ids for _, _, ids in new], self.pad)
        for (index, prompt, ids), prompt_reward in zip(new, prompt_rewards):
            row = _Prompt(index, prompt, ids, row_generator(self.config.seed, "cards", index),
                          initial_threshold(prompt_reward, self.config.target_reward, self.config.alpha), started)
            row.result = Decoded(index, prompt, None, None, rm_calls=1, rm_tokens=len(ids),
                                 reward_errors=int(math.isnan(prompt_reward)))
            self.rows.append(row)
        if self.batch is None:
            self.batch, self.prefix_logits = batch, logits
        else:
            self.batch.extend(batch)
            self.prefix_logits = torch.cat([self.prefix_logits, logits])

    # ------------------------------------------------------------------------------------------------ one round

    def _round(self) -> None:
        """Propose one candidate segment per prompt, score them together, accept or reject each."""
        start = self.batch.width
        candidates, end_logits = self._propose()
        texts = [self.tokenizer.decode(row.response + c, skip_special_tokens=True) for row, c in zip(self.rows, candidates)]
        rewards, _ = safe_scores(self.scorer, [row.prompt for row in self.rows], texts)
        keep = torch.zeros(len(self.rows), dtype=torch.bool)
        for b, (row, tokens, reward) in enumerate(zip(self.rows, candidates, rewards)):
            result = row.result
            result.rm_calls += 1
            result.rm_tokens += len(row.prompt_ids) + len(row.response) + len(tokens)
            result.policy_tokens += len(tokens)
            result.reward_errors += int(math.isnan(reward))
            length = len(row.response) + len(tokens)
            candidate = _Candidate(tokens, reward, end_logits[b],
                                   tokens[-1] in self.eos_ids or length >= self.config.max_new_tokens)
            tau = reward_threshold(length, row.r0, self.config.target_reward, self.config.max_new_tokens)
            p_accept = acceptance_probability(reward, tau, self.config.beta, self.config.acceptance)
            accepted = p_accept >= 1.0 or (p_accept > 0.0 and torch.rand(1, generator=row.generator).item() < p_accept)
            if accepted:
                keep[b] = True
                self._accept(b, row, candidate)
                continue
            result.rejections += 1
            row.rejections_in_a_row += 1
            if row.best is None or _rank(reward) > _rank(row.best.reward):
                row.best = candidate
            if row.rejections_in_a_row >= self.config.max_rejections:
                result.fallbacks += 1
                if row.best is candidate:  # its cache columns are there already
                    keep[b] = True
                else:
                    row.refeed = row.best.tokens
                self._accept(b, row, row.best)
        self.batch.drop(~keep.to(self.batch.live.device), start)
        self._refeed()
        self.batch.compact()

    def _propose(self) -> tuple[list[list[int]], torch.Tensor]:
        """One candidate segment per prompt by the uncertainty cascade, sampled from the cached prefixes."""
        config, batch = self.config, self.batch
        size, device = batch.size, self.prefix_logits.device
        logits = self.prefix_logits
        end_logits = torch.empty_like(logits)
        candidates: list[list[int]] = [[] for _ in range(size)]
        room = [config.max_new_tokens - len(row.response) for row in self.rows]
        is_open = torch.ones(size, dtype=torch.bool, device=device)
        for step in range(config.max_segment_tokens):
            entropy = token_entropy(logits)
            ends = is_open & cascade_ends_segment(step, entropy, config.tau_u, config.min_segment_tokens,
                                                  config.max_segment_tokens)
            end_logits[ends] = logits[ends]
            is_open &= ~ends
            open_rows = is_open.nonzero().squeeze(1).tolist()
            if not open_rows:
                break
            # only open rows draw, so a row's random stream does not depend on its neighbours
            sampled = sample_top_k(logits[open_rows], [self.rows[b].generator for b in open_rows], config.top_k,
                                   config.temperature)
            tokens = torch.full((size,), self.pad, dtype=torch.long, device=device)
            tokens[open_rows] = sampled
            stops = torch.zeros(size, dtype=torch.bool, device=device)
            for b, token in zip(open_rows, sampled.tolist()):
                candidates[b].append(token)
                if token in self.eos_ids or len(candidates[b]) >= min(room[b], config.max_segment_tokens):
                    stops[b] = True
            logits = batch.feed(tokens[:, None], is_open[:, None])[:, -1]
            end_logits[stops] = logits[stops]
            is_open &= ~stops
        return candidates, end_logits

    def _accept(self, b: int, row: _Prompt, candidate: _Candidate) -> None:
        row.response = row.response + candidate.tokens
        row.reward, row.complete = candidate.reward, candidate.ends
        self.prefix_logits[b] = candidate.end_logits
        row.result.segments += 1
        row.rejections_in_a_row, row.best = 0, None

    def _refeed(self) -> None:
        """Feed the tokens of fallback candidates that are not the latest one (their columns were dropped)."""
        pending = [b for b, row in enumerate(self.rows) if row.refeed]
        if not pending:
            return
        width = max(len(self.rows[b].refeed) for b in pending)
        device = self.batch.live.device
        tokens = torch.full((self.batch.size, width), self.pad, dtype=torch.long, device=device)
        valid = torch.zeros(self.batch.size, width, dtype=torch.bool, device=device)
        for b in pending:
            ids = self.rows[b].refeed
            tokens[b, : len(ids)] = torch.tensor(ids, device=device)
            valid[b, : len(ids)] = True
            self.rows[b].result.policy_tokens += len(ids)
            self.rows[b].refeed = None
        self.batch.feed(tokens, valid)

    # ------------------------------------------------------------------------------------------------ leaving

    def _finish(self) -> Iterator[Decoded]:
        done = [b for b, row in enumerate(self.rows) if row.complete]
        if not done:
            return
        now = time.perf_counter()
        for b in done:
            row = self.rows[b]
            result = row.result
            result.text = self.tokenizer.decode(row.response, skip_special_tokens=True)
            result.reward = None if math.isnan(row.reward) else row.reward
            result.tokens = len(row.response)
            result.finish = "eos" if row.response[-1] in self.eos_ids else "length"
            result.wall_time = now - row.started
            yield result
        stay = [b for b in range(len(self.rows)) if b not in set(done)]
        self.rows = [self.rows[b] for b in stay]
        if not stay:
            self.batch, self.prefix_logits = None, None
            return
        index = torch.tensor(stay, device=self.prefix_logits.device)
        self.batch.select(index)
        self.batch.compact()
        self.prefix_logits = self.prefix_logits[index]


def _rank(reward: float) -> float:
    return -math.inf if math.isnan(reward) else reward
