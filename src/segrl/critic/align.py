"""From critic spans to per-token rewards, through character offsets (DRLC, spec step 3).

1. :func:`segrl.segmentation.decode_with_offsets`: the character range of every token of a *sampled* completion in
   its decoded text (the offset mapping of the ids the policy actually sampled, which re-encoding the text would
   not always reproduce).
2. :func:`locate_spans`: each span the critic wrote -> every place it occurs in the response, as character
   ranges. A span that occurs nowhere is dropped and counted.
3. :func:`token_rewards`: a token inside a section's span gets that section's reward; a token in no span gets the
   template's ``outside`` reward; tokens with no characters (EOS) get 0.

Rules, and why:
- **Every occurrence.** A listed span marks each place it occurs (non-overlapping, left to right): a critic that
  calls "boring" negative means every "boring" of the response, and an answer lists a span once.
- **Whole words.** A match may not begin or end inside a word (the span "good" does not mark "goodbye"), so no
  fragment of another word is ever marked; except at an edge in a script written without spaces (CJK, kana,
  Thai), where words have no visible boundary. Spaces inside a span match any run of whitespace; the match is
  case-sensitive first and case-insensitive only when the exact case occurs nowhere (critics re-case words).
- **Overlaps.** Overlapping spans of one section mark their union once (a token's reward is not doubled); a token
  touched by spans of several sections gets the sum of those sections' rewards (+0.5 and -0.5 cancel).
- **Token inside a span** = its characters overlap the span's. A byte-level BPE token " great" covers the space
  before the word too, and is inside the span "great".

The released code matched decoded token strings as substrings of the span text, which marks every "the" of the
response once a span contains "the"; this module never compares token strings with span text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

__all__ = ["CharSpan", "locate_spans", "token_rewards"]


@dataclass(frozen=True)
class CharSpan:
    """A span of the response in characters (``text[start:end]``), with its section and reward per token."""

    start: int
    end: int
    section: str
    reward: float


# Scripts written without spaces between words (CJK ideographs, kana, Thai): no word boundary to respect there.
_UNSPACED = ((0x0E00, 0x0E7F), (0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF),
             (0x20000, 0x2FFFF))


def _needs_boundary(char: str) -> bool:
    return bool(re.match(r"\w", char)) and not any(lo <= ord(char) <= hi for lo, hi in _UNSPACED)


def _span_pattern(span: str, flags: int) -> re.Pattern | None:
    words = span.split()
    if not words:
        return None
    body = r"\s+".join(re.escape(w) for w in words)
    before = r"(?<!\w)" if _needs_boundary(words[0][0]) else ""
    after = r"(?!\w)" if _needs_boundary(words[-1][-1]) else ""
    return re.compile(before + body + after, flags)


def locate_spans(text: str, spans: list[tuple[str, str, float]]) -> tuple[list[CharSpan], int]:
    """Find each ``(span text, section, reward)`` in ``text`` (rules in the module docstring).

    Returns the located character spans (every occurrence of every span found) and the number of spans not found.
    """
    located, dropped = [], 0
    for span, section, reward in spans:
        matches = []
        for flags in (0, re.IGNORECASE):
            pattern = _span_pattern(span, flags)
            matches = list(pattern.finditer(text)) if pattern else []
            if matches:
                break
        if not matches:
            dropped += 1
        located += [CharSpan(m.start(), m.end(), section, reward) for m in matches]
    return located, dropped


def token_rewards(offsets: list[tuple[int, int]], spans: list[CharSpan], outside: float) -> torch.Tensor:
    """(T,) float rewards of the tokens with character ranges ``offsets`` (rules in the module docstring)."""
    rewards = torch.zeros(len(offsets))
    sections = {span.section: span.reward for span in spans}
    for t, (start, end) in enumerate(offsets):
        if end <= start:
            continue
        touched = {s.section for s in spans if s.start < end and start < s.end}
        rewards[t] = sum(sections[name] for name in touched) if touched else outside
    return rewards
