"""The toymt task: toy languages, exact references, errors of known severity, simulated MQM, the task contract."""

import math
import os
import random
import re
import statistics
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from segrl.errors import UserError
from segrl.tasks import get_task, task_names, toymt
from segrl.tasks.toymt import NounPhrase, Sentence

# "The big dog does not see two old red cats."
DOG = Sentence(NounPhrase("the", ("big",), "dog"), "see", NounPhrase("two", ("old", "red"), "cat", True), negated=True)
# "A teacher carries my box."
TEACHER = Sentence(NounPhrase("a", (), "teacher"), "carry", NounPhrase("my", (), "box"))

REF = {
    ("dog", "qaa"): "Pupi nupo luva leti melo nipa tisai koti mola.",
    ("dog", "qab"): "Bafu bigafa zydy fufo gafafu foroze zafireko hedafo baho.",
    ("teacher", "qaa"): "Nata lomaki lilima maso posipi.",
    ("teacher", "qab"): "Wabi hidoro gobo bohury defafa.",
}


@pytest.fixture(scope="module")
def ratings():
    """1,000 sources of each year at the defaults: 12,000 rows a year, 2,000 hypotheses per system."""
    return {year: toymt.make_ratings(year, 1000) for year in toymt.YEARS}


def test_registered():
    assert get_task("toymt") is toymt
    assert "toymt" in task_names()
    assert toymt.LANGUAGE_NAMES == {"en": "English", "qaa": "Toy language A", "qab": "Toy language B"}


# ---------------------------------------------------------------------------------------------------------------
# languages


def test_vocabulary_sizes_and_lexicons():
    assert len({s for s, _ in toymt.NOUNS}) == len(toymt.NOUNS) == 50
    assert len(set(toymt.ADJECTIVES)) == len(toymt.ADJECTIVES) == 25
    assert len({b for b, _ in toymt.VERBS}) == len(toymt.VERBS) == 25
    english = toymt.ENGLISH_VOCABULARY
    all_forms = []
    for lang in toymt.LANGUAGES:
        lex = toymt.LEXICONS[lang]
        assert lex == toymt._make_lexicon(lang)  # deterministic
        nouns = [lex[s] + toymt.PLURAL_SUFFIX[lang] for s, _ in toymt.NOUNS]
        forms = list(lex.values()) + nouns
        assert len(set(forms)) == len(forms)  # no collisions, plural forms included
        assert not set(forms) & english and not set(forms) & toymt._ENGLISH_STOPLIST
        assert all(re.fullmatch("[a-z]+", w) for w in forms)
        all_forms.append(set(forms))
    assert not all_forms[0] & all_forms[1]  # the two languages share no word
    assert toymt.PLURAL_SUFFIX == {"qaa": "i", "qab": "ko"}


def test_english_rendering():
    assert toymt.render_english(DOG) == "The big dog does not see two old red cats."
    assert toymt.render_english(TEACHER) == "A teacher carries my box."
    old = Sentence(NounPhrase("a", ("old",), "farmer"), "watch", NounPhrase("some", (), "apple", True))
    assert toymt.render_english(old) == "An old farmer watches some apples."
    plural = Sentence(NounPhrase("these", (), "fox", True), "need", NounPhrase("a", (), "city"), negated=True)
    assert toymt.render_english(plural) == "These foxes do not need a city."


@pytest.mark.parametrize("name, sentence", [("dog", DOG), ("teacher", TEACHER)])
@pytest.mark.parametrize("lang", ["qaa", "qab"])
def test_reference_translations_are_exact(name, sentence, lang):
    assert toymt.translate(sentence, lang) == REF[(name, lang)]
    assert toymt.translate(toymt.render_english(sentence), lang) == REF[(name, lang)]  # from the text too
    assert toymt.translate(sentence, "en-" + lang) == REF[(name, lang)]


