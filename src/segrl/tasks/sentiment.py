"""``sentiment``: continue the opening of a review; the VADER compound score of the continuation is the reward.

The holistic-reward testbed on real English for CARDS (``shared/specs/cards.md``) and DRLC (``shared/specs/drlc.md``),
meant for the ``smollm2-135m`` preset: the policy continues a review, and the reward says how positive the
continuation is. There is no right answer, only a better or worse one, and no per-token truth: what DRLC adds is a
critic that says *which words* made the text positive or negative (:func:`vader_word_scores` is its lexicon
version).

Format
------
prompt (plain text, no chat template; one templated opening, no trailing space or newline)::

    I bought this coffee maker last month and

completion (the demonstration: a templated positive continuation that starts with a space)::

     it turned out to be excellent. The coffee maker is worth every penny.

The demonstration is **only for SFT presets** (a format example: "continue the text"); it is not a gold answer, and
nothing scores a completion against it.

Openings come from :data:`TEMPLATES` (25 templates) filled with one of :data:`PRODUCTS` (38 products: goods such as
a pair of headphones, a coffee maker or a phone; places such as a restaurant or a hotel; media such as a book or a
film). Every product is a singular noun phrase ("pair of running shoes"), so "this {product}" and "it" read right.
Each template names the kinds of product it fits (``"The {product} arrived on time, but"`` is for goods only), so
only the fitting (template, product) pairs are used: 604 distinct prompts. Templates are *neutral* ("I bought this
{product} last month and") or *negative* ("I had high hopes for the {product}, but"), so that a sampled continuation
is not already positive: a policy has to learn to turn the review around. A template ends either where a clause
follows ("... and", "... but", "I can say that") or where an adjective follows ("... my first impression of the
{product} was"); the demonstrations are drawn from the list that fits (:data:`CLAUSE_ENDINGS` or
:data:`ADJECTIVE_ENDINGS`).

Difficulty knob (keyword argument of :func:`make_dataset`; default in :data:`DEFAULT_DIFFICULTY`)
-----------------------------------------------------------------------------------------------
- ``negative_share`` (0.5): the probability that a prompt uses a negative opening rather than a neutral one (a
  number in [0, 1]; 0 gives only neutral openings, 1 only negative ones).

Columns: ``prompt``, ``completion``, ``template`` (int, the index in :data:`TEMPLATES`), ``product`` (str) and
``mood`` (``"neutral"`` or ``"negative"``: the opening's kind). :func:`reward` needs none of them.

Splits: a (template, product) pair belongs to ``test`` when a CRC32 of ``"<template index>/<product>"`` falls in 1 of
10 buckets, to ``train`` otherwise (:func:`split_of`), so the prompt texts of the two splits are disjoint for every
seed and size (54 of the 604 pairs are test pairs, 29 neutral and 25 negative; both splits hold both moods). A prompt is
a pair drawn uniformly from its split's pairs of the drawn mood, so prompts repeat within a split. Each split draws
from its own random stream (``random.Random`` seeded with ``"sentiment/<split>/<seed>"``), so the data are
reproducible across machines and processes, and a smaller ``num_examples`` gives a prefix of a larger one. (The
split depends on the template's *index*: reordering :data:`TEMPLATES` reshuffles the splits; append new templates.)

Reward
------
:func:`reward` is VADER's compound score (``vaderSentiment``'s ``SentimentIntensityAnalyzer().polarity_scores(text)
["compound"]``, in [-1, 1]) of the **completion text only**: the prompt is not scored, so a negative opening does not
pull the reward down, and the same continuation gets the same reward whatever it continues. An empty or
whitespace-only completion, or one that holds no text at all (None, a number, a conversation without assistant
messages), scores -1.0, the task's minimum as the task contract asks: were it VADER's neutral 0.0, a policy could
beat any negative continuation by saying nothing (:func:`score` of such a text is still VADER's 0.0). Conversational completions (TRL's list of messages) are scored on their assistant messages' text.
It never raises on a completion. The analyzer is made once per process (its lexicon ships in the package; it
reads no network).

VADER scores the text **as a whole** and is a **lexicon** method (a valence per word, with rules for negation,
boosters such as "very", "but", capitals and exclamation marks, squashed by x/sqrt(x^2 + 15)). So it can be gamed:
repeating positive words (``"great great great great great"`` scores 0.97) or appending "love it!" drives the reward
up without writing a better review. That is a known reward-hacking route, and one the DRLC benchmark will look at
(a policy optimised against VADER, and against a VADER-based critic, should be expected to find it); report samples
of the text, not only the reward.

Word scores (the lexicon critic)
--------------------------------
:func:`vader_word_scores` lists the words of a text that VADER's lexicon scores, as ``(start, end, valence)``:
character offsets (Python string indices, end exclusive; ``text[start:end]`` is the word) and the word's lexicon
valence (``analyzer.lexicon[word]``, about -4..+4). It is a per-word lookup, much simpler than what
:func:`reward` computes: see its docstring for the simplifications.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from typing import Any

from segrl.errors import UserError
from segrl.tasks import check_call, completion_text, with_defaults

#: Default difficulty (see the module docstring for what the knob does).
DEFAULT_DIFFICULTY: dict[str, Any] = {"negative_share": 0.5}

SPLITS = ("train", "test")
MOODS = ("neutral", "negative")
#: A (template, product) pair is in the test split when crc32("<template>/<product>") % TEST_BUCKETS == 0.
TEST_BUCKETS = 10

# Product kinds: "g" goods, "p" places, "m" media.
#: (product, kind) pairs; every product is a singular noun phrase.
PRODUCTS: list[tuple[str, str]] = [
    ("pair of headphones", "g"),
    ("pair of running shoes", "g"),
    ("phone", "g"),
    ("coffee maker", "g"),
    ("laptop", "g"),
    ("blender", "g"),
    ("backpack", "g"),
    ("vacuum cleaner", "g"),
    ("desk lamp", "g"),
    ("electric kettle", "g"),
    ("office chair", "g"),
    ("smartwatch", "g"),
    ("camera", "g"),
    ("mattress", "g"),
    ("winter jacket", "g"),
    ("toaster", "g"),
    ("keyboard", "g"),
    ("water bottle", "g"),
    ("tent", "g"),
    ("bicycle helmet", "g"),
    ("restaurant", "p"),
    ("hotel", "p"),
    ("cafe", "p"),
    ("pizza place", "p"),
    ("bakery", "p"),
    ("gym", "p"),
    ("hair salon", "p"),
    ("museum", "p"),
    ("campsite", "p"),
    ("sushi bar", "p"),
    ("book", "m"),
    ("film", "m"),
    ("novel", "m"),
    ("video game", "m"),
    ("podcast", "m"),
    ("album", "m"),
    ("TV series", "m"),
    ("cookbook", "m"),
]

#: (opening, mood, kinds it fits, what follows: "clause" or "adjective"). Append only (the split uses the index).
TEMPLATES: list[tuple[str, str, str, str]] = [
    # neutral openings
    ("I bought this {product} last month and", "neutral", "g", "clause"),
    ("I have been using this {product} for a few weeks now, and", "neutral", "g", "clause"),
    ("Honestly, my first impression of the {product} was", "neutral", "gpm", "adjective"),
    ("We visited the {product} last weekend and", "neutral", "p", "clause"),
    ("I went to the {product} with two friends, and", "neutral", "p", "clause"),
    ("I finished the {product} over the holidays, and", "neutral", "m", "clause"),
    ("After a month with the {product}, I can say that", "neutral", "gpm", "clause"),
    ("My friend recommended the {product}, so I gave it a try, and", "neutral", "gpm", "clause"),
    ("I did not know what to expect from the {product}, and", "neutral", "gpm", "clause"),
    ("The {product} arrived on time, and", "neutral", "g", "clause"),
    ("Overall, the {product} is", "neutral", "gpm", "adjective"),
    ("I ordered the {product} online and", "neutral", "g", "clause"),
    # negative openings
    ("The {product} arrived on time, but", "negative", "g", "clause"),
    ("I had high hopes for the {product}, but", "negative", "gpm", "clause"),
    ("I almost returned the {product} after the first day, and", "negative", "g", "clause"),
    ("The reviews of the {product} were mixed, and", "negative", "gpm", "clause"),
    ("At first the {product} was a disappointment, and", "negative", "gpm", "clause"),
    ("The staff at the {product} seemed rude at first, and", "negative", "p", "clause"),
    ("I was skeptical about the {product}, and", "negative", "gpm", "clause"),
    ("The price of the {product} seemed too high, but", "negative", "g", "clause"),
    ("We waited a long time for a table at the {product}, and", "negative", "p", "clause"),
    ("The beginning of the {product} was slow, and", "negative", "m", "clause"),
    ("My first impression of the {product} was not great, but", "negative", "gpm", "clause"),
    ("The {product} looked a bit cheap out of the box, and", "negative", "g", "clause"),
    ("I nearly gave up on the {product} halfway through, and", "negative", "m", "clause"),
]

#: Demonstrations after an opening that a clause continues ("... and", "... but", "I can say that").
CLAUSE_ENDINGS = [
    " it turned out to be excellent. The {product} is worth every penny.",
    " I am really glad I gave it a chance. The {product} is wonderful, and I would happily recommend it.",
    " it quickly won me over. I love the {product} and would recommend it to anyone.",
    " now it is one of my favorite things. The {product} is a real pleasure.",
    " I was pleasantly surprised. The {product} is great, and I would gladly do it again.",
    " it exceeded all my expectations. I am very happy with the {product}.",
    " it has been a delight ever since. The {product} is simply fantastic.",
    " honestly it made my week. The {product} is beautiful, and I enjoyed every minute of it.",
]

#: Demonstrations after an opening that an adjective continues ("... my first impression of the {product} was").
ADJECTIVE_ENDINGS = [
    " excellent, and I would happily recommend the {product} to anyone.",
    " wonderful in every way that matters. I love the {product}.",
    " great, and the {product} keeps getting better. I am very happy with it.",
    " fantastic, a real pleasure from start to finish.",
    " superb, and I am glad I gave the {product} a chance.",
    " delightful, and the {product} is worth every penny.",
]


def split_of(template: int, product: str) -> str:
    """Which split a (template index, product) pair belongs to (``"train"`` or ``"test"``)."""
    return "test" if zlib.crc32(f"{template}/{product}".encode()) % TEST_BUCKETS == 0 else "train"


def render_prompt(template: int, product: str) -> str:
    """The prompt text of template ``template`` (an index in :data:`TEMPLATES`) filled with ``product``."""
    return TEMPLATES[template][0].format(product=product)


def _all_pairs() -> dict[tuple[str, str], list[tuple[int, str]]]:
    """(split, mood) -> the fitting (template index, product) pairs of that split and mood, in a fixed order."""
    out: dict[tuple[str, str], list[tuple[int, str]]] = {(s, m): [] for s in SPLITS for m in MOODS}
    for t, (_, mood, kinds, _) in enumerate(TEMPLATES):
        for product, kind in PRODUCTS:
            if kind in kinds:
                out[(split_of(t, product), mood)].append((t, product))
    return out


_PAIRS = _all_pairs()


# ----------------------------------------------------------------------------------------------------------------
# data


def _check_difficulty(difficulty: dict[str, Any]) -> dict[str, Any]:
    d = with_defaults("sentiment", DEFAULT_DIFFICULTY, difficulty)
    share = d["negative_share"]
    if (
        isinstance(share, bool)
        or not isinstance(share, (int, float))
        or not math.isfinite(share)
        or not 0.0 <= share <= 1.0
    ):
        raise UserError(f"sentiment: difficulty knob negative_share must be a number in [0, 1], got {share!r}")
    d["negative_share"] = float(share)
    return d


def make_rows(split: str, num_examples: int, seed: int = 0, **difficulty: Any) -> list[dict[str, Any]]:
    """The rows of :func:`make_dataset` as a list of dicts (no ``datasets`` overhead)."""
    check_call("sentiment", SPLITS, split, num_examples, seed)
    d = _check_difficulty(difficulty)
    rng = random.Random(f"sentiment/{split}/{seed}")
    rows = []
    for _ in range(num_examples):
        # the same three draws per row whatever the knob, so that a smaller size gives a prefix
        mood = "negative" if rng.random() < d["negative_share"] else "neutral"
        t, product = rng.choice(_PAIRS[(split, mood)])
        endings = CLAUSE_ENDINGS if TEMPLATES[t][3] == "clause" else ADJECTIVE_ENDINGS
        completion = rng.choice(endings).format(product=product)
        rows.append(
            {
                "prompt": render_prompt(t, product),
                "completion": completion,
                "template": t,
                "product": product,
                "mood": mood,
            }
        )
    return rows


def make_dataset(split: str, num_examples: int, seed: int = 0, **difficulty: Any):
    """A ``datasets.Dataset`` of ``num_examples`` review openings with demonstrations from ``split``.

    Columns ``prompt``, ``completion`` (a demonstration for SFT presets, not a gold answer), ``template``,
    ``product``, ``mood``; the knob and its default in the module docstring. Deterministic in its arguments; the
    prompt texts of train and test are disjoint, and a smaller ``num_examples`` gives a prefix of a larger one.
    """
    from datasets import Dataset, Features, Value

    rows = make_rows(split, num_examples, seed, **difficulty)
    features = Features(
        {
            "prompt": Value("string"),
            "completion": Value("string"),
            "template": Value("int64"),
            "product": Value("string"),
            "mood": Value("string"),
        }
    )
    return Dataset.from_list(rows, features=features)


def corpus(seed: int = 0) -> list[str]:
    """Texts to train a tokenizer on: 2,000 training prompts with their demonstrations, plus every (template,
    product) opening of both splits once with every demonstration ending, so that every word of the task's text
    is in the corpus."""
    # an explicit knob (not DEFAULT_DIFFICULTY), so that retuning the default does not change the tokenizer
    rows = make_rows("train", 2000, seed, negative_share=0.5)
    texts = [r["prompt"] + r["completion"] for r in rows]
    texts.extend(template.format(product=p) for template, *_ in TEMPLATES for p, _ in PRODUCTS)
    texts.extend(e.format(product=p) for e in CLAUSE_ENDINGS + ADJECTIVE_ENDINGS for p, _ in PRODUCTS)
    return texts


# ----------------------------------------------------------------------------------------------------------------
# reward

_ANALYZER = None


def analyzer():
    """The process's one ``vaderSentiment`` ``SentimentIntensityAnalyzer`` (made on first use; loading the lexicon
    takes a few tens of milliseconds)."""
    global _ANALYZER
    if _ANALYZER is None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        _ANALYZER = SentimentIntensityAnalyzer()
    return _ANALYZER


def score(text: Any) -> float:
    """VADER's compound score of ``text`` in [-1, 1]; 0.0 for an empty, whitespace-only or non-string text.
    Never raises."""
    if not isinstance(text, str) or not text.strip():
        return 0.0
    try:
        value = float(analyzer().polarity_scores(text)["compound"])
    except Exception:  # pragma: no cover - VADER has not been seen to raise on a string; never let it crash RL
        return 0.0
    return value if math.isfinite(value) else 0.0


def reward(prompts: list[Any], completions: list[Any], **kwargs: Any) -> list[float]:
    """VADER's compound score (in [-1, 1]) of each completion's text, the prompt not included. TRL's
    reward-function signature; the prompts and every keyword (dataset columns, TRL's extras) are ignored.

    Completions may be strings or conversational message lists (the assistant messages' text is used). Empty or
    whitespace-only completions, and ones that hold no text, score -1.0 (the minimum: silence must not beat a
    negative review). Never raises on a completion. A lexicon score of the whole text: repeating positive words
    games it (module docstring).
    """
    texts = [completion_text(c) for c in completions]
    return [score(text) if text is not None and text.strip() else -1.0 for text in texts]


# ----------------------------------------------------------------------------------------------------------------
# word scores (the lexicon critic)

# letters (any script), with inner apostrophes or hyphens: "can't", "self-confident", "café"
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019\-][^\W\d_]+)*")


def vader_word_scores(text: Any) -> list[tuple[int, int, float]]:
    """The words of ``text`` that VADER's lexicon scores, as ``(start, end, valence)`` in text order.

    ``start``/``end`` are character offsets (Python string indices, end exclusive), so ``text[start:end]`` is the
    word; ``valence`` is ``analyzer().lexicon[word.lower()]`` (about -4..+4: positive words > 0, negative < 0).
    Words are runs of letters (any script, no digits) with inner apostrophes or hyphens, found by a regular
    expression over the text, so punctuation, quotes and unicode around a word do not move its span. A word is
    looked up lowercased, with a curly apostrophe read as ``'``; a hyphenated word not in the lexicon as a whole
    ("super-happy") is looked up part by part, each part its own span.

    Simplifications (it is a per-word lexicon lookup, not VADER's sentence score): no negation ("not good" gives
    "good" its positive valence), no boosters or dampeners ("very", "slightly"), no capitals or exclamation-mark
    emphasis, no "but" rule, and no lexicon entries that are not words of letters (emoticons such as ``:)``,
    ``<3``, slang with digits such as ``gr8``) or that span several words (``fed up``, ``can't stand``). A
    non-string gives ``[]``; it never raises.
    """
    if not isinstance(text, str):
        return []
    lexicon = analyzer().lexicon
    out: list[tuple[int, int, float]] = []
    for m in _WORD.finditer(text):
        word = m.group().replace("\u2019", "'").lower()
        if word in lexicon:
            out.append((m.start(), m.end(), float(lexicon[word])))
        elif "-" in word:
            for part in re.finditer(r"[^\-]+", m.group()):
                key = part.group().replace("\u2019", "'").lower()
                if key in lexicon:
                    out.append((m.start() + part.start(), m.start() + part.end(), float(lexicon[key])))
    return out


__all__ = [
    "ADJECTIVE_ENDINGS",
    "CLAUSE_ENDINGS",
    "DEFAULT_DIFFICULTY",
    "PRODUCTS",
    "TEMPLATES",
    "analyzer",
    "corpus",
    "make_dataset",
    "make_rows",
    "render_prompt",
    "reward",
    "score",
    "split_of",
    "vader_word_scores",
]
