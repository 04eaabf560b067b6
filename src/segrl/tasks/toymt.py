"""``toymt``: translate simple English sentences into two toy languages; systems of known quality, simulated MQM.

The testbed for ReMedy (``shared/specs/remedy.md``): real WMT ratings are not reachable offline, so this task makes
a small translation world where the truth is known. English sentences from a small grammar are translated into two
toy languages by a deterministic rule-based "reference" translator; MT "systems" are the reference with errors of
known MQM severity injected at known rates; a simulated rater scores each hypothesis with noise. A metric can then be
trained on one year's ratings and meta-evaluated on the other's, and the numbers mean something: the true
(noise-free) score of every hypothesis and the expected quality of every system are known.

Languages
---------
Source: English sentences ``Subject Verb Object.`` from a grammar (:func:`draw_sentence`): a noun phrase is a
determiner (``the a this that my your``; plural: ``the these those my your some``, or a number word ``two`` ..
``five`` in its place), 0..``max_adjectives`` adjectives (in :data:`ADJECTIVES` order, 25 of them), and a noun (50
:data:`NOUNS`, regular or spelled-out plurals; subjects are the 25 people and animals); the verb is one of 25
transitive :data:`VERBS`, agreeing with the subject (``sees``/``see``), negated with ``does not``/``do not`` in a
quarter of the sentences. Example: ``The big dog does not see two old red cats.``

Sentences are generated as structures (:class:`Sentence`, :class:`NounPhrase`) and rendered to every language
(:func:`render_english`, :func:`translate`). ``translate`` also accepts the English text: :func:`parse_english`
reads back exactly the texts ``render_english`` writes (a strict parse, checked by re-rendering), nothing else.

Targets: ``qaa`` "Toy language A" and ``qab`` "Toy language B" (ISO 639 codes reserved for local use;
:data:`LANGUAGE_NAMES`). Each has a lexicon (:data:`LEXICONS`): every English lemma (function words, noun singulars,
adjectives, verb base forms; "not" is the negation particle; "do"/"does" and "a"/"an" have no translation of their
own) maps to a pseudo-word of consonant-vowel syllables drawn from ``random.Random("toymt/lexicon/<lang>")`` in a
fixed order. A uses the letters ``ptkmnlsv`` + ``aeiou``, B ``bdgrzfhw`` + ``aeiouy``, so no word is shared between
the two; words are distinct within a language (plural forms included) and none is a word of the English grammar or
of a short stop-list of English words spelled with these letters. There is no agreement or conjugation.

==========================  ==================================  ==================================
rule                        A (``qaa``)                         B (``qab``)
==========================  ==================================  ==================================
word order                  SVO                                 SOV
adjectives                  after the noun                      before the noun
plural                      suffix ``-i`` (``tisa`` ``tisai``)  suffix ``-ko`` (``zafire`` ``zafireko``)
negation particle           before the verb                     after the verb
determiner / number word    first in its phrase                 first in its phrase
==========================  ==================================  ==================================

``The big dog does not see two old red cats.`` is ``Pupi nupo luva leti melo nipa tisai koti mola.`` in A and
``Bafu bigafa zydy fufo gafafu foroze zafireko hedafo baho.`` in B (first letter capitalised, final period).

Errors (MQM weights: minor -1, major -5, critical -25)
-------------------------------------------------------
A hypothesis is the reference with errors injected. Each error is recorded as ``{"severity", "kind", "weight"}``
and every injected error is visible in the text (a hypothesis equals its reference exactly when it has no error).

==============  ========  =============================================================================================
kind            severity  what it does
==============  ========  =============================================================================================
word_order      minor     in one noun phrase, the adjectives go on the wrong side of the noun (A: before, B: after); a
                          phrase without adjectives puts its determiner after the noun instead
plural          minor     one noun gets the wrong number: the plural suffix dropped (plural noun) or added (singular)
punctuation     minor     the final period is missing
mistranslation  major     a content word (noun, adjective or verb) becomes the toy word of another lemma of its part of
                          speech
untranslated    major     a content word is left in English, as in the source (``dog``, ``cats``, ``sees``; a noun
                          that also has a plural error is copied in the other English number)
omission        critical  the object phrase is dropped
negation        critical  the negation flips (the particle added, or removed)
unrelated       critical  the whole hypothesis is the reference of an unrelated sentence (different subject noun, verb
                          and object noun); no other error is drawn for it
==============  ========  =============================================================================================

A system is a profile: a probability per kind (:data:`SYSTEMS`, :func:`systems`). For each hypothesis, drawn from
its own stream, in this order: ``unrelated`` (if it fires, nothing else); ``omission``; ``negation``;
``mistranslation`` and ``untranslated`` (each at most once, on two different content words chosen uniformly among
those left); then, for each noun phrase still present (the object phrase is gone after an omission), ``word_order``
and ``plural`` independently; then ``punctuation``. So a hypothesis holds up to 5 minor errors (2 + 2 + 1), and the
expected count of each kind is exact (:func:`expected_errors`); :func:`expected_penalty` is minus the expected true
MQM score. The true MQM score of a hypothesis (``mqm``) is the sum of its errors' weights (0 when perfect).
:func:`hypothesis` draws one hypothesis for a profile; :func:`apply_errors` applies chosen errors (worked examples).

Systems, best first (expected penalty per hypothesis; the share of it from minor / major / critical errors):

====  =======  =======  ====================  =======  ===============================================
year  system   penalty  minor/major/critical  perfect  order plural punct mistr untr omis neg unrel
====  =======  =======  ====================  =======  ===============================================
2023  sys23-a  1.37     0.23 / 0.55 / 0.22    0.61     0.080 0.060 0.040 0.100 0.050 0.008 0.004 0.000
2023  sys23-b  3.02     0.16 / 0.61 / 0.22    0.38     0.120 0.100 0.060 0.250 0.120 0.015 0.010 0.002
2023  sys23-c  5.20     0.14 / 0.62 / 0.24    0.19     0.180 0.150 0.080 0.400 0.250 0.030 0.015 0.005
2023  sys23-d  8.15     0.12 / 0.61 / 0.27    0.07     0.250 0.200 0.100 0.600 0.400 0.050 0.030 0.010
2023  sys23-e  11.92    0.11 / 0.58 / 0.31    0.01     0.350 0.300 0.150 0.800 0.600 0.080 0.050 0.020
2023  sys23-f  14.93    0.12 / 0.57 / 0.31    0.00     0.450 0.400 0.250 0.950 0.800 0.100 0.060 0.030
2024  sys24-a  0.51     0.47 / 0.19 / 0.34    0.76     0.060 0.050 0.020 0.020 0.000 0.005 0.002 0.000
2024  sys24-b  1.16     0.42 / 0.21 / 0.37    0.56     0.120 0.100 0.050 0.040 0.010 0.010 0.005 0.002
2024  sys24-c  2.16     0.36 / 0.18 / 0.46    0.38     0.200 0.150 0.080 0.060 0.020 0.020 0.015 0.005
2024  sys24-d  3.70     0.29 / 0.17 / 0.54    0.23     0.300 0.200 0.100 0.100 0.030 0.040 0.030 0.010
2024  sys24-e  5.41     0.27 / 0.18 / 0.55    0.11     0.400 0.300 0.150 0.150 0.050 0.060 0.040 0.020
2024  sys24-f  7.79     0.24 / 0.17 / 0.59    0.04     0.500 0.400 0.200 0.200 0.080 0.090 0.060 0.040
====  =======  =======  ====================  =======  ===============================================

("perfect": the probability of an error-free hypothesis; profile: the probability of each kind, in the order they
are drawn.) The 2023 systems look like older MT: more than half of their penalty is word-level major errors
(mistranslated and untranslated words). The 2024 systems are better overall (penalties 0.5 to 7.8 against 1.4 to
14.9) and make few word errors: their penalty is mostly critical (omissions, negation flips, unrelated output) plus
many minor slips. So a metric trained on 2023 meets a different mix of errors on 2024, as real metrics do from one
WMT year to the next.

Ratings (the simulated rater)
-----------------------------
:func:`make_ratings` gives, for ``num_sources`` source sentences of a year and each language pair, every system's
hypothesis with a simulated human MQM score::

    score = round(mqm + missed + rater_noise * N(0, 1), 1)

where ``missed`` counts the minor errors the rater overlooked: each minor error independently with probability
``miss_rate`` (its -1 is not counted); major and critical errors are never missed. So E[score - mqm] =
``miss_rate`` x (expected minor errors) and, with ``miss_rate=0``, the score is the true score plus Gaussian noise
of standard deviation ``rater_noise``. Scores are not clipped: a perfect translation can be rated +1.3. The rater
draws from its own stream, so the knobs change the scores only, never the hypotheses.

How hard the noise makes pairs (defaults, 400 sources, 2,000 pairs of hypotheses of the same item drawn uniformly):
2023: 173 of the 2,000 pairs tie in true MQM; of the other 1,827 the human order is the reverse of the true order
in 81 (4.4%; 10 more are human ties). 2024 (better systems, so closer pairs): 390 true ties; 170 of 1,610 reversed
(10.6%). Nearly all reversals are pairs one minor error apart: 27% of the pairs whose true scores differ by 1 are
reversed, 3-4% of those 2 to 5 apart, none further apart. A minimum human score gap helps: keeping the pairs whose
scores differ by at least 1 leaves 1,771 (2023) / 1,496 (2024) pairs, 1.5% / 4.9% of them reversed and 5.0% / 13.4%
true ties; a gap of 2 leaves 1,585 / 1,079 pairs, 0.4% / 1.1% reversed, 2.2% / 5.6% true ties. (Seed 0, both
language pairs; pairs drawn with ``random.Random("pairs")``: an item uniformly, then two of its systems.)

Rows: ``{"year", "lp", "item", "src", "ref", "mt", "system", "score", "mqm", "errors"}``, ordered by source, then
language pair (as given in ``lps``), then system; ``item`` is ``"<year>/<lp>/<source index>"``. The sources of a
year are the same for both language pairs (as WMT's English sources are shared across its en-xx pairs).

Years, splits and determinism
-----------------------------
A source text's bucket is ``crc32(text) % 10`` (:func:`bucket_of`): bucket 0 is the ``test`` split of
:func:`make_dataset` and buckets 1-9 its ``train`` split; the year ``2023`` takes its sources from buckets 1-4 and
``2024`` from buckets 5-8. So the two years' sources are disjoint for every seed and size, and neither year overlaps
the test split; both years' sources can (and do) appear in the train split of :func:`make_dataset`: the SFT model
may have seen the rated sources translated (harmless here: what the ratings evaluate is a metric, not that model).

Every draw comes from a ``random.Random`` seeded by a string: a year's sources from ``"toymt/sources/<seed>/<year>"``
(distinct sentences, rejection-sampled into the year's buckets, so a smaller ``num_sources`` gives a prefix); a
hypothesis from ``"toymt/mt/<seed>/<item>/<system>"`` and its rating from ``"toymt/rater/<seed>/<item>/<system>"``,
so adding a system, a language pair or sources changes no other row; the task data from ``"toymt/<split>/<seed>"``.

The task contract (the ``tiny-toymt`` preset)
---------------------------------------------
:func:`make_dataset` rows: ``prompt`` (plain text, no trailing space), ``completion`` (a space and the reference),
``lp`` (``"en-qaa"`` or ``"en-qab"``, drawn uniformly) and ``reference``::

    Translate the following English text into fluent Toy language A.
    English: The big dog does not see two old red cats.
    Toy language A:

with the completion `` Pupi nupo luva leti melo nipa tisai koti mola.``. Difficulty knob (default in
:data:`DEFAULT_DIFFICULTY`): ``max_adjectives`` (2, an integer 0..4): the most adjectives in a noun phrase (P(k)
proportional to 2^-k). The years' sources always use 2.

:func:`reward` is the word-level F1 of the completion against the row's ``reference``: tokens are lowercased runs of
word characters and single punctuation characters (:func:`words`; the final period is a token), compared as bags
with multiplicity, F1 = 2 x matches / (completion tokens + reference tokens). An exact translation scores 1.0; an
empty completion or one without text scores 0.0; it never raises on a completion.

:func:`corpus` holds training requests with their references, hypotheses with errors in ReMedy's input layout
(:func:`remedy_text`: the request, then ``Template: <reference>`` in the reference-based mode, then
``Toy language A: <hypothesis>``) with and without the template line, and every word of each vocabulary.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from segrl.errors import UserError
from segrl.tasks import completion_text, need_int, with_defaults

# ----------------------------------------------------------------------------------------------------------------
# constants

#: Language code -> display name (the codes ``qaa``/``qab`` are ISO 639's "reserved for local use").
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "qaa": "Toy language A", "qab": "Toy language B"}
#: The toy target languages.
LANGUAGES = ("qaa", "qab")
#: The language pairs (always out of English).
LPS = ("en-qaa", "en-qab")
#: The rating "years" of :func:`make_ratings`, each with its own systems and source sentences.
YEARS = ("2023", "2024")
SPLITS = ("train", "test")

#: Default difficulty of :func:`make_dataset` (see the module docstring).
DEFAULT_DIFFICULTY: dict[str, Any] = {"max_adjectives": 2}
#: The largest accepted ``max_adjectives``.
MAX_ADJECTIVES = 4

#: MQM weight of each severity.
SEVERITY_WEIGHTS: dict[str, int] = {"minor": -1, "major": -5, "critical": -25}
#: Error kind -> severity.
ERROR_KINDS: dict[str, str] = {
    "word_order": "minor",
    "plural": "minor",
    "punctuation": "minor",
    "mistranslation": "major",
    "untranslated": "major",
    "omission": "critical",
    "negation": "critical",
    "unrelated": "critical",
}

#: A source sentence's bucket is crc32(text) % NUM_BUCKETS (:func:`bucket_of`).
NUM_BUCKETS = 10
#: Buckets of the ``test`` split of :func:`make_dataset` (``train`` is every other bucket).
TEST_BUCKETS = frozenset({0})
#: Buckets of each year's source sentences (disjoint from each other and from the test split).
YEAR_BUCKETS: dict[str, frozenset[int]] = {"2023": frozenset({1, 2, 3, 4}), "2024": frozenset({5, 6, 7, 8})}

# ----------------------------------------------------------------------------------------------------------------
# English vocabulary (append only: the lexicons are drawn in this order)

#: (singular, plural); the first :data:`NUM_ANIMATE` are people and animals (the only subjects).
NOUNS: tuple[tuple[str, str], ...] = (
    ("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"), ("cow", "cows"),
    ("rabbit", "rabbits"), ("lion", "lions"), ("tiger", "tigers"), ("fox", "foxes"), ("monkey", "monkeys"),
    ("teacher", "teachers"), ("doctor", "doctors"), ("farmer", "farmers"), ("student", "students"),
    ("king", "kings"), ("queen", "queens"), ("baker", "bakers"), ("driver", "drivers"), ("singer", "singers"),
    ("sailor", "sailors"), ("soldier", "soldiers"), ("girl", "girls"), ("boy", "boys"), ("friend", "friends"),
    ("neighbor", "neighbors"),
    ("apple", "apples"), ("book", "books"), ("house", "houses"), ("car", "cars"), ("boat", "boats"),
    ("tree", "trees"), ("flower", "flowers"), ("river", "rivers"), ("garden", "gardens"), ("city", "cities"),
    ("village", "villages"), ("letter", "letters"), ("song", "songs"), ("picture", "pictures"),
    ("table", "tables"), ("chair", "chairs"), ("window", "windows"), ("door", "doors"), ("key", "keys"),
    ("cup", "cups"), ("bottle", "bottles"), ("cake", "cakes"), ("ball", "balls"), ("lamp", "lamps"),
    ("box", "boxes"),
)
NUM_ANIMATE = 25
#: Adjectives, in the order English stacks them (a noun phrase lists its adjectives in this order).
ADJECTIVES: tuple[str, ...] = (
    "happy", "sad", "quiet", "loud", "clean", "dirty", "warm", "cold", "heavy", "bright", "fast", "slow",
    "big", "small", "tall", "short", "old", "young", "new", "red", "blue", "green", "yellow", "white", "black",
)
#: (base form, third person singular).
VERBS: tuple[tuple[str, str], ...] = (
    ("see", "sees"), ("like", "likes"), ("find", "finds"), ("watch", "watches"), ("carry", "carries"),
    ("follow", "follows"), ("help", "helps"), ("call", "calls"), ("visit", "visits"), ("paint", "paints"),
    ("draw", "draws"), ("hold", "holds"), ("push", "pushes"), ("pull", "pulls"), ("wash", "washes"),
    ("buy", "buys"), ("sell", "sells"), ("open", "opens"), ("close", "closes"), ("love", "loves"),
    ("hate", "hates"), ("want", "wants"), ("need", "needs"), ("know", "knows"), ("remember", "remembers"),
)
#: Determiners of a singular noun phrase ("a" is written "an" before a vowel).
SINGULAR_DETERMINERS = ("the", "a", "this", "that", "my", "your")
#: Determiners of a plural noun phrase (number words included: they take the determiner's slot).
PLURAL_DETERMINERS = ("the", "these", "those", "my", "your", "some", "two", "three", "four", "five")
#: Function words with a lexicon entry (the negation particle is "not").
FUNCTION_WORDS = ("the", "a", "this", "that", "these", "those", "my", "your", "some", "two", "three", "four",
                  "five", "not")

_NOUN_LEMMAS = tuple(s for s, _ in NOUNS)
_NOUN_PLURAL = dict(NOUNS)
_VERB_LEMMAS = tuple(b for b, _ in VERBS)
_VERB_3SG = dict(VERBS)
#: Content-word lemmas by part of speech (what mistranslation draws from).
LEMMAS_BY_POS: dict[str, tuple[str, ...]] = {"noun": _NOUN_LEMMAS, "adj": ADJECTIVES, "verb": _VERB_LEMMAS}

# English words a toy word must not be (besides the grammar's own words): short words spelled with the toy
# languages' letters. Not a dictionary: toy words are checked against this list and the grammar's vocabulary.
_ENGLISH_STOPLIST = frozenset(
    """
    tape mole sale pine vine kite mile pole lame mute tame tone nose lime sane vole pane mane lake make take poke
    tile sole sake same some vote note mate late lane line lone kale pale male nape name nine none mine time tale
    vase vane move love live save vile pave nave lemon melon salami kimono potato tomato motel total panel metal
    petal solid valid vanilla manila semi mini pita kilo memo menu solo silo polo lava kava tuna puma mama papa nana
    sumo tutu lima mono poem pose mope nope lope tote mote kilt puke tuba lupus komodo tonal vital minute
    bade dire fade hide wide ride rode bide wage gaze haze daze hero zero here hire huge fire wire wade bore dare
    fare hare ware gore dose rose hose fuse ruse zebra robe lobe gaga dada baby bury fury jury ruby dude rude
    dime bike bile file rife wife wire gibe bribe debug rebus bagel hobo judo diva soda sofa radar redo
    """.split()
)

# ----------------------------------------------------------------------------------------------------------------
# lexicons

#: Letters of each toy language: (consonants, vowels, plural suffix). A syllable is one consonant and one vowel.
_PHONOLOGY = {"qaa": ("ptkmnlsv", "aeiou", "i"), "qab": ("bdgrzfhw", "aeiouy", "ko")}
#: The plural suffix of each toy language.
PLURAL_SUFFIX = {lang: _PHONOLOGY[lang][2] for lang in LANGUAGES}


def _english_vocabulary() -> frozenset[str]:
    words = set(FUNCTION_WORDS) | {"an", "do", "does"} | set(ADJECTIVES)
    for s, p in NOUNS:
        words |= {s, p}
    for b, t in VERBS:
        words |= {b, t}
    return frozenset(words)


#: Every word an English source sentence can contain (lowercase).
ENGLISH_VOCABULARY = _english_vocabulary()


def _make_lexicon(lang: str) -> dict[str, str]:
    consonants, vowels, _ = _PHONOLOGY[lang]
    rng = random.Random(f"toymt/lexicon/{lang}")
    forbidden = ENGLISH_VOCABULARY | _ENGLISH_STOPLIST
    used: set[str] = set()
    out: dict[str, str] = {}
    lemmas = list(FUNCTION_WORDS) + list(_NOUN_LEMMAS) + list(ADJECTIVES) + list(_VERB_LEMMAS)
    for lemma in lemmas:
        syllables = (2,) if lemma in FUNCTION_WORDS else (2, 3)
        while True:
            n = rng.choice(syllables)
            word = "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(n))
            if word not in used and word not in forbidden:
                break
        used.add(word)
        out[lemma] = word
    return out


#: Language -> (English lemma -> toy word). Lemmas: the function words, noun singulars, adjectives, verb bases.
LEXICONS: dict[str, dict[str, str]] = {lang: _make_lexicon(lang) for lang in LANGUAGES}


def _check_lexicons() -> None:
    # Every surface form (stems and plural nouns) distinct within and across the languages, none English.
    seen: set[str] = set()
    for lang in LANGUAGES:
        lex = LEXICONS[lang]
        forms = list(lex.values()) + [lex[n] + PLURAL_SUFFIX[lang] for n in _NOUN_LEMMAS]
        if len(set(forms)) != len(forms) or seen & set(forms) or set(forms) & ENGLISH_VOCABULARY:
            raise AssertionError(f"toymt: lexicon of {lang} has colliding words")  # pragma: no cover
        seen |= set(forms)


_check_lexicons()

# ----------------------------------------------------------------------------------------------------------------
# sentences


@dataclass(frozen=True)
class NounPhrase:
    """A noun phrase: determiner (a number word for a counted plural), adjectives (in :data:`ADJECTIVES` order in a
    generated phrase), noun lemma (the singular), and whether it is plural."""

    det: str
    adjectives: tuple[str, ...]
    noun: str
    plural: bool = False


@dataclass(frozen=True)
class Sentence:
    """A source sentence: subject verb object, optionally negated (``verb`` is the base form)."""

    subject: NounPhrase
    verb: str
    obj: NounPhrase
    negated: bool = False


def _check_np(np: NounPhrase) -> None:
    dets = PLURAL_DETERMINERS if np.plural else SINGULAR_DETERMINERS
    if np.det not in dets or np.noun not in _NOUN_PLURAL or any(a not in ADJECTIVES for a in np.adjectives):
        raise UserError(f"toymt: not a noun phrase of the grammar: {np!r}")


def _check_sentence(s: Any) -> Sentence:
    if not isinstance(s, Sentence) or not isinstance(s.subject, NounPhrase) or not isinstance(s.obj, NounPhrase):
        raise UserError(f"toymt: expected a Sentence, got {s!r}")
    _check_np(s.subject)
    _check_np(s.obj)
    if s.verb not in _VERB_3SG:
        raise UserError(f"toymt: unknown verb {s.verb!r}")
    return s


def _finish(words: list[str], period: bool = True) -> str:
    text = " ".join(words)
    return text[:1].upper() + text[1:] + ("." if period else "")


def _english_np(np: NounPhrase) -> list[str]:
    rest = list(np.adjectives) + [_NOUN_PLURAL[np.noun] if np.plural else np.noun]
    det = np.det
    if det == "a" and rest[0][0] in "aeiou":
        det = "an"
    return [det] + rest


def _english_verb(s: Sentence) -> list[str]:
    if s.negated:
        return ["do" if s.subject.plural else "does", "not", s.verb]
    return [s.verb if s.subject.plural else _VERB_3SG[s.verb]]


def render_english(sentence: Sentence) -> str:
    """The English text of ``sentence``: "The big dog does not see two red cats." (capitalised, final period)."""
    s = _check_sentence(sentence)
    return _finish(_english_np(s.subject) + _english_verb(s) + _english_np(s.obj))


def draw_sentence(rng: random.Random, max_adjectives: int = 2) -> Sentence:
    """A random sentence of the grammar: animate subject, any object; each phrase 0..max_adjectives adjectives
    (P(k) proportional to 2^-k, distinct, in :data:`ADJECTIVES` order), plural with probability 0.3, negated with
    probability 0.25."""
    subject = _draw_np(rng, _NOUN_LEMMAS[:NUM_ANIMATE], max_adjectives)
    verb = rng.choice(_VERB_LEMMAS)
    obj = _draw_np(rng, _NOUN_LEMMAS, max_adjectives)
    negated = rng.random() < 0.25
    return Sentence(subject, verb, obj, negated)


def _draw_np(rng: random.Random, nouns: tuple[str, ...], max_adjectives: int) -> NounPhrase:
    ks = list(range(max_adjectives + 1))
    k = rng.choices(ks, weights=[2.0**-i for i in ks])[0]
    adjectives = tuple(sorted(rng.sample(ADJECTIVES, k), key=ADJECTIVES.index))
    noun = rng.choice(nouns)
    plural = rng.random() < 0.3
    det = rng.choice(PLURAL_DETERMINERS if plural else SINGULAR_DETERMINERS)
    return NounPhrase(det, adjectives, noun, plural)


def bucket_of(src: str) -> int:
    """CRC32 bucket (0..NUM_BUCKETS-1) of a source text: decides its split and its year."""
    return zlib.crc32(src.encode()) % NUM_BUCKETS


def split_of(src: str) -> str:
    """``"test"`` when the source text is in a test bucket, else ``"train"`` (the split of :func:`make_dataset`)."""
    return "test" if bucket_of(src) in TEST_BUCKETS else "train"


def year_of(src: str) -> str | None:
    """The rating year whose sources may hold ``src`` (``"2023"``, ``"2024"``), or None."""
    b = bucket_of(src)
    for year, buckets in YEAR_BUCKETS.items():
        if b in buckets:
            return year
    return None


# ----------------------------------------------------------------------------------------------------------------
# translation (with optional errors)


@dataclass
class _Edits:
    """What a system changes in the reference; empty = the reference."""

    negation_flip: bool = False
    omit_object: bool = False
    no_period: bool = False
    order_swap: set[str] = field(default_factory=set)  # "subject" / "object"
    plural_flip: set[str] = field(default_factory=set)
    # slot -> ("mistranslation", lemma) | ("untranslated", None); slot = (phrase, "noun"|"adj", i) or ("verb",)
    words: dict[tuple, tuple[str, str | None]] = field(default_factory=dict)


def _target_np(np: NounPhrase, which: str, lang: str, edits: _Edits, english_noun: str) -> list[str]:
    lex = LEXICONS[lang]

    def word(slot: tuple, lemma: str, english: str) -> str:
        kind, other = edits.words.get(slot, (None, None))
        if kind == "untranslated":
            return english
        return lex[other] if kind == "mistranslation" else lex[lemma]

    plural = np.plural != (which in edits.plural_flip)
    kind, other = edits.words.get((which, "noun", 0), (None, None))
    if kind == "untranslated":  # the English word as in the source, in the (possibly flipped) number
        noun = english_noun if plural == np.plural else (_NOUN_PLURAL[np.noun] if plural else np.noun)
    else:
        noun = lex[other if kind == "mistranslation" else np.noun] + (PLURAL_SUFFIX[lang] if plural else "")
    adjectives = [word((which, "adj", i), a, a) for i, a in enumerate(np.adjectives)]
    det = lex[np.det]
    adj_after = lang == "qaa"
    if which in edits.order_swap:
        if adjectives:
            adj_after = not adj_after
        else:
            return [noun, det]
    return [det, noun] + adjectives if adj_after else [det] + adjectives + [noun]


def _render(s: Sentence, lang: str, edits: _Edits | None = None) -> str:
    edits = edits or _Edits()
    eng_subj = _english_np(s.subject)[-1]
    eng_obj = _english_np(s.obj)[-1]
    eng_verb = _english_verb(s)[-1]
    subject = _target_np(s.subject, "subject", lang, edits, eng_subj)
    obj = [] if edits.omit_object else _target_np(s.obj, "object", lang, edits, eng_obj)
    kind, other = edits.words.get(("verb",), (None, None))
    verb = eng_verb if kind == "untranslated" else LEXICONS[lang][other if kind == "mistranslation" else s.verb]
    neg = [LEXICONS[lang]["not"]] if s.negated != edits.negation_flip else []
    if lang == "qaa":  # SVO, negation before the verb
        words = subject + neg + [verb] + obj
    else:  # SOV, negation after the verb
        words = subject + obj + [verb] + neg
    return _finish(words, period=not edits.no_period)


def _check_lang(lang: Any) -> str:
    if isinstance(lang, str) and lang.startswith("en-"):
        lang = lang[3:]
    if lang not in LANGUAGES:
        raise UserError(f"toymt: language must be one of {', '.join(LANGUAGES)} (or en-qaa, en-qab), got {lang!r}")
    return lang


def parse_english(text: str) -> Sentence:
    """The :class:`Sentence` whose English text is ``text`` exactly (``render_english(parse_english(t)) == t``);
    :class:`UserError` if ``text`` is not a sentence of the grammar."""
    if not isinstance(text, str) or not text.endswith(".") or not text[:1].isupper():
        raise UserError(f"toymt: not an English sentence of the grammar: {text!r}")
    tokens = (text[:1].lower() + text[1:-1]).split(" ")
    pos = 0

    def fail() -> UserError:
        return UserError(f"toymt: not an English sentence of the grammar: {text!r}")

    def noun_phrase(nouns: tuple[str, ...]) -> NounPhrase:
        nonlocal pos
        if pos >= len(tokens):
            raise fail()
        det = "a" if tokens[pos] == "an" else tokens[pos]
        pos += 1
        adjectives = []
        while pos < len(tokens) and tokens[pos] in ADJECTIVES:
            adjectives.append(tokens[pos])
            pos += 1
        if pos >= len(tokens):
            raise fail()
        form = tokens[pos]
        pos += 1
        for n in nouns:
            if form in (n, _NOUN_PLURAL[n]):
                return NounPhrase(det, tuple(adjectives), n, form != n)
        raise fail()

    subject = noun_phrase(_NOUN_LEMMAS)
    negated = pos + 1 < len(tokens) and tokens[pos] in ("do", "does") and tokens[pos + 1] == "not"
    if negated:
        pos += 2
    if pos >= len(tokens):
        raise fail()
    form = tokens[pos]
    pos += 1
    verb = next((b for b, t in VERBS if form in (b, t)), None)
    if verb is None:
        raise fail()
    obj = noun_phrase(_NOUN_LEMMAS)
    s = Sentence(subject, verb, obj, negated)
    try:
        ok = pos == len(tokens) and render_english(s) == text
    except UserError:
        ok = False
    if not ok:
        raise fail()
    return s


def translate(src: Sentence | str, lang: str) -> str:
    """The reference translation of a source sentence into ``lang`` (``"qaa"``/``"qab"``, or ``"en-qaa"``/
    ``"en-qab"``). ``src`` is a :class:`Sentence` or its exact English text (read back with :func:`parse_english`,
    which only accepts the texts :func:`render_english` writes). Deterministic; :class:`UserError` for a bad
    language or a text that is not a sentence of the grammar."""
    lang = _check_lang(lang)
    s = parse_english(src) if isinstance(src, str) else _check_sentence(src)
    return _render(s, lang)


# ----------------------------------------------------------------------------------------------------------------
# systems and errors

_K = ("word_order", "plural", "punctuation", "mistranslation", "untranslated", "omission", "negation", "unrelated")


def _profile(*rates: float) -> dict[str, float]:
    return dict(zip(_K, rates))


#: year -> system -> error kind -> probability (see the module docstring for how each is applied).
#:                                   order  plural punct  mistr  untr   omis   neg    unrel
SYSTEMS: dict[str, dict[str, dict[str, float]]] = {
    "2023": {
        "sys23-a": _profile(0.08, 0.06, 0.04, 0.10, 0.05, 0.008, 0.004, 0.000),
        "sys23-b": _profile(0.12, 0.10, 0.06, 0.25, 0.12, 0.015, 0.010, 0.002),
        "sys23-c": _profile(0.18, 0.15, 0.08, 0.40, 0.25, 0.030, 0.015, 0.005),
        "sys23-d": _profile(0.25, 0.20, 0.10, 0.60, 0.40, 0.050, 0.030, 0.010),
        "sys23-e": _profile(0.35, 0.30, 0.15, 0.80, 0.60, 0.080, 0.050, 0.020),
        "sys23-f": _profile(0.45, 0.40, 0.25, 0.95, 0.80, 0.100, 0.060, 0.030),
    },
    "2024": {
        "sys24-a": _profile(0.06, 0.05, 0.02, 0.02, 0.00, 0.005, 0.002, 0.000),
        "sys24-b": _profile(0.12, 0.10, 0.05, 0.04, 0.01, 0.010, 0.005, 0.002),
        "sys24-c": _profile(0.20, 0.15, 0.08, 0.06, 0.02, 0.020, 0.015, 0.005),
        "sys24-d": _profile(0.30, 0.20, 0.10, 0.10, 0.03, 0.040, 0.030, 0.010),
        "sys24-e": _profile(0.40, 0.30, 0.15, 0.15, 0.05, 0.060, 0.040, 0.020),
        "sys24-f": _profile(0.50, 0.40, 0.20, 0.20, 0.08, 0.090, 0.060, 0.040),
    },
}


def _check_year(year: Any) -> str:
    if year not in YEARS:
        raise UserError(f"toymt: year must be one of {', '.join(YEARS)}, got {year!r}")
    return year


def systems(year: str) -> dict[str, dict[str, float]]:
    """The systems of ``year``, best first: name -> (error kind -> probability), a copy."""
    return {name: dict(p) for name, p in SYSTEMS[_check_year(year)].items()}


def _check_system(year: str, system: Any) -> dict[str, float]:
    profiles = SYSTEMS[_check_year(year)]
    if system not in profiles:
        raise UserError(f"toymt: year {year} has no system {system!r}; its systems are {', '.join(profiles)}")
    return profiles[system]


def expected_errors(year: str, system: str) -> dict[str, float]:
    """Expected number of errors of each kind per hypothesis of ``system`` (exact, from its profile)."""
    p = _check_system(year, system)
    u, o = p["unrelated"], p["omission"]
    keep = 1.0 - u
    phrases = 2.0 - o  # the object phrase is gone when omitted: no order or plural error in it
    return {
        "word_order": keep * p["word_order"] * phrases,
        "plural": keep * p["plural"] * phrases,
        "punctuation": keep * p["punctuation"],
        "mistranslation": keep * p["mistranslation"],
        "untranslated": keep * p["untranslated"],
        "omission": keep * o,
        "negation": keep * p["negation"],
        "unrelated": u,
    }


def expected_penalty(year: str, system: str) -> float:
    """Expected true MQM penalty per hypothesis of ``system`` (positive: minus the expected MQM score)."""
    return -sum(n * SEVERITY_WEIGHTS[ERROR_KINDS[k]] for k, n in expected_errors(year, system).items())


def _error(kind: str) -> dict[str, Any]:
    severity = ERROR_KINDS[kind]
    return {"severity": severity, "kind": kind, "weight": SEVERITY_WEIGHTS[severity]}


def _draw_unrelated(rng: random.Random, s: Sentence) -> Sentence:
    while True:
        other = draw_sentence(rng)
        if other.subject.noun != s.subject.noun and other.verb != s.verb and other.obj.noun != s.obj.noun and \
                other.subject.noun != s.obj.noun and other.obj.noun != s.subject.noun:
            return other


def _draw_edits(rng: random.Random, s: Sentence, profile: dict[str, float]) -> tuple[_Edits | Sentence, list[str]]:
    """The edits a system with ``profile`` makes to the reference of ``s`` (or an unrelated sentence), and the
    error kinds in the order applied."""
    if rng.random() < profile["unrelated"]:
        return _draw_unrelated(rng, s), ["unrelated"]
    e = _Edits()
    kinds = []
    if rng.random() < profile["omission"]:
        e.omit_object = True
        kinds.append("omission")
    if rng.random() < profile["negation"]:
        e.negation_flip = True
        kinds.append("negation")
    word_errors = [k for k in ("mistranslation", "untranslated") if rng.random() < profile[k]]
    phrases = [("subject", s.subject)] + ([] if e.omit_object else [("object", s.obj)])
    slots: list[tuple] = [("verb",)]
    for which, np in phrases:
        slots.append((which, "noun", 0))
        slots.extend((which, "adj", i) for i in range(len(np.adjectives)))
    for kind, slot in zip(word_errors, rng.sample(slots, len(word_errors))):
        if kind == "mistranslation":
            pos, lemma = _slot_lemma(s, slot)
            e.words[slot] = (kind, rng.choice([w for w in LEMMAS_BY_POS[pos] if w != lemma]))
        else:
            e.words[slot] = (kind, None)
        kinds.append(kind)
    for which, _ in phrases:
        if rng.random() < profile["word_order"]:
            e.order_swap.add(which)
            kinds.append("word_order")
        if rng.random() < profile["plural"]:
            e.plural_flip.add(which)
            kinds.append("plural")
    if rng.random() < profile["punctuation"]:
        e.no_period = True
        kinds.append("punctuation")
    return e, kinds


def _check_profile(profile: Any) -> dict[str, float]:
    if not isinstance(profile, dict) or set(profile) != set(ERROR_KINDS):
        raise UserError(f"toymt: a system profile maps each of {', '.join(ERROR_KINDS)} to a probability, "
                        f"got {profile!r}")
    return {k: _check_number(f"profile[{k!r}]", profile[k], 0.0, 1.0) for k in ERROR_KINDS}


def hypothesis(src: Sentence | str, lang: str, profile: dict[str, float], rng: random.Random) -> tuple[str, list]:
    """One hypothesis for ``src`` in ``lang`` by a system with error ``profile`` (kind -> probability, e.g.
    ``systems("2023")["sys23-a"]``), drawn with ``rng`` as the module docstring says: ``(text, errors)`` where
    ``errors`` lists the injected errors (``{"severity", "kind", "weight"}``) in the order applied."""
    lang = _check_lang(lang)
    profile = _check_profile(profile)
    s = parse_english(src) if isinstance(src, str) else _check_sentence(src)
    edits, kinds = _draw_edits(rng, s, profile)
    text = _render(edits, lang) if isinstance(edits, Sentence) else _render(s, lang, edits)
    return text, [_error(k) for k in kinds]


def apply_errors(src: Sentence | str, lang: str, **edits: Any) -> str:
    """The translation of ``src`` into ``lang`` with chosen errors (for tests and examples); keywords:
    ``negation=True``, ``omission=True``, ``punctuation=True``, ``word_order=("subject", ...)``,
    ``plural=("object", ...)``, ``mistranslation={slot: lemma}``, ``untranslated=(slot, ...)``, where a slot is
    ``("verb",)``, ``("subject"|"object", "noun", 0)`` or ``("subject"|"object", "adj", i)``."""
    lang = _check_lang(lang)
    s = parse_english(src) if isinstance(src, str) else _check_sentence(src)
    e = _Edits(
        negation_flip=bool(edits.pop("negation", False)),
        omit_object=bool(edits.pop("omission", False)),
        no_period=bool(edits.pop("punctuation", False)),
        order_swap=set(edits.pop("word_order", ())),
        plural_flip=set(edits.pop("plural", ())),
    )
    for slot, lemma in dict(edits.pop("mistranslation", {})).items():
        pos, original = _slot_lemma(s, slot)
        if lemma not in LEMMAS_BY_POS[pos] or lemma == original:
            raise UserError(f"toymt: slot {slot!r} can only be mistranslated as another {pos}, got {lemma!r}")
        e.words[tuple(slot)] = ("mistranslation", lemma)
    for slot in edits.pop("untranslated", ()):
        _slot_lemma(s, slot)
        e.words[tuple(slot)] = ("untranslated", None)
    if edits:
        raise UserError(f"toymt: unknown error kind(s) {', '.join(sorted(edits))}")
    if (e.order_swap | e.plural_flip) - {"subject", "object"}:
        raise UserError("toymt: word_order and plural take phrases: 'subject', 'object'")
    return _render(s, lang, e)


def _slot_lemma(s: Sentence, slot: Any) -> tuple[str, str]:
    """(part of speech, lemma) of a word slot of ``s``; :class:`UserError` for a slot ``s`` does not have."""
    slot = tuple(slot) if isinstance(slot, (list, tuple)) else (slot,)
    if slot == ("verb",):
        return "verb", s.verb
    if len(slot) == 3 and slot[0] in ("subject", "object"):
        np = s.subject if slot[0] == "subject" else s.obj
        if slot[1:] == ("noun", 0):
            return "noun", np.noun
        if slot[1] == "adj" and isinstance(slot[2], int) and 0 <= slot[2] < len(np.adjectives):
            return "adj", np.adjectives[slot[2]]
    raise UserError(f"toymt: no word slot {slot!r} in {render_english(s)!r}")


# ----------------------------------------------------------------------------------------------------------------
# ratings


def _check_number(name: str, value: Any, low: float, high: float | None = None) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < low
        or (high is not None and value > high)
    ):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise UserError(f"toymt: {name} must be a number {bound}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, low: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        bound = f" >= {low}" if low is not None else ""
        raise UserError(f"toymt: {name} must be an integer{bound}, got {value!r}")
    return value


def year_sources(year: str, num_sources: int, seed: int = 0) -> list[Sentence]:
    """The first ``num_sources`` source sentences of ``year`` (distinct, all in the year's buckets; the same for
    both language pairs). A smaller ``num_sources`` gives a prefix."""
    _check_year(year)
    _check_int("num_sources", num_sources, 0)
    _check_int("seed", seed, None)
    rng = random.Random(f"toymt/sources/{seed}/{year}")
    out: list[Sentence] = []
    seen: set[str] = set()
    while len(out) < num_sources:
        s = draw_sentence(rng)
        text = render_english(s)
        if text not in seen and bucket_of(text) in YEAR_BUCKETS[year]:
            seen.add(text)
            out.append(s)
    return out


def make_ratings(
    year: str,
    num_sources: int = 200,
    seed: int = 0,
    lps: tuple[str, ...] | list[str] = LPS,
    rater_noise: float = 1.0,
    miss_rate: float = 0.1,
) -> list[dict[str, Any]]:
    """Simulated MQM ratings of ``year``'s systems: one row per (source, lp, system), in that order (so a smaller
    ``num_sources`` gives a prefix). Row keys: ``year``, ``lp``, ``item`` (``"<year>/<lp>/<index>"``), ``src``,
    ``ref``, ``mt``, ``system``, ``score`` (the simulated human MQM score, rounded to 0.1), ``mqm`` (the true,
    noise-free MQM score: the sum of the error weights) and ``errors`` (the injected errors). See the module
    docstring for the rater model."""
    _check_year(year)
    num_sources = _check_int("num_sources", num_sources, 0)
    seed = _check_int("seed", seed, None)
    if isinstance(lps, str) or not isinstance(lps, (list, tuple)) or not lps or \
            any(lp not in LPS for lp in lps) or len(set(lps)) != len(lps):
        raise UserError(f"toymt: lps must be a non-empty list of distinct pairs from {', '.join(LPS)}, got {lps!r}")
    rater_noise = _check_number("rater_noise", rater_noise, 0.0)
    miss_rate = _check_number("miss_rate", miss_rate, 0.0, 1.0)
    rows = []
    for index, s in enumerate(year_sources(year, num_sources, seed)):
        src = render_english(s)
        for lp in lps:
            lang = lp[3:]
            ref = _render(s, lang)
            item = f"{year}/{lp}/{index}"
            for system, profile in SYSTEMS[year].items():
                rng = random.Random(f"toymt/mt/{seed}/{item}/{system}")
                edits, kinds = _draw_edits(rng, s, profile)
                mt = _render(edits, lang) if isinstance(edits, Sentence) else _render(s, lang, edits)
                errors = [_error(k) for k in kinds]
                mqm = sum(err["weight"] for err in errors)
                rater = random.Random(f"toymt/rater/{seed}/{item}/{system}")
                missed = sum(rater.random() < miss_rate for err in errors if err["severity"] == "minor")
                score = round(mqm + missed + rater_noise * rater.gauss(0.0, 1.0), 1) + 0.0
                rows.append({"year": year, "lp": lp, "item": item, "src": src, "ref": ref, "mt": mt,
                             "system": system, "score": score, "mqm": mqm, "errors": errors})
    return rows


# ----------------------------------------------------------------------------------------------------------------
# the task contract


def target_name(lp: str) -> str:
    """Display name of ``lp``'s target language (``"en-qaa"`` -> ``"Toy language A"``)."""
    return LANGUAGE_NAMES[_check_lang(lp)]