def test_reference_follows_the_grammar_rules():
    a, b = toymt.LEXICONS["qaa"], toymt.LEXICONS["qab"]
    # A: SVO, adjectives after the noun, plural -i, negation before the verb
    expected_a = [a["the"], a["dog"], a["big"], a["not"], a["see"], a["two"], a["cat"] + "i", a["old"], a["red"]]
    # B: SOV, adjectives before the noun, plural -ko, negation after the verb
    expected_b = [b["the"], b["big"], b["dog"], b["two"], b["old"], b["red"], b["cat"] + "ko", b["see"], b["not"]]
    for lang, expected in (("qaa", expected_a), ("qab", expected_b)):
        text = " ".join(expected)
        assert toymt.translate(DOG, lang) == text[0].upper() + text[1:] + "."


def test_parse_english_round_trip_and_rejects():
    rng = random.Random(5)
    for _ in range(300):
        s = toymt.draw_sentence(rng, max_adjectives=3)
        assert toymt.parse_english(toymt.render_english(s)) == s
    for bad in ["the big dog sees a cat.", "The big dog sees a cat", "The dog sees a cats.", "A old dog sees a cat.",
                "The dog see a cat.", "The dogs does not see a cat.", "The dog sees.", "The apple sees a cat x.",
                "Hello.", "", "The dog purple sees a cat."]:
        with pytest.raises(UserError, match="toymt"):
            toymt.parse_english(bad)
    with pytest.raises(UserError):
        toymt.translate(3, "qaa")


# ---------------------------------------------------------------------------------------------------------------
# errors


ERROR_CASES = [
    # (kind, edits, DOG in A, DOG in B, TEACHER in A, TEACHER in B)
    ("word_order", {"word_order": ["subject"]},
     "Pupi luva nupo leti melo nipa tisai koti mola.", "Bafu zydy bigafa fufo gafafu foroze zafireko hedafo baho.",
     "Lomaki nata lilima maso posipi.", "Hidoro wabi gobo bohury defafa."),
    ("word_order", {"word_order": ["object"]},
     "Pupi nupo luva leti melo nipa koti mola tisai.", "Bafu bigafa zydy fufo zafireko gafafu foroze hedafo baho.",
     "Nata lomaki lilima posipi maso.", "Wabi hidoro bohury gobo defafa."),
    ("plural", {"plural": ["subject"]},
     "Pupi nupoi luva leti melo nipa tisai koti mola.", "Bafu bigafa zydyko fufo gafafu foroze zafireko hedafo baho.",
     "Nata lomakii lilima maso posipi.", "Wabi hidoroko gobo bohury defafa."),
    ("plural", {"plural": ["object"]},
     "Pupi nupo luva leti melo nipa tisa koti mola.", "Bafu bigafa zydy fufo gafafu foroze zafire hedafo baho.",
     "Nata lomaki lilima maso posipii.", "Wabi hidoro gobo bohuryko defafa."),
    ("punctuation", {"punctuation": True},
     "Pupi nupo luva leti melo nipa tisai koti mola", "Bafu bigafa zydy fufo gafafu foroze zafireko hedafo baho",
     "Nata lomaki lilima maso posipi", "Wabi hidoro gobo bohury defafa"),
    ("mistranslation", {"mistranslation": {("verb",): "sell"}},
     "Pupi nupo luva leti vakopo nipa tisai koti mola.", "Bafu bigafa zydy fufo gafafu foroze zafireko wagary baho.",
     "Nata lomaki vakopo maso posipi.", "Wabi hidoro gobo bohury wagary."),
    ("mistranslation", {"mistranslation": {("subject", "noun", 0): "horse"}},
     "Pupi pulo luva leti melo nipa tisai koti mola.", "Bafu bigafa fuzado fufo gafafu foroze zafireko hedafo baho.",
     "Nata pulo lilima maso posipi.", "Wabi fuzado gobo bohury defafa."),
    ("untranslated", {"untranslated": [("object", "noun", 0)]},
     "Pupi nupo luva leti melo nipa cats koti mola.", "Bafu bigafa zydy fufo gafafu foroze cats hedafo baho.",
     "Nata lomaki lilima maso box.", "Wabi hidoro gobo box defafa."),
    ("untranslated", {"untranslated": [("verb",)]},
     "Pupi nupo luva leti see nipa tisai koti mola.", "Bafu bigafa zydy fufo gafafu foroze zafireko see baho.",
     "Nata lomaki carries maso posipi.", "Wabi hidoro gobo bohury carries."),
    ("omission", {"omission": True},
     "Pupi nupo luva leti melo.", "Bafu bigafa zydy hedafo baho.", "Nata lomaki lilima.", "Wabi hidoro defafa."),
    ("negation", {"negation": True},
     "Pupi nupo luva melo nipa tisai koti mola.", "Bafu bigafa zydy fufo gafafu foroze zafireko hedafo.",
     "Nata lomaki leti lilima maso posipi.", "Wabi hidoro gobo bohury defafa baho."),
]


