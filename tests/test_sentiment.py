"""The sentiment task: deterministic, disjoint splits; a VADER reward of the completion only; VADER word scores."""

import os
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from segrl.errors import UserError
from segrl.tasks import get_task, sentiment, task_names

# ---------------------------------------------------------------------------------------------------------------
# registry and data


def test_registered():
    assert get_task("sentiment") is sentiment
    assert "sentiment" in task_names()


def test_enough_products_and_templates():
    assert len({p for p, _ in sentiment.PRODUCTS}) == len(sentiment.PRODUCTS) >= 30
    assert len({t[0] for t in sentiment.TEMPLATES}) == len(sentiment.TEMPLATES) >= 20
    moods = {t[1] for t in sentiment.TEMPLATES}
    assert moods == {"neutral", "negative"}
    for opening, mood, kinds, follows in sentiment.TEMPLATES:
        assert "{product}" in opening and kinds and set(kinds) <= set("gpm") and follows in ("clause", "adjective")
    for split in sentiment.SPLITS:  # every (split, mood) has prompts to draw
        for mood in sentiment.MOODS:
            assert sentiment._PAIRS[(split, mood)]


def test_same_seed_same_data_and_prefix_property():
    a = sentiment.make_dataset("train", 40, seed=3).to_list()
    assert a == sentiment.make_dataset("train", 40, seed=3).to_list()
    assert sentiment.make_dataset("train", 15, seed=3).to_list() == a[:15]
    assert sentiment.make_dataset("train", 40, seed=4).to_list() != a
    b = sentiment.make_rows("test", 30, seed=1, negative_share=0.2)
    assert sentiment.make_rows("test", 7, seed=1, negative_share=0.2) == b[:7]


def test_columns_and_format():
    ds = sentiment.make_dataset("train", 50, seed=0)
    assert ds.column_names == ["prompt", "completion", "template", "product", "mood"]
    for row in ds:
        assert isinstance(row["prompt"], str) and row["prompt"] == row["prompt"].strip()
        assert row["product"] in row["prompt"]
        assert row["prompt"] == sentiment.render_prompt(row["template"], row["product"])
        assert row["mood"] == sentiment.TEMPLATES[row["template"]][1]
        assert row["completion"].startswith(" ") and row["completion"].strip()
        assert sentiment.score(row["completion"]) > 0.5  # the demonstrations are positive


def test_splits_are_disjoint():
    for seed in (0, 1):
        train = sentiment.make_rows("train", 3000, seed)
        test = sentiment.make_rows("test", 500, seed)
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
        for r in train + test:
            assert sentiment.split_of(r["template"], r["product"]) in ("train", "test")
        assert all(sentiment.split_of(r["template"], r["product"]) == "test" for r in test)
    assert not {r["prompt"] for r in sentiment.make_rows("test", 500, 0)} & {
        r["prompt"] for r in sentiment.make_rows("train", 3000, 1)
    }


def test_negative_share_knob():
    assert {r["mood"] for r in sentiment.make_rows("train", 100, negative_share=0)} == {"neutral"}
    assert {r["mood"] for r in sentiment.make_rows("train", 100, negative_share=1)} == {"negative"}
    assert {r["mood"] for r in sentiment.make_rows("train", 100)} == {"neutral", "negative"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"split": "dev"},
        {"num_examples": -1},
        {"num_examples": 2.0},
        {"num_examples": True},
        {"seed": "0"},
        {"negative_share": 1.5},
        {"negative_share": -0.1},
        {"negative_share": float("nan")},
        {"negative_share": True},
        {"negative_share": "half"},
        {"difficulty": 3},
    ],
)
def test_bad_arguments_raise_user_error(kwargs):
    args = {"split": "train", "num_examples": 5, "seed": 0}
    knobs = {k: v for k, v in kwargs.items() if k not in args}
    args.update({k: v for k, v in kwargs.items() if k in args})
    with pytest.raises(UserError, match="sentiment"):
        sentiment.make_rows(args["split"], args["num_examples"], args["seed"], **knobs)


def test_corpus_covers_the_text():
    texts = sentiment.corpus(0)
    assert len(texts) > 2000 and all(isinstance(t, str) and t for t in texts)
    words = set(" ".join(texts).split())
    for product, _ in sentiment.PRODUCTS:
        assert set(product.split()) <= words
    assert sentiment.corpus(0) == texts


