"""Parse a critic's answer into spans: a small line grammar, strict where a wrong reading would change rewards.

The critic's prompt ends with its template's first header (:mod:`segrl.critic.templates`), so its generated text
starts inside the first section; :func:`parse_answer` reads ``first header + generated text``. Only the generated
text is parsed, never the prompt that quotes the policy's response, so a response that imitates the headers or the
span markers cannot add, remove or move a parsed span: at most it can sway the critic model itself.

Grammar (one item per line; blank lines are ignored; headers and "None identified" are matched case-insensitively
after stripping spaces)::

    answer  := section+ [trailer]
    section := HEADER NEWLINE ( "None identified" | item+ )
    item    := ("- " | "* " | "• " | "1. " | "1) " | "[Span 1]: " | "Span 1: ") text [ "(label: " LABEL ")" ]

- Every header of the template appears once, in the template's order; a section holds "None identified" or at
  least one item, not both.
- After the last section is complete, the first line that is not one of its items ends the answer (a critic that
  goes on to invent the next example is cut there: its "trailer" is ignored).
- Anything else (a missing, repeated or out-of-order header, an empty section, a stray line inside a section
  before the last) makes the answer unparseable: :class:`ParsedAnswer` ``ok=False`` with the reason. The caller
  gives such a response zero critic reward and counts it.
- An item's text is stripped of spaces and of one pair of matching quotes around it; an item with no text is
  dropped. ``(label: ...)`` at the end of an item is split off as its label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ParsedAnswer", "ParsedSpan", "parse_answer"]

_ITEM = re.compile(r"^(?:[-*\u2022]|\d{1,3}[.)]|\[span\s*\d{1,3}\]\s*:|span\s*\d{1,3}\s*:)\s*(.*)$", re.IGNORECASE)
_LABEL = re.compile(r"^(.*?)\s*\(\s*label\s*:\s*([^()]*?)\s*\)$", re.IGNORECASE | re.DOTALL)
_NONE = "none identified"
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`"}


@dataclass(frozen=True)
class ParsedSpan:
    """One span as the critic wrote it: ``section`` is the template header it was listed under."""

    section: str
    text: str
    label: str | None = None


@dataclass(frozen=True)
class ParsedAnswer:
    """The spans of an answer, or ``ok=False`` and the reason it could not be parsed."""

    ok: bool
    spans: tuple[ParsedSpan, ...] = field(default_factory=tuple)
    reason: str = ""


def _key(line: str) -> str:
    return " ".join(line.split()).lower()


def _item_text(body: str) -> tuple[str, str | None]:
    text, label = body.strip(), None
    match = _LABEL.match(text)
    if match:
        text, label = match.group(1).strip(), match.group(2).strip() or None
    if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
        text = text[1:-1].strip()
    return text, label


def parse_answer(generated: str, headers: list[str]) -> ParsedAnswer:
    """Parse ``headers[0] + "\\n" + generated`` (see the module docstring) into spans per header.

    Args:
        generated: the critic's generated text (the part after the prompt's first header).
        headers: the template's section headers, in order.
    """
    if not isinstance(generated, str):
        return ParsedAnswer(False, reason="the critic's answer is not text")
    keys = [_key(h) for h in headers]
    spans: list[ParsedSpan] = []
    current = -1  # index of the open section
    state: list[str] = []  # per opened section: "" (nothing yet), "none" or "items"

    def complete() -> bool:
        return len(state) == len(headers) and state[-1] != ""

    for line in [headers[0], *generated.splitlines()]:
        key = _key(line)
        if not key:
            continue
        item = _ITEM.match(line.strip())
        if complete() and not (item and state[-1] == "items"):
            break  # the answer is over; whatever follows is not part of it
        if key in keys:
            index = keys.index(key)
            if index != current + 1:
                return ParsedAnswer(False, reason=f"header {headers[index]!r} repeated or out of order")
            if current >= 0 and state[current] == "":
                return ParsedAnswer(False, reason=f"section {headers[current]!r} is empty")
            current += 1
            state.append("")
        elif key.rstrip(".") == _NONE:
            if state[current] != "":
                return ParsedAnswer(False, reason=f"section {headers[current]!r} mixes spans and 'None identified'")
            state[current] = "none"
        elif item:
            if state[current] == "none":
                return ParsedAnswer(False, reason=f"section {headers[current]!r} mixes spans and 'None identified'")
            state[current] = "items"
            text, label = _item_text(item.group(1))
            if text:
                spans.append(ParsedSpan(headers[current], text, label))
        else:
            return ParsedAnswer(False, reason=f"unexpected line in section {headers[current]!r}: {line.strip()[:60]!r}")
    if not complete():
        missing = headers[len(state)] if len(state) < len(headers) else headers[-1]
        return ParsedAnswer(False, reason=f"section {missing!r} is missing or empty")
    return ParsedAnswer(True, tuple(spans))