def render_prompt(src: str, lp: str) -> str:
    """The translation request of :func:`make_dataset` (plain text, no trailing space)."""
    name = target_name(lp)
    return f"Translate the following English text into fluent {name}.\nEnglish: {src}\n{name}:"


def remedy_text(src: str, mt: str, lp: str, ref: str | None = None) -> str:
    """The request with its answer in ReMedy's layout: the prompt with a ``Template:`` line holding the reference
    (omitted when ``ref`` is None: the reference-free mode), then ``"{target}: {mt}"``. The texts :func:`corpus`
    holds for the tokenizer."""
    name = target_name(lp)
    template = "" if ref is None else f"Template: {ref}\n"
    return f"Translate the following English text into fluent {name}.\nEnglish: {src}\n{template}{name}: {mt}"


def _check_difficulty(difficulty: dict[str, Any]) -> dict[str, Any]:
    d = with_defaults("toymt", DEFAULT_DIFFICULTY, difficulty)
    need_int("toymt", d, "max_adjectives", 0)
    if d["max_adjectives"] > MAX_ADJECTIVES:
        raise UserError(f"toymt: difficulty knob max_adjectives must be at most {MAX_ADJECTIVES}, "
                        f"got {d['max_adjectives']!r}")
    return d


def make_rows(split: str, num_examples: int, seed: int = 0, **difficulty: Any) -> list[dict[str, Any]]:
    """The rows of :func:`make_dataset` as a list of dicts (no ``datasets`` overhead)."""
    if split not in SPLITS:
        raise UserError(f"toymt: split must be one of {', '.join(SPLITS)}, got {split!r}")
    num_examples = _check_int("num_examples", num_examples, 0)
    seed = _check_int("seed", seed, None)
    d = _check_difficulty(difficulty)
    rng = random.Random(f"toymt/{split}/{seed}")
    rows = []
    for _ in range(num_examples):
        lp = rng.choice(LPS)
        while True:
            s = draw_sentence(rng, d["max_adjectives"])
            src = render_english(s)
            if split_of(src) == split:
                break
        ref = _render(s, lp[3:])
        rows.append({"prompt": render_prompt(src, lp), "completion": " " + ref, "lp": lp, "reference": ref})
    return rows


