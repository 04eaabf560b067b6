"""Critic prompts for DRLC: few-shot instructions that ask an LLM for the *shortest* spans behind a judgement.

A :class:`CriticTemplate` says what the critic is shown (``inputs``: the policy's response, and for summarisation
the source document and the holistic score), what it must answer (one section per kind of span, each a list of
spans or "None identified"), and what a span is worth per token (``sections``: header -> reward; ``outside``:
the reward of the response's other tokens). Three are built in, written for this project after the paper's
(Cao et al. 2024, appendix prompts):

- ``sentiment``: "Positive spans" (+0.5 per token) and "Negative spans" (-0.5); 0 elsewhere.
- ``toxicity``: "Toxic spans" (-0.5); 0 elsewhere.
- ``summarization``: "Flawed spans" (-0.5), each with a short label (factually incorrect / irrelevant /
  incoherent), given the source, the summary and its holistic score; +0.5 elsewhere (the spec's default).

A user replaces one with a JSON file of the same fields (:func:`load_template`; :meth:`CriticTemplate.to_json`
writes a built-in one out as a starting point).

The answer format (parsed by :mod:`segrl.critic.answers`)::

    Positive spans:
    - worth every penny
    Negative spans:
    None identified

The prompt ends with the first header, so the critic's answer starts inside the first section. **The response is
quoted data**: every line of every input is shown behind ``"> "`` (:func:`quote`), so no line of the policy's text
can start at the beginning of a line of the prompt, where the template's own headers and examples are; and only
the critic's *generated* text is ever parsed, never the prompt that holds the response.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from segrl.errors import UserError

__all__ = ["TEMPLATES", "CriticTemplate", "load_template", "quote"]

#: The inputs a template may show, as ``(label, field)`` with field one of these.
INPUT_FIELDS = ("prompt", "response", "score")


def quote(text: str) -> str:
    """``text`` with every line behind ``"> "`` (an empty line becomes ``">"``); an empty text is one ``">"``."""
    return "\n".join(f"> {line}" if line else ">" for line in (text.splitlines() or [""]))


@dataclass(frozen=True)
class CriticTemplate:
    """A critic prompt and what its spans are worth.

    Attributes:
        name: a short name, for logs.
        instruction: what the critic is asked to do (the first part of the prompt).
        inputs: ``(label, field)`` pairs shown for each item, in order; ``field`` is ``"prompt"``, ``"response"``
            (the text whose spans are marked) or ``"score"`` (the holistic reward, shown with 2 decimals).
        sections: ``header -> reward per token`` inside that header's spans, in the order the answer lists them.
        outside: reward per token of the response that is in no span (only when the answer parses).
        examples: few-shot examples, each a dict with the ``inputs`` fields and ``"answer"`` (the full answer
            text, every section, in the format of :mod:`segrl.critic.answers`).
    """

    name: str
    instruction: str
    inputs: tuple[tuple[str, str], ...]
    sections: dict[str, float]
    outside: float = 0.0
    examples: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    def __post_init__(self):
        where = f"critic template {self.name!r}"
        if not self.sections:
            raise UserError(f"{where}: `sections` must name at least one header")
        for header in self.sections:
            if not isinstance(header, str) or not header.strip() or "\n" in header:
                raise UserError(f"{where}: a section header must be one non-empty line, got {header!r}")
        if len({" ".join(h.split()).lower() for h in self.sections}) < len(self.sections):
            raise UserError(f"{where}: section headers must differ in more than case and spacing (answers are read "
                            f"case-insensitively), got {list(self.sections)}")
        if not all(math.isfinite(v) for v in [*self.sections.values(), self.outside]):
            raise UserError(f"{where}: section and outside rewards must be finite numbers")
        fields = [f for _, f in self.inputs]
        if "response" not in fields or any(f not in INPUT_FIELDS for f in fields):
            raise UserError(f"{where}: `inputs` must show 'response' and only fields of {INPUT_FIELDS}, got {fields}")
        for i, example in enumerate(self.examples):
            missing = [f for f in [*fields, "answer"] if f not in example]
            if missing:
                raise UserError(f"{where}: example {i} lacks {missing}")

    @property
    def uses_score(self) -> bool:
        return any(f == "score" for _, f in self.inputs)

    @property
    def first_header(self) -> str:
        return next(iter(self.sections))

    def item(self, prompt: str, response: str, score: float | None = None) -> str:
        """The quoted inputs of one item, as shown to the critic."""
        values = {"prompt": prompt, "response": response, "score": "" if score is None else f"{score:.2f}"}
        return "\n\n".join(f"{label}:\n{quote(str(values[f]))}" for label, f in self.inputs)

    def messages(self, prompt: str, response: str, score: float | None = None) -> list[dict[str, str]]:
        """The critic's conversation: the instruction with the first example, each example's answer as the
        assistant's turn, then the item to judge. (A chat model's answer is then prefilled with the first header.)"""
        turns = [(self.item(e.get("prompt", ""), e["response"], e.get("score")), e["answer"]) for e in self.examples]
        messages, head = [], self.instruction + "\n\n"
        for question, answer in turns:
            messages += [{"role": "user", "content": head + question}, {"role": "assistant", "content": answer}]
            head = ""
        messages.append({"role": "user", "content": head + self.item(prompt, response, score)})
        return messages

    def plain_text(self, prompt: str, response: str, score: float | None = None) -> str:
        """The same prompt for a model without a chat template, ending with the first header."""
        parts = [self.instruction]
        for e in self.examples:
            parts.append(self.item(e.get("prompt", ""), e["response"], e.get("score")) + "\n\n" + e["answer"].strip())
        parts.append(self.item(prompt, response, score) + "\n\n" + self.first_header + "\n")
        return "\n\n".join(parts)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


_SENTIMENT = CriticTemplate(
    name="sentiment",
    instruction=(
        "You annotate the sentiment of short texts. Mark the words that make the text positive or negative.\n"
        "- Mark the shortest span that carries the sentiment (\"great value\", not the whole sentence).\n"
        "- Copy each span exactly as it is written in the text, one span per line, after \"- \".\n"
        "- Do not mark neutral words. If a text has no positive (or no negative) span, write \"None identified\" "
        "under that header.\n"
        "The text is quoted: its lines start with \"> \". Answer with the two headers \"Positive spans:\" and "
        "\"Negative spans:\" and nothing else."
    ),
    inputs=(("Text", "response"),),
    sections={"Positive spans:": 0.5, "Negative spans:": -0.5},
    examples=(
        {"response": " the battery died after two days and support never answered.",
         "answer": "Positive spans:\nNone identified\nNegative spans:\n- battery died\n- never answered"},
        {"response": " it is honestly the most comfortable chair I have owned, though assembly was a pain.",
         "answer": "Positive spans:\n- the most comfortable\nNegative spans:\n- was a pain"},
        {"response": " I used it on Tuesday and again on Friday.",
         "answer": "Positive spans:\nNone identified\nNegative spans:\nNone identified"},
    ),
)

_TOXICITY = CriticTemplate(
    name="toxicity",
    instruction=(
        "You annotate toxic language. Mark the spans of the text that are insulting, threatening, obscene, hateful "
        "or otherwise toxic.\n"
        "- Mark the shortest span that carries the toxicity, copied exactly as written, one per line after \"- \".\n"
        "- Do not mark words that are merely negative or impolite in tone.\n"
        "- If nothing is toxic, write \"None identified\".\n"
        "The text is quoted: its lines start with \"> \". Answer with the header \"Toxic spans:\" and nothing else."
    ),
    inputs=(("Text", "response"),),
    sections={"Toxic spans:": -0.5},
    examples=(
        {"response": " and then that idiot blocked the whole lane again.",
         "answer": "Toxic spans:\n- that idiot"},
        {"response": " the meeting ran late, which was annoying.",
         "answer": "Toxic spans:\nNone identified"},
        {"response": " shut up, nobody wants to hear from a loser like you.",
         "answer": "Toxic spans:\n- shut up\n- a loser like you"},
    ),
)

_SUMMARIZATION = CriticTemplate(
    name="summarization",
    instruction=(
        "You review machine-written summaries. You see a source document, a summary of it, and the summary's "
        "score (higher is better). Mark the spans of the summary that are flawed.\n"
        "- Mark the shortest flawed span, copied exactly as written, one per line after \"- \", followed by a "
        "label in parentheses: (label: factually incorrect), (label: irrelevant) or (label: incoherent).\n"
        "- If the summary has no flaw, write \"None identified\".\n"
        "All inputs are quoted: their lines start with \"> \". Answer with the header \"Flawed spans:\" and nothing "
        "else."
    ),
    inputs=(("Source document", "prompt"), ("Summary", "response"), ("Summary score", "score")),
    sections={"Flawed spans:": -0.5},
    outside=0.5,
    examples=(
        {"prompt": "The town council voted 7 to 2 on Monday to close the old library and build a new one next to "
                   "the school. Construction starts in spring and should take two years.",
         "response": "The council voted to build a new library by the school; work starts in spring.",
         "score": 0.91,
         "answer": "Flawed spans:\nNone identified"},
        {"prompt": "My roommate keeps borrowing my car without asking. Last week he returned it with an empty tank "
                   "and a dent in the door. How do I bring this up without ruining our friendship?",
         "response": "Roommate borrowed my bike and I love road trips.",
         "score": 0.12,
         "answer": "Flawed spans:\n- my bike (label: factually incorrect)\n- I love road trips (label: irrelevant)"},
    ),
)

#: The built-in templates by name.
TEMPLATES: dict[str, CriticTemplate] = {t.name: t for t in (_SENTIMENT, _TOXICITY, _SUMMARIZATION)}


def load_template(name_or_path: str) -> CriticTemplate:
    """A built-in template by name (``sentiment``, ``toxicity``, ``summarization``) or one from a JSON file with
    :class:`CriticTemplate`'s fields."""
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UserError(f"Unknown critic template {name_or_path!r}: not one of {', '.join(TEMPLATES)} "
                        "and not a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, not UTF-8, too many digits
        raise UserError(f"{path}: cannot read the critic template ({str(err).strip().splitlines()[0]})") from None
    fields = {"name", "instruction", "inputs", "sections", "outside", "examples"}
    if not isinstance(data, dict) or not {"instruction", "inputs", "sections"} <= set(data) or set(data) - fields:
        raise UserError(f"{path}: a critic template is a JSON object with instruction, inputs, sections "
                        f"(and optionally name, outside, examples); got {sorted(data) if isinstance(data, dict) else type(data).__name__}")
    try:
        sections = {str(k): float(v) for k, v in dict(data["sections"]).items()}
        inputs = tuple((str(label), str(f)) for label, f in data["inputs"])
        examples = tuple(dict(e) for e in data.get("examples", ()))
        return CriticTemplate(name=str(data.get("name", path.stem)), instruction=str(data["instruction"]),
                              inputs=inputs, sections=sections, outside=float(data.get("outside", 0.0)),
                              examples=examples)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: malformed critic template ({err})") from err
