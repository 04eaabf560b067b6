"""A batch of token sequences that grow by sampling, with one KV cache that keeps, drops and reorders tokens per row.

Decoding-time methods that *reject* text (CARDS) try several continuations of the same accepted prefix. Recomputing
the prefix for every try costs a forward pass over the whole prefix; :class:`SequenceBatch` keeps the prefix's keys
and values instead, lets each row append a candidate, and forgets the candidate's columns for the rows that reject
it. Rows of different lengths share one ``transformers`` ``DynamicCache``:

- ``live`` (B, L) bool marks which cache columns hold a row's kept tokens. A column that a row dropped, or that it
  fed as padding, stays in the cache with ``live`` False, so attention never reads it.
- Position ids are the number of kept tokens before a token (``num_tokens``), not its column, so a row's holes do
  not shift its positions: keys are stored already rotated (RoPE), and moving a column never changes its meaning.
- :meth:`compact` squeezes the holes out: every row's live columns move, in order, to the right end, and columns
  that are dead in every row disappear. The batch stays left-padded, as ``generate`` keeps it.

Every forward pass feeds a (B, S) block in which each row has its own valid tokens (right-padded); a padding query
always sees at least one live key of its row (rows are never empty), so no attention row is fully masked.

Only caches made of plain full-attention layers (``DynamicLayer``) can be reordered this way; a model with sliding
windows or another cache type is refused with a clear error.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicLayer

from segrl.errors import UserError

__all__ = ["SequenceBatch", "sample_top_k"]


class SequenceBatch:
    """B token sequences in one KV cache (see the module docstring). Make one with :meth:`prefill`.

    Attributes:
        model: the causal LM.
        cache: its ``DynamicCache``; layer tensors (B, heads, L, head_dim).
        live: (B, L) bool, True on the cache columns that hold a row's kept tokens.
        num_tokens: (B,) long, kept tokens per row (the position id of the row's next token).
    """

    def __init__(self, model, cache, live: torch.Tensor, num_tokens: torch.Tensor):
        self.model, self.cache, self.live, self.num_tokens = model, cache, live, num_tokens

    @classmethod
    @torch.no_grad()
    def prefill(cls, model, sequences: list[list[int]], pad_token_id: int = 0) -> tuple[SequenceBatch, torch.Tensor]:
        """Feed each (non-empty) sequence; return the batch and the (B, V) logits of each row's next token."""
        if not sequences or any(len(s) == 0 for s in sequences):
            raise ValueError("prefill needs at least one sequence, and no empty one")
        device = next(model.parameters()).device
        width = max(len(s) for s in sequences)
        tokens = torch.full((len(sequences), width), pad_token_id, dtype=torch.long, device=device)
        valid = torch.zeros(len(sequences), width, dtype=torch.bool, device=device)
        for row, sequence in enumerate(sequences):
            tokens[row, : len(sequence)] = torch.tensor(sequence, device=device)
            valid[row, : len(sequence)] = True
        empty = torch.zeros(len(sequences), 0, dtype=torch.bool, device=device)
        batch = cls(model, None, empty, torch.zeros(len(sequences), dtype=torch.long, device=device))
        logits = batch.feed(tokens, valid)
        _check_cache(batch.cache)
        last = valid.sum(1) - 1
        return batch, logits[torch.arange(len(sequences), device=device), last]

    @property
    def size(self) -> int:
        return self.live.shape[0]

    @property
    def width(self) -> int:
        """L, the number of cache columns."""
        return self.live.shape[1]

    @torch.no_grad()
    def feed(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Append a (B, S) block: ``valid`` (B, S) bool marks each row's real tokens, which must come first in
        the row (right padding). Returns the (B, S, V) float logits; only those at valid positions mean anything."""
        attention = torch.cat([self.live, valid], dim=1)
        positions = (self.num_tokens[:, None] + valid.long().cumsum(1) - 1).clamp(min=0)
        out = self.model(input_ids=tokens, attention_mask=attention.long(), position_ids=positions,
                         cache=self.cache, use_cache=True)
        self.cache, self.live = out.cache, attention
        self.num_tokens = self.num_tokens + valid.sum(1)
        return out.logits.float()

    def drop(self, rows: torch.Tensor, start: int) -> None:
        """Forget the columns from ``start`` on for the ``rows`` (B,) bool (a rejected candidate)."""
        self.live[rows, start:] = False
        self.num_tokens = self.live.sum(1)

    def compact(self) -> None:
        """Move each row's live columns, in order, to the right end, and cut the columns no row needs."""
        keep_width = int(self.live.sum(1).max())
        # a stable sort of 0/1 puts each row's dead columns first and keeps the live ones in order
        order = torch.sort(self.live.to(torch.int8), dim=1, stable=True).indices[:, self.width - keep_width :]
        self.live = self.live.gather(1, order)
        for layer in self.cache.layers:
            index = order[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            layer.keys, layer.values = layer.keys.gather(2, index), layer.values.gather(2, index)

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the rows at the (K,) long indices ``rows``, in that order."""
        self.live, self.num_tokens = self.live[rows], self.num_tokens[rows]
        for layer in self.cache.layers:
            layer.keys, layer.values = layer.keys[rows], layer.values[rows]

    def repeat(self, times: int) -> None:
        """Repeat every row ``times`` times in place (row i becomes rows i*times .. i*times + times - 1)."""
        self.select(torch.arange(self.size, device=self.live.device).repeat_interleave(times))

    def extend(self, other: SequenceBatch) -> None:
        """Append ``other``'s rows after this batch's rows (left-padding the narrower one with dead columns)."""
        width = max(self.width, other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width), _left_pad(theirs.keys, width)])
            mine.values = torch.cat([_left_pad(mine.values, width), _left_pad(theirs.values, width)])
        live = [F.pad(x.live, (width - x.width, 0), value=False) for x in (self, other)]
        self.live = torch.cat(live)
        self.num_tokens = torch.cat([self.num_tokens, other.num_tokens])


def _left_pad(states: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(states, (0, 0, width - states.shape[2], 0))


def _check_cache(cache) -> None:
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers or []}) or [type(cache).__name__]
        raise UserError(
            f"batched decoding reorders the KV cache and supports only full-attention DynamicLayer caches; "
            f"this model's cache has {', '.join(kinds)}"
        )


def sample_top_k(logits: torch.Tensor, generators: list[torch.Generator], top_k: int, temperature: float) -> torch.Tensor:
    """One token per row from the ``top_k`` most likely, at ``temperature``, each row with its own generator.

    Per-row generators make a row's sample independent of which other rows share its batch.

    Args:
        logits: (B, V) float.
        generators: B CPU ``torch.Generator``.

    Returns:
        (B,) long token ids, on ``logits``' device.
    """
    values, indices = logits.topk(min(top_k, logits.shape[-1]), dim=-1)
    probs = torch.softmax(values / temperature, dim=-1).cpu()
    choice = torch.stack([torch.multinomial(p, 1, generator=g) for p, g in zip(probs, generators)])
    return indices.gather(1, choice.to(indices.device)).squeeze(1)