def make_dataset(split: str, num_examples: int, seed: int = 0, **difficulty: Any):
    """A ``datasets.Dataset`` of ``num_examples`` translation requests from ``split`` with their references.

    Columns ``prompt``, ``completion`` (a space and the reference), ``lp``, ``reference``; the knob in the module
    docstring. Deterministic; the sources of train and test are disjoint; a smaller size gives a prefix.
    """
    from datasets import Dataset, Features, Value

    rows = make_rows(split, num_examples, seed, **difficulty)
    features = Features({name: Value("string") for name in ("prompt", "completion", "lp", "reference")})
    return Dataset.from_list(rows, features=features)


def corpus(seed: int = 0) -> list[str]:
    """Texts to train a tokenizer on: 2,000 training requests with their references; 400 requests with a
    hypothesis in ReMedy's layout (with and without the ``Template:`` line) from both years' systems, errors and
    all; and one line per language with every word of its vocabulary (plural forms included)."""
    # an explicit knob (not DEFAULT_DIFFICULTY), so that retuning the default does not change the tokenizer
    texts = [r["prompt"] + r["completion"] for r in make_rows("train", 2000, seed, max_adjectives=2)]
    for year in YEARS:
        rows = make_ratings(year, 20, seed)
        for i, r in enumerate(rows[:200]):
            texts.append(remedy_text(r["src"], r["mt"], r["lp"], r["ref"] if i % 2 == 0 else None))
    texts.append(" ".join(sorted(ENGLISH_VOCABULARY)) + " .")
    for lang in LANGUAGES:
        lex = LEXICONS[lang]
        vocabulary = list(lex.values()) + [lex[n] + PLURAL_SUFFIX[lang] for n in _NOUN_LEMMAS]
        texts.append(" ".join(vocabulary) + " .")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# reward