@pytest.mark.parametrize("kind, edits, dog_a, dog_b, teacher_a, teacher_b", ERROR_CASES)
def test_each_error_kind_gives_the_expected_hypothesis(kind, edits, dog_a, dog_b, teacher_a, teacher_b):
    assert toymt.apply_errors(DOG, "qaa", **edits) == dog_a
    assert toymt.apply_errors(DOG, "qab", **edits) == dog_b
    assert toymt.apply_errors(TEACHER, "qaa", **edits) == teacher_a
    assert toymt.apply_errors(TEACHER, "en-qab", **edits) == teacher_b
    assert toymt.ERROR_KINDS[kind] in ("minor", "major", "critical")


def test_adjective_errors_and_combinations():
    assert toymt.apply_errors(DOG, "qaa", untranslated=[("object", "adj", 1)]) == \
        "Pupi nupo luva leti melo nipa tisai koti red."
    assert toymt.apply_errors(DOG, "qab", mistranslation={("object", "adj", 1): "green"}) == \
        "Bafu bigafa zydy fufo gafafu fidyfe zafireko hedafo baho."
    # an untranslated noun with a plural error is copied in the other English number
    assert toymt.apply_errors(DOG, "qaa", untranslated=[("object", "noun", 0)], plural=["object"]) == \
        "Pupi nupo luva leti melo nipa cat koti mola."
    assert toymt.apply_errors(DOG, "qab", omission=True, negation=True, punctuation=True) == "Bafu bigafa zydy hedafo"
    assert toymt.apply_errors(DOG, "qaa") == REF[("dog", "qaa")]


def _only(kind):
    profile = dict.fromkeys(toymt.ERROR_KINDS, 0.0)
    profile[kind] = 1.0
    return profile


def test_sampled_errors_of_each_kind_have_known_weights():
    weight = {"minor": -1, "major": -5, "critical": -25}
    assert toymt.SEVERITY_WEIGHTS == weight
    ref = REF[("dog", "qaa")]
    for seed in range(20):
        rng = random.Random(seed)
        text, errors = toymt.hypothesis(DOG, "qaa", _only("word_order"), rng)
        assert text == toymt.apply_errors(DOG, "qaa", word_order=["subject", "object"])  # one per phrase
        assert errors == [{"severity": "minor", "kind": "word_order", "weight": -1}] * 2
        text, errors = toymt.hypothesis(DOG, "qaa", _only("plural"), rng)
        assert text == toymt.apply_errors(DOG, "qaa", plural=["subject", "object"]) and len(errors) == 2
        for kind, edits in (("punctuation", {"punctuation": True}), ("omission", {"omission": True}),
                            ("negation", {"negation": True})):
            text, errors = toymt.hypothesis(DOG, "qaa", _only(kind), rng)
            assert text == toymt.apply_errors(DOG, "qaa", **edits)
            assert errors == [{"severity": toymt.ERROR_KINDS[kind], "kind": kind,
                               "weight": weight[toymt.ERROR_KINDS[kind]]}]
        # a word error changes exactly one word of the reference
        lex = toymt.LEXICONS["qaa"]
        for kind in ("mistranslation", "untranslated"):
            text, errors = toymt.hypothesis(DOG, "qaa", _only(kind), rng)
            assert errors == [{"severity": "major", "kind": kind, "weight": -5}]
            got, want = text[:-1].lower().split(), ref[:-1].lower().split()
            diff = [(g, w) for g, w in zip(got, want) if g != w]
            assert len(got) == len(want) and len(diff) == 1
            new = diff[0][0]
            if kind == "untranslated":
                assert new in toymt.ENGLISH_VOCABULARY
            else:
                assert new in lex.values() or new.removesuffix("i") in lex.values()
        text, errors = toymt.hypothesis(DOG, "qab", _only("unrelated"), rng)
        assert errors == [{"severity": "critical", "kind": "unrelated", "weight": -25}]
        other = set(text[:-1].lower().split())
        lex = toymt.LEXICONS["qab"]
        assert not other & {lex["dog"], lex["cat"] + "ko", lex["cat"], lex["see"]}
    # everything at once: each kind exactly as drawn, MQM = the sum of the weights
    text, errors = toymt.hypothesis(DOG, "qaa", dict.fromkeys(toymt.ERROR_KINDS, 0.0) | {
        "omission": 1.0, "negation": 1.0, "word_order": 1.0, "punctuation": 1.0}, random.Random(0))
    assert text == "Pupi luva nupo melo"
    assert [e["kind"] for e in errors] == ["omission", "negation", "word_order", "punctuation"]
    assert sum(e["weight"] for e in errors) == -52


