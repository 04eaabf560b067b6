"""DRLC critics: given prompts and responses, which character spans of each response are good or bad.

One interface: ``critic(prompts, responses, scores) -> list[Critique]`` over equal-length lists (``scores``: the
holistic rewards, or None; only a template that shows the score reads them).

- :class:`ChatCritic`: any ``transformers`` causal LM prompted with a :class:`~segrl.critic.templates.CriticTemplate`
  (through its chat template when it has one, the answer prefilled with the first header; plain text otherwise),
  greedy, batched with left padding; answers are cached by the rendered prompt, i.e. by (prompt, response, score).
  Special-token strings typed in the response or prompt (``<|im_end|>``) are broken by a zero-width space before
  rendering, so quoted text stays text; spans are still found in the original response.
  Self-critique is a ``ChatCritic`` over the policy being trained (``cache_size=0``: the critic changes as the
  policy learns, so an old answer is not reused).
- :class:`LexiconCritic`: VADER's word valences (:func:`segrl.tasks.sentiment.vader_word_scores`) as positive and
  negative one-word spans, for CPU runs and tests. No model, no parsing; its simplifications are those of the word
  scores (no negation, no boosters).

An empty or whitespace-only response is not sent to a model critic: it has no span, and gets no critic reward.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from segrl.critic.align import CharSpan, locate_spans
from segrl.critic.answers import parse_answer
from segrl.critic.templates import CriticTemplate

logger = logging.getLogger(__name__)

__all__ = ["ChatCritic", "Critique", "LexiconCritic"]


@dataclass
class Critique:
    """A critic's verdict on one response.

    Attributes:
        ok: False when the critic's answer could not be parsed (then the response gets no critic reward).
        spans: the located spans (character ranges of the response, each with its section and reward per token).
        outside: reward per token of the response that is in no span.
        dropped: spans the critic named that occur nowhere in the response.
        answer: the critic's raw answer (None for the lexicon critic); reason: why it did not parse.
    """

    ok: bool
    spans: list[CharSpan] = field(default_factory=list)
    outside: float = 0.0
    dropped: int = 0
    answer: str | None = None
    reason: str = ""


def _prompt_text(prompt) -> str:
    """A dataset prompt as text: itself, or the last user message of a conversation."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt or [] if isinstance(m, dict) and m.get("role") == "user"]
    return str(users[-1]) if users else ""


class LexiconCritic:
    """VADER word valences as spans: words with valence > 0 are positive spans (``+span_reward`` per token),
    words with valence < 0 negative spans (``-span_reward``)."""

    def __init__(self, span_reward: float = 0.5):
        self.span_reward = span_reward

    def __call__(self, prompts, responses: list[str], scores=None) -> list[Critique]:
        from segrl.tasks.sentiment import vader_word_scores

        critiques = []
        for response in responses:
            spans = [
                CharSpan(start, end, "positive" if valence > 0 else "negative",
                         self.span_reward if valence > 0 else -self.span_reward)
                for start, end, valence in vader_word_scores(response) if valence != 0
            ]
            critiques.append(Critique(ok=True, spans=spans))
        return critiques


class ChatCritic:
    """An LLM critic (module docstring).

    Args:
        model, tokenizer: a causal LM and its tokenizer (the policy's for self-critique).
        template: what to ask and what spans are worth.
        max_new_tokens: longest answer (64; the paper's sentiment critic answered in 60).
        batch_size: prompts per ``generate`` call.
        cache_size: answers kept, least recently used dropped first; 0 keeps none across calls.
    """

    def __init__(self, model, tokenizer, template: CriticTemplate, max_new_tokens: int = 64, batch_size: int = 8,
                 cache_size: int = 10_000):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        self.max_new_tokens, self.batch_size, self.cache_size = max_new_tokens, batch_size, cache_size
        self.cache: OrderedDict[str, str] = OrderedDict()
        self.headers = list(template.sections)
        self.chat = getattr(tokenizer, "chat_template", None) is not None
        added = getattr(tokenizer, "added_tokens_decoder", {}).values()
        self.specials = sorted({t for t in getattr(tokenizer, "all_special_tokens", []) if len(t) > 1} |
                               {t.content for t in added if t.special and len(t.content) > 1}, key=len, reverse=True)

    def _defuse(self, text: str) -> str:
        """``text`` with every special-token string of the tokenizer broken by a zero-width space after its first
        character, so that quoted text cannot become a real special token (e.g. close the user's turn)."""
        for special in self.specials:
            text = text.replace(special, special[0] + "\u200b" + special[1:])
        return text

    def render(self, prompt, response: str, score: float | None) -> str:
        """The full critic prompt for one response, ending with the first header (the answer's start)."""
        prompt, response = self._defuse(_prompt_text(prompt)), self._defuse(response)
        if not self.chat:
            return self.template.plain_text(prompt, response, score)
        messages = self.template.messages(prompt, response, score)
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + self.template.first_header + "\n"

    def __call__(self, prompts, responses: list[str], scores=None) -> list[Critique]:
        scores = list(scores) if scores is not None else [None] * len(responses)
        rendered = [self.render(p, r, s) if r.strip() else None for p, r, s in zip(prompts, responses, scores)]
        missing = list(dict.fromkeys(k for k in rendered if k is not None and k not in self.cache))
        answers = dict(zip(missing, self._generate(missing)))
        for key in rendered:
            if key in self.cache:
                answers[key] = self.cache[key]
                self.cache.move_to_end(key)
        for key in missing:
            if self.cache_size > 0:
                self.cache[key] = answers[key]
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return [self._critique(answers[k], r) if k is not None else Critique(ok=True)
                for k, r in zip(rendered, responses)]

    def _critique(self, answer: str | None, response: str) -> Critique:
        if answer is None:
            return Critique(ok=False, reason="the critic prompt does not fit the critic's context")
        parsed = parse_answer(answer, self.headers)
        if not parsed.ok:
            return Critique(ok=False, answer=answer, reason=parsed.reason)
        wanted = [(s.text, s.section, self.template.sections[s.section]) for s in parsed.spans]
        spans, dropped = locate_spans(response, wanted)
        return Critique(ok=True, spans=spans, outside=self.template.outside, dropped=dropped, answer=answer)

    def _generate(self, prompts: list[str]) -> list[str | None]:
        """Greedy answers to ``prompts`` (None for a prompt too long for the model's context)."""
        from segrl.tiny import generate_completions

        limit = getattr(self.model.config, "max_position_embeddings", None)
        lengths = [len(self.tokenizer(text=p, add_special_tokens=not self.chat)["input_ids"]) for p in prompts]
        fits = [i for i, n in enumerate(lengths) if limit is None or n + self.max_new_tokens <= limit]
        answers: list[str | None] = [None] * len(prompts)
        texts = generate_completions(self.model, self.tokenizer, [prompts[i] for i in fits], greedy=True,
                                     max_new_tokens=self.max_new_tokens, batch_size=self.batch_size,
                                     add_special_tokens=not self.chat)
        for i, text in zip(fits, texts):
            answers[i] = text
        if len(fits) < len(prompts):
            logger.warning("%d critic prompt(s) longer than the critic's context were skipped",
                           len(prompts) - len(fits))
        return answers
