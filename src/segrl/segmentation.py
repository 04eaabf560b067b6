"""Segmenters: cut each completion of a batch into segments, and helpers to compute per segment.

A *segment* is a contiguous run of completion tokens that is scored, rewarded or valued as one unit: coarser than a
token, finer than a whole response. Every segmenter here returns the same representation:

``segment_ids``: LongTensor (B, T), the index of the segment that each completion token belongs to, counting from 0
in each row; ``-1`` on every position that is not a completion token (prompt, padding and, under the tail rule of
:func:`entropy_segments`, EOS). Segments are contiguous and ids rise by steps of 1 along a row.

Inputs carry a ``mask`` (B, T), True exactly on completion tokens (bool, or TRL's 0/1 ``completion_mask``). It may be
a completion-only tensor with right padding or a full prompt+completion tensor whose prompt positions are False; the
True positions of a row are assumed contiguous. A row whose mask is all False is all ``-1``. Everything is
vectorised over the batch; only the uncertainty cascade, which is sequential by nature, loops over positions.

Entropy threshold (Yin et al. 2025, "Segmenting Text and Learning Their Rewards", arXiv 2501.02790),
:func:`entropy_segments`: token t opens a new segment when the entropy of the distribution it was drawn from (a
frozen reference model's, temperature 1) is strictly above a threshold c; the paper uses c = 1.75 (Phi-3-mini) and
c = 2.0 (Llama-3 8B), so there is no default. c = 0 gives the token-level baseline, c = 1000 the whole-response
"bandit" baseline. Tail rule: with ``eos_mask`` given, EOS gets id -1 so that the last segment ends on the token
before it (the spec's "EOS in its own ignored segment" alternative is not offered).

Uncertainty cascade (Li et al., CARDS, arXiv 2406.16306), :func:`uncertainty_segments`: while decoding, a segment
ends before the next token when it already holds at least ``min_len = 4`` tokens and that token's entropy is
``>= tau_u = 3.0``, or when it holds ``max_len = 64`` tokens. :func:`cascade_ends_segment` is that single decoding
step; :func:`uncertainty_segments` replays it offline over sampled text. CARDS' fixed-length and sentence-end
ablations are :func:`fixed_length_segments` and :func:`delimiter_segments` with ``"sentence"``; the
punctuation-plus-entropy ablation is not offered.

Cutpoints (Guo et al. 2025, SPO, arXiv 2505.23564), :func:`cutpoint_segments`: a token whose sampled probability is
below ``rho = 0.9`` is a cutpoint; keeping every ``interval = 5``-th cutpoint (the 1st, 6th, 11th, ...), a segment
boundary sits just before each kept one, so each kept cutpoint opens a segment (SPO-chain "int5"). Tokens before the
first kept cutpoint form segment 0. :func:`low_probability_mask` is also SPO's probability mask.
:func:`fixed_length_segments` is SPO-tree's fixed-length segmentation, :func:`equal_chunk_segments` its naive
4-chunk ablation.

Delimiters (:func:`delimiter_segments`): split at newlines, blank lines or sentence ends found by regex in the
completion text, mapped to tokens through the tokenizer's character offsets, never by matching decoded tokens. The
delimiter ends the previous segment whenever the tokenization allows; a token that straddles it goes to the side
where it starts (details in the function).
"""

import re

import torch

from segrl.errors import UserError

__all__ = [
    "DELIMITERS",
    "broadcast_to_tokens",
    "cascade_ends_segment",
    "cutpoint_segments",
    "decode_with_offsets",
    "delimiter_segments",
    "delimiter_segments_of_ids",
    "entropy_segments",
    "equal_chunk_segments",
    "fixed_length_segments",
    "low_probability_mask",
    "num_segments",
    "sampled_token_probs",
    "segment_first_index",
    "segment_ids_from_starts",
    "segment_last_index",
    "segment_lengths",
    "segment_mean",
    "segment_spans",
    "segment_sum",
    "token_entropy",
    "uncertainty_segments",
]