_TOKEN = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    """The tokens :func:`word_f1` compares: lowercased runs of word characters, and each other non-space
    character (so the final period is a token of its own)."""
    return _TOKEN.findall(text.lower())


def word_f1(text: Any, reference: Any) -> float:
    """Bag-of-words F1 of ``text`` against ``reference`` (tokens of :func:`words`, counted with multiplicity):
    2 * matches / (text tokens + reference tokens); 0.0 for an empty or non-string text (or reference)."""
    if not isinstance(text, str) or not isinstance(reference, str):
        return 0.0
    h, r = words(text), words(reference)
    if not h or not r:
        return 0.0
    matches = sum((Counter(h) & Counter(r)).values())
    return 2.0 * matches / (len(h) + len(r))


def reward(prompts: list[Any], completions: list[Any], reference: list[Any] | None = None,
           **kwargs: Any) -> list[float]:
    """Word-level F1 (:func:`word_f1`, in [0, 1]) of each completion against its row's ``reference``. TRL's
    reward-function signature; other keywords are ignored. Completions may be strings or conversational message
    lists; garbage (empty, no text) scores 0.0 and never raises. A missing ``reference`` column, or one of the wrong
    length, raises :class:`UserError` (a data error)."""
    if reference is None:
        raise UserError("toymt reward: the dataset has no 'reference' column (make it with segrl.tasks.toymt)")
    if len(reference) != len(completions):
        raise UserError(f"toymt reward: got {len(completions)} completions but {len(reference)} references")
    return [word_f1(completion_text(c), ref) for c, ref in zip(completions, reference)]


