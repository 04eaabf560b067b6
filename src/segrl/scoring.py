"""Forward passes that read per-token quantities off a model for the completion part of a batch.

Layout (TRL's): ``prompt_ids`` (B, P) left-padded and ``completion_ids`` (B, T) right-padded, concatenated into
``input_ids`` (B, P + T). Completion token t sits at position P + t; the logits that predict it sit at P + t − 1.

- :func:`completion_entropies_and_logps`: from a causal LM, the entropy (nats, temperature 1) of the distribution
  each completion token was drawn from (the entropy segmenter's signal) and the token's log-probability at a given
  temperature (the KL term), in one forward pass.
- :func:`completion_token_scores`: from a scalar-head model (``AutoModelForTokenClassification`` with one label: a
  segment reward model or a critic), the head's output at each completion token (``shift=0``: after reading the
  token, where a segment reward is read) or before it (``shift=1``: the value of the state the token is drawn
  from, where a critic is read).
"""

from __future__ import annotations

import torch

from segrl.segmentation import token_entropy

__all__ = ["completion_entropies_and_logps", "completion_token_scores"]


def _chunks(total: int, batch_size: int | None):
    batch_size = batch_size or total
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))


@torch.no_grad()
def completion_entropies_and_logps(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_completion_tokens: int,
    temperature: float = 1.0, batch_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy (temperature 1) and log-prob (at ``temperature``) of each completion token under ``model``.

    Args:
        model: a causal LM.
        input_ids, attention_mask: (B, P + T), prompt then completion.
        num_completion_tokens: T.
        temperature: logits are divided by it for the log-probs (TRL computes the policy's log-probs at the sampling
            temperature; the reference's must match for a KL estimate). The entropy is always at temperature 1.
        batch_size: rows per forward pass (default: all).

    Returns:
        ``(entropy, logps)``, both (B, T) float32; values on padding positions are meaningless.
    """
    entropies, logps = [], []
    for rows in _chunks(input_ids.shape[0], batch_size):
        logits = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits
        logits = logits[:, -num_completion_tokens - 1 : -1].float()
        targets = input_ids[rows, -num_completion_tokens:]
        entropies.append(token_entropy(logits))
        log_probs = torch.log_softmax(logits / temperature, dim=-1)
        logps.append(log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1))
    return torch.cat(entropies), torch.cat(logps)


def completion_token_scores(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, num_completion_tokens: int, shift: int = 0,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Scalar-head output at each completion token (differentiable; wrap in ``torch.no_grad()`` to score).

    Args:
        model: a model whose output ``logits`` are (B, L, 1), e.g. ``AutoModelForTokenClassification`` with
            ``num_labels=1``.
        input_ids, attention_mask: (B, P + T).
        num_completion_tokens: T.
        shift: 0 reads position P + t (after token t: segment rewards), 1 reads P + t − 1 (before token t: values).
        batch_size: rows per forward pass (default: all).

    Returns:
        (B, T) float32.
    """
    scores = []
    end = input_ids.shape[1] - shift
    for rows in _chunks(input_ids.shape[0], batch_size):
        logits = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows]).logits
        scores.append(logits[:, end - num_completion_tokens : end, 0].float())
    return torch.cat(scores)