def test_rows_schema_and_true_mqm(ratings):
    rows = ratings["2023"][: 30 * 2 * 6]
    assert len(ratings["2023"]) == 1000 * 2 * 6
    keys = ["year", "lp", "item", "src", "ref", "mt", "system", "score", "mqm", "errors"]
    for r in rows:
        assert list(r) == keys
        assert r["year"] == "2023" and r["lp"] in toymt.LPS and r["system"] in toymt.systems("2023")
        assert re.fullmatch(r"2023/en-qa[ab]/\d+", r["item"]) and r["item"].startswith(f"2023/{r['lp']}/")
        assert r["ref"] == toymt.translate(r["src"], r["lp"])
        assert isinstance(r["mqm"], int) and isinstance(r["score"], float)
        assert r["mqm"] == sum(e["weight"] for e in r["errors"])
        assert (r["mt"] == r["ref"]) == (not r["errors"])  # every error is visible
        for e in r["errors"]:
            assert set(e) == {"severity", "kind", "weight"}
            assert e["severity"] == toymt.ERROR_KINDS[e["kind"]]
            assert e["weight"] == toymt.SEVERITY_WEIGHTS[e["severity"]]
        assert r["score"] == round(r["score"], 1)
    # one row per (source, lp, system), in that order; items unique per (year, lp, source)
    assert [(r["lp"], r["system"]) for r in rows[:12]] == [(lp, s) for lp in toymt.LPS for s in toymt.systems("2023")]
    assert len({(r["item"], r["system"]) for r in ratings["2023"]}) == len(ratings["2023"])
    assert len({r["item"] for r in ratings["2023"]}) == 2000
    assert all(r["mt"] == r["ref"] for r in ratings["2023"] if r["mqm"] == 0)


def test_ratings_determinism_and_prefix():
    rows = toymt.make_ratings("2024", 12, seed=3)
    assert rows == toymt.make_ratings("2024", 12, seed=3)
    assert toymt.make_ratings("2024", 5, seed=3) == rows[: 5 * 2 * 6]
    assert toymt.make_ratings("2024", 12, seed=4) != rows
    only_b = toymt.make_ratings("2024", 12, seed=3, lps=["en-qab"])
    assert only_b == [r for r in rows if r["lp"] == "en-qab"]
    # the rater knobs change the scores only
    quiet = toymt.make_ratings("2024", 12, seed=3, rater_noise=0.0, miss_rate=0.0)
    assert [{k: v for k, v in r.items() if k != "score"} for r in quiet] == \
        [{k: v for k, v in r.items() if k != "score"} for r in rows]
    assert all(r["score"] == r["mqm"] for r in quiet)
    assert toymt.make_ratings("2023", 0) == []


def test_years_are_disjoint_and_off_the_test_split():
    for seed in (0, 1):
        src = {year: {toymt.render_english(s) for s in toymt.year_sources(year, 600, seed)} for year in toymt.YEARS}
        assert len(src["2023"]) == len(src["2024"]) == 600  # distinct within a year
        assert not src["2023"] & src["2024"]
        for year in toymt.YEARS:
            assert all(toymt.year_of(t) == year and toymt.split_of(t) == "train" for t in src[year])
            assert all(zlib.crc32(t.encode()) % 10 in toymt.YEAR_BUCKETS[year] for t in src[year])
    rows = toymt.make_ratings("2024", 3)
    assert {r["src"] for r in rows} == {toymt.render_english(s) for s in toymt.year_sources("2024", 3)}