__all__ = [
    "ADJECTIVES",
    "DEFAULT_DIFFICULTY",
    "ENGLISH_VOCABULARY",
    "ERROR_KINDS",
    "FUNCTION_WORDS",
    "LANGUAGES",
    "LANGUAGE_NAMES",
    "LEMMAS_BY_POS",
    "LEXICONS",
    "LPS",
    "MAX_ADJECTIVES",
    "NOUNS",
    "NUM_ANIMATE",
    "NUM_BUCKETS",
    "NounPhrase",
    "PLURAL_DETERMINERS",
    "PLURAL_SUFFIX",
    "SEVERITY_WEIGHTS",
    "SINGULAR_DETERMINERS",
    "SPLITS",
    "SYSTEMS",
    "Sentence",
    "TEST_BUCKETS",
    "VERBS",
    "YEARS",
    "YEAR_BUCKETS",
    "apply_errors",
    "bucket_of",
    "corpus",
    "draw_sentence",
    "expected_errors",
    "expected_penalty",
    "hypothesis",
    "make_dataset",
    "make_ratings",
    "make_rows",
    "parse_english",
    "remedy_text",
    "render_english",
    "render_prompt",
    "reward",
    "split_of",
    "systems",
    "target_name",
    "translate",
    "word_f1",
    "words",
    "year_of",
    "year_sources",
]