# --------------------------------------------------------------------------------------------------- signals


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy, in nats, of ``softmax(logits / temperature)`` at every position.

    Args:
        logits: (B, T, V) float, already aligned so that position t holds the distribution that token t was drawn
            from. A causal LM's logits at position t predict token t + 1, so shift them first::

                logits = model(input_ids).logits[:, :-1]   # predicts input_ids[:, 1:]
                mask = mask[:, 1:]
        temperature: divides the logits before the softmax.

    Returns:
        (B, T) float (at least float32): the entropy of each position's distribution. Logits of ``-inf`` (tokens
        filtered out of the vocabulary) contribute 0.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    probs = torch.softmax(logits / temperature, dim=-1)
    return torch.special.entr(probs).sum(dim=-1)


def sampled_token_probs(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Probability of each sampled token under ``softmax(logits / temperature)``.

    Computed as ``exp(logit[token] - logsumexp(logits))``, i.e. log-softmax at the sampled index, without
    materialising the whole (B, T, V) log-softmax.

    Args:
        logits: (B, T, V) float, aligned with ``token_ids`` as in :func:`token_entropy`.
        token_ids: (B, T) long, the sampled tokens; every entry must be a valid vocabulary index (use the pad id,
            not -100, on padding).
        temperature: the sampling temperature (SPO's cutpoints use the policy at its sampling temperature).

    Returns:
        (B, T) float (at least float32) in [0, 1].
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    picked = logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)
    return (picked - logits.logsumexp(dim=-1)).exp()


# ------------------------------------------------------------------------------------------- core primitive


def segment_ids_from_starts(starts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Turn segment-start flags into ``segment_ids``.

    Args:
        starts: (B, T) bool, True on tokens that open a new segment. Entries off the mask are ignored.
        mask: (B, T) bool (or 0/1), True on completion tokens.

    Returns:
        (B, T) long ``segment_ids``. The first completion token of each row opens segment 0 whatever ``starts``
        says there; -1 off the mask.
    """
    mask = mask.bool()
    first = mask & (mask.cumsum(dim=1) == 1)
    ids = ((starts.bool() & mask) | first).long().cumsum(dim=1) - 1
    return ids.masked_fill(~mask, -1)


# ---------------------------------------------------------------------------------------------- segmenters


def entropy_segments(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    threshold: float,
    eos_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Entropy-threshold segments (Yin et al. 2025): token t opens a segment when ``entropy[t] > threshold``.

    Args:
        entropy: (B, T) float, the entropy of the distribution each token was drawn from (:func:`token_entropy`
            of a frozen reference model at temperature 1).
        mask: (B, T) bool, True on completion tokens.
        threshold: c; the paper uses 1.75 (Phi-3-mini) and 2.0 (Llama-3 8B). 0 gives one token per segment
            (where all entropies are positive), 1000 a single segment.
        eos_mask: optional (B, T) bool, True on EOS tokens. Tail rule for dense reward models: these positions
            get -1, so the last segment ends on the token before EOS; no empty segment is created and the
            numbering is unchanged (a row whose only completion token is EOS is all -1). Leave it None for the
            bandit baseline, whose single segment ends at EOS.

    Returns:
        (B, T) long ``segment_ids``.
    """
    mask = mask.bool()
    if eos_mask is not None:
        mask = mask & ~eos_mask.bool()
    return segment_ids_from_starts(entropy > threshold, mask)


def cascade_ends_segment(
    tokens_in_segment: int | torch.Tensor,
    next_entropy: float | torch.Tensor,
    tau_u: float = 3.0,
    min_len: int = 4,
    max_len: int = 64,
) -> bool | torch.Tensor:
    """CARDS' decoding-time rule: should the current segment end before the next token?

    True when the segment already holds ``min_len`` tokens and the next token's distribution has entropy
    ``>= tau_u``, or when it already holds ``max_len`` tokens. The next token then opens the next segment.

    Args:
        tokens_in_segment: int, or (B,) long tensor, tokens already in the current segment.
        next_entropy: float, or (B,) float tensor, entropy (temperature 1) of the next token's distribution.
        tau_u, min_len, max_len: CARDS' defaults 3.0, 4 and 64.

    Returns:
        bool, or (B,) bool tensor when either input is a tensor.
    """
    return (tokens_in_segment >= max_len) | ((tokens_in_segment >= min_len) & (next_entropy >= tau_u))


def uncertainty_segments(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    tau_u: float = 3.0,
    min_len: int = 4,
    max_len: int = 64,
) -> torch.Tensor:
    """CARDS uncertainty cascade replayed offline, with :func:`cascade_ends_segment` at every token.

    Args:
        entropy: (B, T) float, entropy of the distribution each token was drawn from (aligned as in
            :func:`token_entropy`).
        mask: (B, T) bool, True on completion tokens.
        tau_u, min_len, max_len: as in :func:`cascade_ends_segment`.

    Returns:
        (B, T) long ``segment_ids``; every segment holds at most ``max_len`` tokens, and every segment but a
        row's last holds at least ``min_len``.
    """
    mask = mask.bool()
    batch, length = mask.shape
    starts = torch.zeros_like(mask)
    in_segment = torch.zeros(batch, dtype=torch.long, device=mask.device)
    for t in range(length):  # sequential: whether t opens a segment depends on where the last one opened
        opens = mask[:, t] & cascade_ends_segment(in_segment, entropy[:, t], tau_u, min_len, max_len)
        starts[:, t] = opens
        in_segment = torch.where(opens, 1, in_segment + mask[:, t].long())
    return segment_ids_from_starts(starts, mask)


def low_probability_mask(token_probs: torch.Tensor, mask: torch.Tensor, rho: float = 0.9) -> torch.Tensor:
    """SPO's low-probability tokens: ``token_probs < rho`` on completion tokens (``p == rho`` is not low).

    Args:
        token_probs: (B, T) float, probability of each sampled token (:func:`sampled_token_probs` of the policy at
            its sampling temperature).
        mask: (B, T) bool, True on completion tokens.
        rho: SPO's default 0.9.

    Returns:
        (B, T) bool, False off the mask.
    """
    return (token_probs < rho) & mask.bool()


def cutpoint_segments(
    token_probs: torch.Tensor, mask: torch.Tensor, rho: float = 0.9, interval: int = 5
) -> torch.Tensor:
    """SPO-chain cutpoint segments: every ``interval``-th low-probability token opens a segment.

    The kept cutpoints of a row are its 1st, (1+k)-th, (1+2k)-th, ... low-probability tokens (k = ``interval``).
    Tokens before the first kept cutpoint form segment 0; if the first completion token is a kept cutpoint it
    simply opens segment 0 (the boundary is the bare prompt). Each segment after that prefix holds k
    low-probability tokens (the last may hold fewer). No cutpoint gives one segment.

    Args:
        token_probs: (B, T) float, probability of each sampled token.
        mask: (B, T) bool, True on completion tokens.
        rho: low-probability threshold (strict ``<``).
        interval: k, SPO's default 5 ("int5"); 1 keeps every cutpoint.

    Returns:
        (B, T) long ``segment_ids``.
    """
    low = low_probability_mask(token_probs, mask, rho)
    rank = low.long().cumsum(dim=1) - 1  # index of each low-probability token among its row's
    return segment_ids_from_starts(low & (rank % interval == 0), mask)


def fixed_length_segments(mask: torch.Tensor, length: int) -> torch.Tensor:
    """Segments of ``length`` completion tokens each (the last of a row may be shorter).

    Args:
        mask: (B, T) bool, True on completion tokens.
        length: tokens per segment (SPO-tree: 30 on GSM8K-size problems; CARDS ablation: 10 or 32).

    Returns:
        (B, T) long ``segment_ids``.
    """
    mask = mask.bool()
    position = mask.long().cumsum(dim=1) - 1
    return torch.where(mask, position // length, -1)


def equal_chunk_segments(mask: torch.Tensor, num_chunks: int) -> torch.Tensor:
    """Split each row's completion into ``num_chunks`` contiguous near-equal chunks (SPO's naive ablation: 4).

    Remainders go to the first chunks, as in ``torch.tensor_split``: n tokens give n % c chunks of n // c + 1
    tokens followed by chunks of n // c. A row with fewer tokens than chunks gets one token per segment (so fewer
    than ``num_chunks`` segments).

    Args:
        mask: (B, T) bool, True on completion tokens.
        num_chunks: c, segments per row.

    Returns:
        (B, T) long ``segment_ids``.
    """
    mask = mask.bool()
    n = mask.sum(dim=1, keepdim=True)
    position = mask.long().cumsum(dim=1) - 1
    small, extra = n // num_chunks, n % num_chunks
    in_long_chunks = extra * (small + 1)  # tokens held by the first `extra` chunks
    ids = torch.where(
        position < in_long_chunks,
        position // (small + 1),
        extra + (position - in_long_chunks) // small.clamp(min=1),
    )
    return torch.where(mask, ids, -1)


# Each pattern swallows the whitespace after the delimiter, so that it ends the previous segment and the next
# segment begins with content (or with the token that carries its leading space).
DELIMITERS: dict[str, re.Pattern] = {
    "newline": re.compile(r"\n\s*"),
    "blank_line": re.compile(r"\n[^\S\n]*\n\s*"),
    "sentence": re.compile(r"[.!?]+[\"'”’)\]]*\s+|\n\s*"),
}


def decode_with_offsets(tokenizer, token_ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """Decode sampled token ids and give each token's ``[start, end)`` character span in the decoded text: the
    offset mapping of the ids the policy actually sampled.

    For :func:`delimiter_segments` and DRLC's critic spans (:mod:`segrl.critic.align`) on *sampled* completions,
    whose ids need not be what the tokenizer would produce from their text (so re-tokenising with
    ``return_offsets_mapping`` could misalign). Token t ends where the decoded prefix ``token_ids[: t + 1]`` stops
    agreeing with the full text (their longest common prefix), so a token that completes a multi-byte character
    owns that character and the byte tokens before it own none of it; special tokens are skipped, so they span
    nothing; ``end`` never decreases. Decoding uses ``skip_special_tokens=True`` and no clean-up of spaces.
    Quadratic in the length: meant for completions of up to a few hundred tokens.

    Args:
        tokenizer: a Hugging Face tokenizer.
        token_ids: the ids of one completion.

    Returns:
        The decoded text and one ``(start, end)`` pair per token.
    """

    def decode(ids):
        return tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = decode(token_ids)
    offsets, previous = [], 0
    for t in range(len(token_ids)):
        prefix = decode(token_ids[: t + 1])
        common, limit = 0, min(len(prefix), len(text))
        while common < limit and prefix[common] == text[common]:
            common += 1
        end = max(previous, common)
        offsets.append((previous, end))
        previous = end
    return text, offsets


def delimiter_segments(
    texts: list[str],
    offsets: torch.Tensor,
    mask: torch.Tensor,
    delimiter: str | re.Pattern = "newline",
) -> torch.Tensor:
    """Segments that end at text delimiters, found by regex in the text and mapped to tokens by char offsets.

    For each match of the delimiter, spanning characters ``[s, e)``, the opener of the next segment is the first
    completion token that ends after the delimiter and holds no text from before it: ``end > e`` and
    ``start >= s``. So the delimiter stays at the end of the previous segment whenever the tokenization allows:
    a merged ``".\\n"`` token ends its segment, a space-prefixed ``" The"`` (BPE) or ``"▁The"`` (SentencePiece)
    opens the next. A token that straddles the boundary goes to the side where it starts: ``"\\nThe"`` opens the
    next segment (delimiter included), ``"▁end!\\n\\nA"`` stays in the previous one and the token after it opens
    the next. Matches at the end of the text, or made only of leading whitespace, end nothing; matches past the
    last token (truncated text) are ignored.

    Args:
        texts: B strings, the text that ``offsets`` index into (usually each completion).
        offsets: (B, T, 2) long, ``[start, end)`` character offsets of each token into its text, e.g. from a fast
            tokenizer called with ``return_offsets_mapping=True``; ignored off the mask.
        mask: (B, T) bool, True on completion tokens.
        delimiter: ``"newline"``, ``"blank_line"`` or ``"sentence"`` (``.``, ``!`` or ``?`` runs, with closing
            quotes or brackets, followed by whitespace; or a newline), or a compiled ``re.Pattern``.

    Returns:
        (B, T) long ``segment_ids``.

    Raises:
        UserError: unknown delimiter name, or ``len(texts)`` differs from the batch size.
    """
    if isinstance(delimiter, str):
        if delimiter not in DELIMITERS:
            raise UserError(f"unknown delimiter {delimiter!r}: expected one of {sorted(DELIMITERS)} or a re.Pattern")
        delimiter = DELIMITERS[delimiter]
    mask = mask.bool()
    batch, length = mask.shape
    if len(texts) != batch:
        raise UserError(f"delimiter_segments got {len(texts)} texts for a batch of {batch} rows")

    matches = []
    for text in texts:
        leading_space = len(text) - len(text.lstrip())
        matches.append([m.span() for m in delimiter.finditer(text) if leading_space < m.end() < len(text)])
    never = torch.iinfo(torch.long).max  # pads the ragged lists of matches; maps past the last token
    width = max(map(len, matches), default=0)
    pairs = torch.tensor([row + [(never, never)] * (width - len(row)) for row in matches], dtype=torch.long)
    match_start, match_end = pairs.reshape(batch, width, 2).permute(2, 0, 1).contiguous().to(mask.device)

    # Running maxima of the token offsets are sorted even with (0, 0) special-token offsets, and the first position
    # where one passes a value is the first completion token whose own offset passes it.
    running = torch.where(mask.unsqueeze(-1), offsets.long(), -1).cummax(dim=1).values
    token_start, token_end = running.permute(2, 0, 1).contiguous()
    starts_from = torch.searchsorted(token_start, match_start)  # first token with start >= s
    ends_after = torch.searchsorted(token_end, match_end, right=True)  # first token with end > e
    opener = torch.maximum(starts_from, ends_after)
    starts = torch.zeros(batch, length + 1, dtype=torch.bool, device=mask.device)
    starts.scatter_(1, opener, True)  # position `length` collects boundaries with no token
    return segment_ids_from_starts(starts[:, :length], mask)


def delimiter_segments_of_ids(
    tokenizer, token_ids: torch.Tensor, mask: torch.Tensor, delimiter: str | re.Pattern = "newline"
) -> torch.Tensor:
    """:func:`delimiter_segments` for sampled completions given as token ids (TRL's right-padded
    ``completion_ids``): each row is decoded with :func:`decode_with_offsets`.

    Args:
        tokenizer: a Hugging Face tokenizer.
        token_ids: (B, T) long, completion tokens.
        mask: (B, T) bool, True on completion tokens (a prefix of each row).
        delimiter: as in :func:`delimiter_segments`.

    Returns:
        (B, T) long ``segment_ids`` on ``token_ids``' device.
    """
    mask = mask.bool()
    texts, offsets = [], torch.zeros(*token_ids.shape, 2, dtype=torch.long)
    for row, (ids, keep) in enumerate(zip(token_ids.tolist(), mask.tolist())):
        text, row_offsets = decode_with_offsets(tokenizer, [t for t, k in zip(ids, keep) if k])
        texts.append(text)
        if row_offsets:
            offsets[row, : len(row_offsets)] = torch.tensor(row_offsets, dtype=torch.long)
    return delimiter_segments(texts, offsets, mask.cpu(), delimiter).to(token_ids.device)


# ------------------------------------------------------------------------------------------------- helpers


def _total_segments(segment_ids: torch.Tensor) -> int:
    """S: the largest segment count of any row."""
    return int(segment_ids.max()) + 1 if segment_ids.numel() else 0


def _scatter_index(segment_ids: torch.Tensor, total: int) -> torch.Tensor:
    """Segment ids with -1 sent to an extra column ``total``, which callers drop."""
    return torch.where(segment_ids >= 0, segment_ids, total)


def num_segments(segment_ids: torch.Tensor) -> torch.Tensor:
    """Segments in each row.

    Args:
        segment_ids: (B, T) long.

    Returns:
        (B,) long, max id + 1 (0 for a row with no completion token).
    """
    return segment_ids.max(dim=1).values.clamp(min=-1) + 1


def segment_sum(
    values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int | None = None
) -> torch.Tensor:
    """Sum ``values`` over the tokens of each segment (differentiable in ``values``).

    Args:
        values: (B, T), any dtype; entries off the completion are ignored (even NaN).
        segment_ids: (B, T) long.
        num_segments: S, the number of output columns; must exceed every id. Default: the batch's largest
            segment count.

    Returns:
        (B, S) of ``values``' dtype, 0 for segments a row does not have.
    """
    total = _total_segments(segment_ids) if num_segments is None else num_segments
    out = values.new_zeros(values.shape[0], total + 1)
    return out.scatter_add(1, _scatter_index(segment_ids, total), values)[:, :total]


def segment_lengths(segment_ids: torch.Tensor) -> torch.Tensor:
    """Tokens in each segment.

    Args:
        segment_ids: (B, T) long.

    Returns:
        (B, S) long, 0 for segments a row does not have.
    """
    return segment_sum(torch.ones_like(segment_ids), segment_ids)


def segment_mean(values: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the tokens of each segment.

    Args:
        values: (B, T) float; entries off the completion are ignored.
        segment_ids: (B, T) long.

    Returns:
        (B, S) float, 0 (not NaN) for segments a row does not have.
    """
    return segment_sum(values, segment_ids) / segment_lengths(segment_ids).clamp(min=1)


def broadcast_to_tokens(
    segment_values: torch.Tensor, segment_ids: torch.Tensor, fill: float = 0.0
) -> torch.Tensor:
    """Give every token its segment's value (differentiable in ``segment_values``).

    Args:
        segment_values: (B, S), with S greater than every id in ``segment_ids``.
        segment_ids: (B, T) long.
        fill: value off the completion.

    Returns:
        (B, T) of ``segment_values``' dtype.
    """
    total = segment_values.shape[1]
    padded = torch.nn.functional.pad(segment_values, (0, 1), value=fill)
    return padded.gather(1, _scatter_index(segment_ids, total))


def _segment_position(segment_ids: torch.Tensor, reduce: str) -> torch.Tensor:
    """Min or max token position over each segment, -1 for segments a row does not have."""
    batch, length = segment_ids.shape
    total = _total_segments(segment_ids)
    position = torch.arange(length, device=segment_ids.device).expand(batch, length)
    absent = length if reduce == "amin" else -1
    out = torch.full((batch, total + 1), absent, dtype=torch.long, device=segment_ids.device)
    out = out.scatter_reduce(1, _scatter_index(segment_ids, total), position, reduce=reduce)[:, :total]
    return out.masked_fill(out == length, -1)


def segment_last_index(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each segment's last token (where a segment reward head is read).

    Args:
        segment_ids: (B, T) long.

    Returns:
        (B, S) long, -1 for segments a row does not have.
    """
    return _segment_position(segment_ids, "amax")


def segment_first_index(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position of each segment's first token (the prefix before it is the segment's boundary state).

    Args:
        segment_ids: (B, T) long.

    Returns:
        (B, S) long, -1 for segments a row does not have.
    """
    return _segment_position(segment_ids, "amin")


def segment_spans(segment_ids_row: torch.Tensor) -> list[tuple[int, int]]:
    """``[start, end)`` token positions of each segment of one row, in order, for display code.

    Args:
        segment_ids_row: (T,) long, one row of ``segment_ids``.

    Returns:
        One ``(start, end)`` pair per segment, ``end`` exclusive (slice ``tokens[start:end]``).
    """
    row = segment_ids_row.unsqueeze(0)
    firsts, lasts = segment_first_index(row)[0].tolist(), segment_last_index(row)[0].tolist()
    return [(first, last + 1) for first, last in zip(firsts, lasts)]