def test_systems_and_expected_penalty(ratings):
    for year, lo, hi in (("2023", 1.2, 16.0), ("2024", 0.4, 8.5)):
        names = list(toymt.systems(year))
        assert names == [f"sys{year[2:]}-{c}" for c in "abcdef"]
        penalties = [toymt.expected_penalty(year, n) for n in names]
        assert penalties == sorted(penalties) and len(set(penalties)) == 6  # best first, strictly
        assert lo <= penalties[0] and penalties[-1] <= hi
        by_system = {n: [-r["mqm"] for r in ratings[year] if r["system"] == n] for n in names}
        for name in names:
            got = by_system[name]
            assert len(got) == 2000
            se = statistics.stdev(got) / math.sqrt(len(got))
            assert abs(statistics.mean(got) - toymt.expected_penalty(year, name)) < 4 * se + 0.02, name
            counts = {k: sum(e["kind"] == k for r in ratings[year] if r["system"] == name for e in r["errors"])
                      for k in toymt.ERROR_KINDS}
            for kind, expected in toymt.expected_errors(year, name).items():
                assert abs(counts[kind] / 2000 - expected) < 0.05, (name, kind)
        means = [statistics.mean(by_system[n]) for n in names]
        assert means == sorted(means)
    assert toymt.expected_penalty("2024", "sys24-a") == pytest.approx(0.51, abs=0.01)
    assert toymt.expected_penalty("2023", "sys23-f") == pytest.approx(14.93, abs=0.01)
    # the 2024 systems are better, with fewer word errors
    mean_pen = {y: statistics.mean(toymt.expected_penalty(y, n) for n in toymt.systems(y)) for y in toymt.YEARS}
    assert mean_pen["2024"] < mean_pen["2023"] / 2
    major = {y: sum(toymt.expected_errors(y, n)["mistranslation"] for n in toymt.systems(y)) for y in toymt.YEARS}
    assert major["2024"] < major["2023"] / 3
    assert toymt.systems("2023")["sys23-a"] == toymt.SYSTEMS["2023"]["sys23-a"]
    assert toymt.systems("2023") is not toymt.SYSTEMS["2023"]


def test_noise_statistics(ratings):
    rows = ratings["2024"][:3600]
    minors = [sum(e["severity"] == "minor" for e in r["errors"]) for r in rows]
    diffs = [r["score"] - r["mqm"] for r in rows]
    # E[score - mqm] = miss_rate x minor errors; the spread is the rater's noise (plus a little from the misses)
    assert abs(statistics.mean(diffs) - 0.1 * statistics.mean(minors)) < 0.06
    assert abs(statistics.stdev(diffs) - 1.0) < 0.08
    clean = toymt.make_ratings("2024", 300, miss_rate=0.0, rater_noise=2.0)
    d = [r["score"] - r["mqm"] for r in clean]
    assert len(d) == 3600 and abs(statistics.mean(d)) < 0.12 and abs(statistics.stdev(d) - 2.0) < 0.1
    misses = toymt.make_ratings("2024", 300, miss_rate=0.5, rater_noise=0.0)
    m = [r["score"] - r["mqm"] for r in misses]
    n = [sum(e["severity"] == "minor" for e in r["errors"]) for r in misses]
    assert all(x == int(x) and 0 <= x <= k for x, k in zip(m, n))  # only minor errors are missed
    assert abs(sum(m) / sum(n) - 0.5) < 0.05


def test_pair_difficulty_matches_the_docstring():
    # the numbers in the module docstring ("How hard the noise makes pairs")
    got = {}
    for year in toymt.YEARS:
        items = {}
        for r in toymt.make_ratings(year, 400):
            items.setdefault(r["item"], []).append(r)
        rng = random.Random("pairs")
        keys = list(items)
        pairs = [tuple(rng.sample(items[rng.choice(keys)], 2)) for _ in range(2000)]
        untied = [(a, b) for a, b in pairs if a["mqm"] != b["mqm"]]
        reversed_ = sum((a["score"] - b["score"]) * (a["mqm"] - b["mqm"]) < 0 for a, b in untied)
        got[year] = (len(untied), reversed_)
    assert got == {"2023": (1827, 81), "2024": (1610, 170)}


