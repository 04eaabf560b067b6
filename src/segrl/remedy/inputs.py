"""ReMedy's model input: a translation request whose answer is the hypothesis, tokenized one way everywhere.

Tan & Monz 2025 (arXiv 2504.13630), §3: the reward model reads a chat-formatted translation request. The user turn
asks to translate the source into fluent {target language} and shows the source; in the reference-based mode it
also gives the reference as a template (the reference-free, quality-estimation mode omits it); the assistant turn
is the hypothesis. Language codes are shown as full names (:data:`LANGUAGES`). The scalar head reads the last token.

- With a chat template (an instruct model): user turn ``"Translate the following {S} text into fluent {T}.\\n\\n
  {S}: {source}"`` (+ ``"\\n\\nUse this {T} translation as a template: {reference}"``), assistant turn = the
  hypothesis, through ``apply_chat_template`` (which ends the assistant turn with its end-of-turn token).
- Without one (the ``tiny-toymt`` preset): the same request as plain lines, then EOS::

      Translate the following English text into fluent Toy language A.
      English: the cat sees a dog.
      Template: <reference>
      Toy language A: <hypothesis></s>

:func:`encode` is used for training, scoring and meta-evaluation alike, so that a model always reads what it was
trained on. The paper's exact prompt wording is not published in the spec; this wording follows its description.
"""

from __future__ import annotations

from segrl.errors import UserError

__all__ = ["LANGUAGES", "encode", "language_name", "split_lp"]

#: Language code -> name shown to the model: ISO 639-1 codes of WMT's language pairs and other common ones, and
#: the toy languages of the ``toymt`` task (ISO 639's "reserved for local use" codes qaa, qab).
LANGUAGES: dict[str, str] = {
    "ar": "Arabic", "bn": "Bengali", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "gu": "Gujarati", "ha": "Hausa", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian", "is": "Icelandic", "it": "Italian", "ja": "Japanese",
    "km": "Khmer", "kk": "Kazakh", "ko": "Korean", "lt": "Lithuanian", "lv": "Latvian", "mr": "Marathi",
    "ms": "Malay", "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "ps": "Pashto", "pt": "Portuguese",
    "ro": "Romanian", "ru": "Russian", "sk": "Slovak", "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish",
    "sw": "Swahili", "ta": "Tamil", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese",
    "xh": "Xhosa", "zh": "Chinese", "zu": "Zulu",
    "qaa": "Toy language A", "qab": "Toy language B",
}


def language_name(code: str, where: str = "") -> str:
    """The name of language ``code``; an unknown code is a :class:`UserError` (``where`` says which input)."""
    if code not in LANGUAGES:
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}unknown language code {code!r}; known codes: {', '.join(sorted(LANGUAGES))}")
    return LANGUAGES[code]


def split_lp(lp: str, where: str = "") -> tuple[str, str]:
    """``"en-de"`` -> ``("en", "de")``, both known codes (:func:`language_name`)."""
    parts = lp.split("-") if isinstance(lp, str) else []
    if len(parts) != 2 or not all(parts):
        prefix = f"{where}: " if where else ""
        raise UserError(f"{prefix}a language pair is written 'src-tgt' (e.g. en-de), got {lp!r}")
    for code in parts:
        language_name(code, where)
    return parts[0], parts[1]


def request(source: str, lp: str, reference: str | None = None) -> str:
    """The user turn: the translation request (with the reference as a template in the reference-based mode)."""
    src, tgt = (LANGUAGES[c] for c in split_lp(lp))
    text = f"Translate the following {src} text into fluent {tgt}.\n\n{src}: {source}"
    if reference is not None:
        text += f"\n\nUse this {tgt} translation as a template: {reference}"
    return text


def encode(tokenizer, source: str, hypothesis: str, lp: str, reference: str | None = None) -> list[int]:
    """Token ids of one (source, hypothesis[, reference]) for the reward model (module docstring)."""
    if getattr(tokenizer, "chat_template", None) is not None:
        messages = [{"role": "user", "content": request(source, lp, reference)},
                    {"role": "assistant", "content": hypothesis}]
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    src, tgt = (LANGUAGES[c] for c in split_lp(lp))
    lines = [f"Translate the following {src} text into fluent {tgt}.", f"{src}: {source}"]
    if reference is not None:
        lines.append(f"Template: {reference}")
    lines.append(f"{tgt}: {hypothesis}")
    ids = list(tokenizer(text="\n".join(lines))["input_ids"])
    return ids + [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else ids