# ---------------------------------------------------------------------------------------------------------------
# reward


def test_reward_on_hand_made_texts():
    positive = "This is wonderful. I love it, the quality is excellent and I am very happy."
    negative = "This is terrible. I hate it, the quality is awful and I am very disappointed."
    got = sentiment.reward(["p"] * 4, [positive, negative, "", "  \n\t"])
    assert got[0] > 0.5 and got[1] < -0.5 and got[2] == -1.0 and got[3] == -1.0  # silence is the minimum
    assert all(isinstance(x, float) for x in got)


def test_reward_conversational_and_garbage():
    text = "The hotel was lovely and the staff were great."
    direct = sentiment.reward(["p"], [text])[0]
    conv = [
        [{"role": "assistant", "content": text}],
        [{"role": "assistant", "content": [{"type": "text", "text": text}]}],
        {"role": "assistant", "content": text},
        [{"role": "user", "content": "I hate everything, awful."}, {"role": "assistant", "content": text}],
    ]
    assert sentiment.reward(["p"] * 4, conv) == [direct] * 4
    garbage = [None, 3, [], [{"role": "user", "content": "awful"}], [{"content": None}], ["x"], {"a": 1}]
    assert sentiment.reward(["p"] * len(garbage), garbage) == [-1.0] * len(garbage)
    assert sentiment.score("") == 0.0  # VADER's own view of no text


def test_prompt_is_not_scored_and_extra_keywords_are_ignored():
    completion = " the coffee maker is fine, I suppose."
    a = sentiment.reward(["This is the best, most wonderful coffee maker ever, and"], [completion])
    b = sentiment.reward(["This is the worst, most horrible coffee maker ever, and"], [completion],
                         template=[3], mood=["negative"], completion_ids=[[1, 2]], trainer_state=None)
    assert a == b == [sentiment.score(completion)]


def test_reward_matches_vader_directly():
    ref = SentimentIntensityAnalyzer()
    rng = random.Random(0)
    vocab = list(ref.lexicon)[:3000:7] + ["the", "food", "was", "not", "very", "but", "!", "and", "I", "GREAT"]
    texts = [" ".join(rng.choice(vocab) for _ in range(rng.randint(1, 20))) for _ in range(200)]
    texts += [r["prompt"] + r["completion"] for r in sentiment.make_rows("train", 20)]
    got = sentiment.reward([""] * len(texts), texts)
    assert got == [ref.polarity_scores(t)["compound"] for t in texts]
    assert all(-1.0 <= x <= 1.0 for x in got)


def test_repetition_games_the_reward():  # the documented reward-hacking route
    assert sentiment.score("great " * 10) > sentiment.score("The food was great.")


def test_analyzer_is_a_singleton():
    assert sentiment.analyzer() is sentiment.analyzer()


# ---------------------------------------------------------------------------------------------------------------
# word scores


def test_vader_word_scores_offsets():
    text = "The food was great but the service was terrible."
    lexicon = sentiment.analyzer().lexicon
    got = sentiment.vader_word_scores(text)
    assert got == [(13, 18, lexicon["great"]), (39, 47, lexicon["terrible"])]
    assert [text[s:e] for s, e, _ in got] == ["great", "terrible"]
    assert got[0][2] > 0 > got[1][2]


def test_vader_word_scores_unicode_and_punctuation():
    lexicon = sentiment.analyzer().lexicon
    text = "«Great!» said Zoë — the café was (awful)… “LOVE” it’s super-happy; self-confident, 100% gr8 :)"
    got = sentiment.vader_word_scores(text)
    spans = [(text[s:e], v) for s, e, v in got]
    assert spans == [
        ("Great", lexicon["great"]),
        ("awful", lexicon["awful"]),
        ("LOVE", lexicon["love"]),
        ("super", lexicon["super"]),
        ("happy", lexicon["happy"]),
        ("self-confident", lexicon["self-confident"]),
    ]
    assert sentiment.vader_word_scores("") == []
    assert sentiment.vader_word_scores(None) == []
    assert sentiment.vader_word_scores("the table by the window") == []