# ---------------------------------------------------------------------------------------------------------------
# the task contract


def test_make_dataset_format_and_splits():
    ds = toymt.make_dataset("train", 40, seed=0)
    assert ds.column_names == ["prompt", "completion", "lp", "reference"]
    rows = toymt.make_rows("train", 2000, seed=0)
    assert ds.to_list() == rows[:40]
    assert toymt.make_rows("train", 2000, seed=0) == rows and toymt.make_rows("train", 2000, seed=1) != rows
    pattern = re.compile(r"Translate the following English text into fluent (Toy language [AB])\.\n"
                         r"English: (.+)\n(Toy language [AB]):")
    for r in rows[:300]:
        m = pattern.fullmatch(r["prompt"])
        assert m and m.group(1) == m.group(3) == toymt.LANGUAGE_NAMES[r["lp"][3:]]
        assert r["completion"] == " " + r["reference"]
        assert r["reference"] == toymt.translate(m.group(2), r["lp"])
    assert {r["lp"] for r in rows} == set(toymt.LPS)
    first = toymt.make_rows("test", 1, seed=0)[0]
    src = first["prompt"].split("\n")[1][len("English: "):]
    name = toymt.LANGUAGE_NAMES[first["lp"][3:]]
    assert first["prompt"] == f"Translate the following English text into fluent {name}.\nEnglish: {src}\n{name}:"
    for seed in (0, 1):
        train = {r["prompt"].split("\n")[1] for r in toymt.make_rows("train", 2000, seed)}
        test = {r["prompt"].split("\n")[1] for r in toymt.make_rows("test", 300, seed)}
        assert not train & test
        assert all(toymt.split_of(t[len("English: "):]) == "test" for t in test)


def test_render_prompt_exact():
    assert toymt.render_prompt("A teacher carries my box.", "en-qab") == (
        "Translate the following English text into fluent Toy language B.\nEnglish: A teacher carries my box.\n"
        "Toy language B:"
    )


def test_max_adjectives_knob():
    def adjectives(rows):
        return max(len(toymt.parse_english(r["prompt"].split("\n")[1][9:]).subject.adjectives) for r in rows)

    assert adjectives(toymt.make_rows("train", 200, max_adjectives=0)) == 0
    assert adjectives(toymt.make_rows("train", 400, max_adjectives=3)) == 3
    assert adjectives(toymt.make_rows("train", 400)) == 2


def test_reward_word_f1():
    ref = REF[("dog", "qaa")]  # 10 tokens: 9 words and the period
    completions = [
        " " + ref,  # exact
        "Pupi nupo luva melo",  # 4 tokens, all matching: 2*4/14
        "pupi pupi pupi",  # one match counted once: 2*1/13
        "PUPI NUPO, luva",  # case-insensitive; the comma is a token: 3 matches of 4, 2*3/14
        "",
        "   \n",
        None,
        12,
        [{"role": "assistant", "content": ref}],
        [{"role": "user", "content": ref}],
        "xyzzy plugh.",  # only the period matches: 2*1/13
    ]
    got = toymt.reward(["p"] * len(completions), completions, reference=[ref] * len(completions), lp=["en-qaa"] * 11)
    assert got == pytest.approx([1.0, 8 / 14, 2 / 13, 6 / 14, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 2 / 13])
    assert all(isinstance(x, float) for x in got)
    assert toymt.reward(["p"], [ref + " " + ref], reference=[ref]) == pytest.approx([2 * 10 / 30])
    with pytest.raises(UserError, match="reference"):
        toymt.reward(["p"], ["x"])
    with pytest.raises(UserError, match="reference"):
        toymt.reward(["p"], ["x"], reference=[])


def test_corpus_holds_the_remedy_layout():
    texts = toymt.corpus(0)
    assert texts == toymt.corpus(0) and all(isinstance(t, str) and t for t in texts)
    joined = "\n".join(texts)
    for name in ("Toy language A", "Toy language B"):
        assert f"Translate the following English text into fluent {name}.\nEnglish: " in joined
        with_template = [t for t in texts if "\nTemplate: " in t and f"\n{name}: " in t]
        without = [t for t in texts if "\nTemplate: " not in t and f"\n{name}: " in t]
        assert len(with_template) >= 50 and len(without) >= 50
    words = set(joined.replace(".", " ").lower().split())
    for lang in toymt.LANGUAGES:
        assert set(toymt.LEXICONS[lang].values()) <= words
    assert toymt.ENGLISH_VOCABULARY <= words
    r = toymt.make_ratings("2023", 1)[0]
    assert toymt.remedy_text(r["src"], r["mt"], r["lp"], r["ref"]) == (
        f"Translate the following English text into fluent Toy language A.\nEnglish: {r['src']}\n"
        f"Template: {r['ref']}\nToy language A: {r['mt']}"
    )
    assert toymt.remedy_text(r["src"], r["mt"], r["lp"]) == (
        f"Translate the following English text into fluent Toy language A.\nEnglish: {r['src']}\n"
        f"Toy language A: {r['mt']}"
    )


# ---------------------------------------------------------------------------------------------------------------
# bad arguments


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "dev"},
        {"num_examples": -1},
        {"num_examples": 2.0},
        {"num_examples": True},
        {"seed": "0"},
        {"max_adjectives": -1},
        {"max_adjectives": 5},
        {"max_adjectives": 1.0},
        {"max_adjectives": True},
        {"difficulty": 3},
    ],
)
def test_bad_make_dataset_arguments_raise_user_error(kwargs):
    args = {"split": "train", "num_examples": 5, "seed": 0}
    knobs = {k: v for k, v in kwargs.items() if k not in args}
    args.update({k: v for k, v in kwargs.items() if k in args})
    with pytest.raises(UserError, match="toymt"):
        toymt.make_rows(args["split"], args["num_examples"], args["seed"], **knobs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"year": "2022"},
        {"year": 2023},
        {"num_sources": -1},
        {"num_sources": 1.5},
        {"seed": None},
        {"lps": ["en-de"]},
        {"lps": []},
        {"lps": "en-qaa"},
        {"lps": ["en-qaa", "en-qaa"]},
        {"rater_noise": -0.1},
        {"rater_noise": float("nan")},
        {"rater_noise": "1"},
        {"miss_rate": 1.5},
        {"miss_rate": -0.1},
        {"miss_rate": True},
    ],
)
def test_bad_make_ratings_arguments_raise_user_error(kwargs):
    args = {"year": "2023", "num_sources": 2} | kwargs
    with pytest.raises(UserError, match="toymt"):
        toymt.make_ratings(**args)


def test_other_bad_arguments_raise_user_error():
    with pytest.raises(UserError, match="toymt"):
        toymt.translate(DOG, "de")
    with pytest.raises(UserError, match="toymt"):
        toymt.systems("2025")
    with pytest.raises(UserError, match="sys23-a"):
        toymt.expected_penalty("2024", "sys23-a")
    with pytest.raises(UserError, match="toymt"):
        toymt.hypothesis(DOG, "qaa", {"omission": 1.0}, random.Random(0))
    with pytest.raises(UserError, match="toymt"):
        toymt.hypothesis(DOG, "qaa", _only("omission") | {"negation": 2.0}, random.Random(0))
    with pytest.raises(UserError, match="toymt"):
        toymt.apply_errors(TEACHER, "qaa", untranslated=[("subject", "adj", 0)])  # no adjective there
    with pytest.raises(UserError, match="toymt"):
        toymt.apply_errors(DOG, "qaa", mistranslation={("verb",): "dog"})  # not a verb
    with pytest.raises(UserError, match="toymt"):
        toymt.apply_errors(DOG, "qaa", typo=True)
    with pytest.raises(UserError, match="toymt"):
        toymt.render_english(Sentence(NounPhrase("two", (), "dog"), "see", NounPhrase("a", (), "cat")))
