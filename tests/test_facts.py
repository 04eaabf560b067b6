"""The facts task: exact statement parsing, a per-line oracle reward, noisy demonstrations, Bradley-Terry pairs."""

import math
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from segrl.errors import UserError
from segrl.tasks import facts, get_task, task_names


def test_registered():
    assert get_task("facts") is facts
    assert "facts" in task_names()


# ---------------------------------------------------------------------------------------------------------------
# parse_statements: worked examples


def test_parse_statements_offsets_truth_and_malformed_lines():
    text = "7+5=12\n7+5=13\n\n 7 - 9 = -2 \r\nhello\n7*3=21"
    got = facts.parse_statements(text)
    assert [(s.start, s.end) for s in got] == [(0, 7), (7, 14), (14, 15), (15, 29), (29, 35), (35, 41)]
    assert [s.text for s in got] == ["7+5=12\n", "7+5=13\n", "\n", " 7 - 9 = -2 \r\n", "hello\n", "7*3=21"]
    assert [s.well_formed for s in got] == [True, True, False, True, False, True]
    assert [s.truth for s in got] == [True, False, False, True, False, True]
    assert [(s.a, s.op, s.b, s.c) for s in got] == [
        (7, "+", 5, 12), (7, "+", 5, 13), (None,) * 4, (7, "-", 9, -2), (None,) * 4, (7, "*", 3, 21),
    ]
    assert got[2].blank and not got[0].blank


def test_statements_tile_the_text():
    for text in ["", "a", "\n", "\n\n", "7+5=12", "7+5=12\n", "x\ny\n\nz", "☃\n7+5=12\n😀😀\n"]:
        got = facts.parse_statements(text)
        assert "".join(s.text for s in got) == text
        pos = 0
        for s in got:
            assert s.start == pos and text[s.start : s.end] == s.text
            pos = s.end
        assert pos == len(text)


@pytest.mark.parametrize(
    "line, well_formed, truth",
    [
        ("7+5=12", True, True),
        ("7 + 5 = 12", True, True),  # spaces around the operator and "="
        ("\t7+5=12\t ", True, True),  # tabs and spaces at the ends
        ("7+5=12\r", True, True),  # a Windows line end
        ("7+05=12", True, True),  # leading zeros are just digits
        ("7+-2=5", True, True),  # a signed operand
        ("-3*4=-12", True, True),
        ("7--2=9", True, True),
        ("3-7=-4", True, True),
        ("+7+5=+12", True, True),
        ("7+5=13", True, False),
        ("7*5=-35", True, False),
        ("7+5", False, False),  # no "="
        ("7+5=", False, False),
        ("7+5=12.", False, False),  # trailing punctuation
        ("7+5=12=12", False, False),
        ("7 5=12", False, False),
        ("7x5=35", False, False),  # only ASCII + - * are operators
        ("7×5=35", False, False),
        ("7−5=2", False, False),  # U+2212 MINUS SIGN
        ("７+5=12", False, False),  # fullwidth digit
        ("٧+5=12", False, False),  # Arabic-Indic digit (Python's int() would accept it)
        ("7+5 = twelve", False, False),
        ("7 + - 2 = 5", False, False),  # a sign must touch its digits
        ("7/7=1", False, False),
        ("The answer: 7+5=12", False, False),
        ("", False, False),
    ],
)
def test_parse_one_line(line, well_formed, truth):
    (s,) = facts.parse_statements(line + "\n")
    assert (s.well_formed, s.truth) == (well_formed, truth)


def test_huge_numbers_are_exact_and_too_long_ones_malformed():
    big = 10**60
    (s,) = facts.parse_statements(f"7+{big}={big + 7}\n")
    assert s.well_formed and s.truth and s.c == big + 7
    (s,) = facts.parse_statements(f"7+{big}={big + 6}\n")
    assert s.well_formed and not s.truth
    (s,) = facts.parse_statements(f"{'9' * 100}*{'9' * 100}={int('9' * 100) ** 2}")  # 200 digits: too long
    assert not s.well_formed
    (s,) = facts.parse_statements(f"{'9' * 100}*2={int('9' * 100) * 2}")  # 101 digits
    assert not s.well_formed
    (s,) = facts.parse_statements(f"{'9' * 100}+0={'9' * 100}")  # 100 digits: fine
    assert s.well_formed and s.truth
    huge = "1" * 20_000  # beyond Python's int/str conversion limit: must not raise
    (s,) = facts.parse_statements(f"7+{huge}={huge}")
    assert not s.well_formed


def test_parse_never_raises_on_non_strings():
    for x in (None, 123, b"7+5=12\n", ["7+5=12\n"], float("nan")):
        assert facts.parse_statements(x) == []


# ---------------------------------------------------------------------------------------------------------------
# reward: worked examples (prompt: 4 facts about sums with 7)


def _r(completion, op="+", number=7, k=4):
    return facts.reward(["p"], [completion], op=[op], number=[number], num_facts=[k])[0]


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("7+5=12\n7+1=8\n7+9=16\n7+12=19\n", 1.0),  # all true
        ("7+5=12\n7+1=8\n7+9=16\n7+12=20\n", 0.75),  # one false
        ("7+5=13\n7+1=9\n7+9=17\n7+12=20\n", 0.0),
        ("7+5=12\n7+5=12\n7+5=12\n7+5=12\n", 0.25),  # a repeat counts once
        ("7+5=12\n7 + 05 = 12\n7+1=8\n7+2=9\n", 0.75),  # the same fact in other spelling is a repeat
        ("7+5=13\n7+5=12\n7+1=8\n7+2=9\n", 0.75),  # a false line, then the true one: the true one is credited
        ("7-5=2\n5+7=12\n8+1=9\n7*2=14\n", 0.0),  # off-topic: wrong operator or wrong first operand
        ("7+5=12\n7-5=2\n7+1=8\n7+2=9\n", 0.75),
        ("7+5=12\n7+1=8\n7+9=16\n7+12=19\n7+2=9\n7+3=10\n", 1.0),  # more than K: only the first K count
        ("7+5=13\n7+1=8\n7+9=16\n7+12=19\n7+2=9\n", 0.75),  # a 5th true line does not make up for a false one
        ("7+5=12\n\n\n7+1=8\n   \n7+9=16\n7+12=19\n", 1.0),  # blank lines take no slot
        ("7+5=12\nblah\n7+1=8\n7+9=16\n7+12=19\n", 0.75),  # a non-blank malformed line takes a slot
        ("7+0=7\n7+-3=4\n7+100=107\n7+1=8", 1.0),  # any second operand; no final newline needed
        ("7+5=12\n", 0.25),  # fewer than K
        ("", 0.0),
        ("\x00\x01 garbage === +-*", 0.0),
        ("seven plus five is twelve", 0.0),
        ("12\n", 0.0),
    ],
)
def test_reward_worked_examples(completion, expected):
    assert _r(completion) == expected


def test_reward_other_topics_and_k():
    assert _r("3-7=-4\n3-1=2\n", op="-", number=3, k=2) == 1.0
    assert _r("3*7=21\n3*7=21\n3*1=3\n", op="*", number=3, k=3) == pytest.approx(2 / 3)  # the repeat wastes a slot
    assert _r("3*7=21\n3*7=21\n3*1=3\n3*2=6\n", op="*", number=3, k=3) == pytest.approx(2 / 3)
    assert _r("3*7=21\n3*1=3\n3*2=6\n", op="*", number=3, k=3) == 1.0
    assert _r("3*7=21\n", op="*", number=3, k=1) == 1.0


def test_statement_credits_add_up_to_the_reward():
    text = "7+5=12\n\n7+5=12\n7+1=9\nfoo\n7+2=9\n7+3=10\n"
    credits = facts.statement_credits(text, "+", 7, 4)
    assert len(credits) == len(facts.parse_statements(text))
    assert credits == [0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]  # repeat, false, malformed; 7+2=9 is the 5th line
    assert sum(credits) == facts.score(text, "+", 7, 4) == _r(text) == 0.25


def test_reward_conversational_and_trl_keywords():
    conv = [[{"role": "assistant", "content": "7+5=12\n7+1=8\n"}], [{"role": "assistant", "content": "7+5=11\n"}]]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": "7+5=12\n7+1=8"}]}]]
    prompts = [[{"role": "user", "content": "Write 2 facts about sums with 7."}]] * 2
    got = facts.reward(prompts, conv, op=["+", "+"], number=[7, 7], num_facts=[2, 2], completion_ids=[[1], [2]],
                       trainer_state=None, truths=[[], []])
    assert got == [1.0, 0.0]
    assert facts.reward(["q"], blocks, op=["+"], number=[7], num_facts=[2]) == [1.0]
    assert facts.reward(["q"], ["7+5=12\n"], op=["+"], number=["7"], num_facts=[1.0]) == [1.0]


def test_reward_never_raises_on_garbage_completions():
    garbage = [None, 123, b"7+5=12\n", {"role": "assistant"}, [{"role": "user", "content": "7+5=12\n"}],
               [None, 3], [{"content": None}], float("nan"), ["7+5=12\n"], "7+" + "9" * 50_000, "\n" * 1000]
    n = len(garbage)
    assert facts.reward(["p"] * n, garbage, op=["+"] * n, number=[7] * n, num_facts=[4] * n) == [0.0] * n


def test_reward_data_errors_are_user_errors():
    with pytest.raises(UserError, match="'op'"):
        facts.reward(["p"], ["7+5=12"], number=[7], num_facts=[4])
    with pytest.raises(UserError, match="completions"):
        facts.reward(["p"], ["7+5=12"], op=["+", "+"], number=[7], num_facts=[4])
    with pytest.raises(UserError, match="row 0"):
        facts.reward(["p"], ["7+5=12"], op=["/"], number=[7], num_facts=[4])
    with pytest.raises(UserError, match="num_facts"):
        facts.reward(["p"], ["7+5=12"], op=["+"], number=[7], num_facts=[0])
    with pytest.raises(UserError, match="number"):
        facts.reward(["p"], ["7+5=12"], op=["+"], number=["seven"], num_facts=[4])


# ---------------------------------------------------------------------------------------------------------------
# data

_PROMPT = re.compile(r"(?:Write|List|Give|State|Tell me|Name|Share|Write) (\d+) (?:true )?facts about "
                     r"(sums|differences|products) with (\d+)\.\n")
_LINE = re.compile(r"(-?\d+)([+*-])(\d+)=(-?\d+)")
_OP = {"sums": "+", "differences": "-", "products": "*"}


def test_same_seed_same_data_and_prefix_property():
    a = facts.make_dataset("train", 60, seed=3).to_list()
    assert a == facts.make_dataset("train", 60, seed=3).to_list()
    assert facts.make_dataset("train", 20, seed=3).to_list() == a[:20]
    assert facts.make_dataset("train", 60, seed=4).to_list() != a
    assert facts.make_dataset("test", 60, seed=3).to_list() != a


def test_columns_and_demonstrations_match_their_prompts():
    ds = facts.make_dataset("train", 5)
    assert ds.column_names == ["prompt", "completion", "op", "number", "num_facts", "truths"]
    false_lines = 0
    for split in ("train", "test"):
        for row in facts.make_rows(split, 400, seed=5):
            k, topic, n = _PROMPT.fullmatch(row["prompt"]).groups()
            assert (int(k), _OP[topic], int(n)) == (row["num_facts"], row["op"], row["number"])
            lines = row["completion"].split("\n")
            assert lines[-1] == "" and len(lines) - 1 == row["num_facts"] == len(row["truths"])
            bs = []
            for line, true in zip(lines[:-1], row["truths"]):
                a, op, b, c = _LINE.fullmatch(line).groups()
                assert (int(a), op) == (row["number"], row["op"])
                right = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
                assert (right == int(c)) == true
                if not true:
                    false_lines += 1
                    assert 1 <= abs(int(c) - right) <= 3
                    assert int(c) >= 0 or right < 0  # plausible: never negative when the truth is not
                assert 1 <= int(b) <= 12
                bs.append(int(b))
            assert len(set(bs)) == len(bs)  # distinct facts
            expected = sum(row["truths"]) / row["num_facts"]
            assert facts.reward([row["prompt"]], [row["completion"]], op=[row["op"]], number=[row["number"]],
                                num_facts=[row["num_facts"]]) == [expected]
    assert false_lines > 100  # the checks on false values above did run (about 20% of 3,200 lines are false)


def test_demonstrations_mix_true_and_false_statements():
    rows = facts.make_rows("train", 2000, seed=1)
    truths = [t for r in rows for t in r["truths"]]
    assert 0.17 < 1 - sum(truths) / len(truths) < 0.23  # error rate q ~ U[0, 0.4]: 20% false on average
    assert 0.42 < sum(all(r["truths"]) for r in rows) / len(rows) < 0.50  # E[(1-q)^4] = 0.46 are all true
    noisy = facts.make_rows("train", 2000, seed=1, max_error_rate=0.6)
    assert 0.27 < 1 - sum(t for r in noisy for t in r["truths"]) / (4 * len(noisy)) < 0.33
    assert {r["op"] for r in rows} == {"+", "-", "*"}
    assert all(all(r["truths"]) for r in facts.make_rows("train", 200, max_error_rate=0))


def test_splits_are_disjoint_and_cover_every_topic():
    for seed in (0, 1):
        train = facts.make_rows("train", 3000, seed)
        test = facts.make_rows("test", 1000, seed)
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
        topics = {(op, n) for op in "+-*" for n in range(2, 13)}
        assert {(r["op"], r["number"]) for r in test} == topics  # the test split holds out wordings, not topics
        assert {(r["op"], r["number"]) for r in train} == topics
    assert not {r["prompt"] for r in facts.make_rows("test", 500, 0)} & {
        r["prompt"] for r in facts.make_rows("train", 3000, 1)
    }
    for row in facts.make_rows("test", 50):
        template = [i for i in range(len(facts.TEMPLATES))
                    if facts.render_prompt(row["op"], row["number"], row["num_facts"], i) == row["prompt"]]
        assert template == [facts.held_out_template(row["op"], row["number"], row["num_facts"])]
        assert facts.split_of(row["op"], row["number"], row["num_facts"], template[0]) == "test"


def test_difficulty_knobs():
    rows = facts.make_rows("train", 300, num_facts=6, max_operand=6, ops="*-", max_offset=1)
    assert {r["op"] for r in rows} == {"*", "-"}
    for r in rows:
        assert r["num_facts"] == 6 and _PROMPT.fullmatch(r["prompt"]).group(1) == "6"
        assert sorted(int(_LINE.fullmatch(x).group(3)) for x in r["completion"].splitlines()) == [1, 2, 3, 4, 5, 6]
        assert 2 <= r["number"] <= 6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"facts": 3}, "unknown difficulty knob"),
        ({"num_facts": 0}, "num_facts"),
        ({"num_facts": True}, "num_facts"),
        ({"max_operand": 1}, "max_operand"),
        ({"num_facts": 5, "max_operand": 4}, "max_operand"),
        ({"ops": "+/"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"max_error_rate": 1.5}, "max_error_rate"),
        ({"max_error_rate": -0.1}, "max_error_rate"),
        ({"max_error_rate": "0.3"}, "max_error_rate"),
        ({"max_offset": 0}, "max_offset"),
    ],
)
def test_bad_difficulty_is_a_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        facts.make_dataset("train", 3, **kwargs)
    with pytest.raises(UserError, match=match):
        facts.make_preference_dataset("train", 3, **kwargs)


def test_bad_split_size_seed_and_temperature_are_user_errors():
    with pytest.raises(UserError, match="split"):
        facts.make_dataset("validation", 3)
    with pytest.raises(UserError, match="num_examples"):
        facts.make_dataset("train", -1)
    with pytest.raises(UserError, match="seed"):
        facts.make_dataset("train", 3, seed="0")
    with pytest.raises(UserError, match="num_pairs"):
        facts.make_preference_dataset("train", 2.5)
    for t in (-0.1, float("nan"), float("inf"), "0.1", True):
        with pytest.raises(UserError, match="bt_temperature"):
            facts.make_preference_dataset("train", 3, bt_temperature=t)


def test_corpus_covers_the_format():
    joined = "".join(facts.corpus())
    for word in ("Write", "List", "Give", "State", "Tell me", "Name", "Share", "true", "sums", "differences",
                 "products", "facts about", "*", "-", "+", "="):
        assert word in joined
    assert all(d in joined for d in "0123456789")


# ---------------------------------------------------------------------------------------------------------------
# preference pairs


def test_preference_columns_scores_and_truths():
    stats = {}
    ds = facts.make_preference_dataset("train", 300, seed=2, stats=stats)
    assert ds.column_names == ["prompt", "chosen", "rejected", "chosen_truths", "rejected_truths", "chosen_score",
                               "rejected_score", "op", "number", "num_facts"]
    assert stats["pairs"] == 300 and stats["drawn"] == 300 + stats["dropped_identical"]
    for row in ds:
        assert row["chosen"] != row["rejected"]
        assert isinstance(row["chosen"], str) and isinstance(row["prompt"], str)
        for side in ("chosen", "rejected"):
            k, topic, n = _PROMPT.fullmatch(row["prompt"]).groups()
            assert (int(k), _OP[topic], int(n)) == (row["num_facts"], row["op"], row["number"])
            assert row[f"{side}_truths"] == [s.truth for s in facts.parse_statements(row[side])]
            assert row[f"{side}_score"] == sum(row[f"{side}_truths"]) / row["num_facts"]
            assert row[f"{side}_score"] == facts.reward([row["prompt"]], [row[side]], op=[row["op"]],
                                                        number=[row["number"]], num_facts=[row["num_facts"]])[0]


def test_preference_determinism_prefix_and_disjoint_splits():
    a = facts.make_preference_rows("train", 200, seed=1)
    assert a == facts.make_preference_rows("train", 200, seed=1)
    assert facts.make_preference_rows("train", 50, seed=1) == a[:50]
    assert facts.make_preference_rows("train", 200, seed=2) != a
    test = facts.make_preference_rows("test", 500, seed=1)
    train = facts.make_preference_rows("train", 3000, seed=1)
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in train}
    assert not {r["prompt"] for r in test} & {r["prompt"] for r in facts.make_rows("train", 3000, seed=1)}
    assert {r["prompt"] for r in test} <= {r["prompt"] for r in facts.make_rows("test", 3000, seed=1)}


def test_identical_pairs_are_dropped_and_counted(monkeypatch):
    # one fact out of two operands and no errors: half of the pairs are identical
    stats = {}
    rows = facts.make_preference_rows("train", 400, seed=0, stats=stats, num_facts=1, max_operand=2, ops="+",
                                      max_error_rate=0)
    assert len(rows) == 400 and all(r["chosen"] != r["rejected"] for r in rows)
    assert stats["drawn"] == 400 + stats["dropped_identical"]
    assert 250 < stats["dropped_identical"] < 600
    assert stats["ties"] == 400  # both texts true: every kept pair is a tie
    # a process with only one possible response cannot make pairs: an error, not a hang
    monkeypatch.setattr(facts, "_draw_response", lambda rng, op, n, d: ("2+1=3\n", [True]))
    with pytest.raises(UserError, match="too few distinct responses"):
        facts.make_preference_rows("train", 3)


def test_bradley_terry_labels_follow_the_sigmoid():
    t = 0.1
    stats = {}
    rows = facts.make_preference_rows("train", 20_000, seed=0, bt_temperature=t, stats=stats)
    assert stats["dropped_identical"] < 10
    # group by |score gap|; the higher-scored response is chosen with probability sigmoid(gap / t)
    by_gap = {}
    for r in rows:
        gap = round(abs(r["chosen_score"] - r["rejected_score"]), 6)
        if gap > 0:
            by_gap.setdefault(gap, []).append(r["chosen_score"] > r["rejected_score"])
    assert set(by_gap) >= {0.25, 0.5, 0.75}
    for gap, wins in by_gap.items():
        expected = 1 / (1 + math.exp(-gap / t))
        se = math.sqrt(expected * (1 - expected) / len(wins))
        assert abs(sum(wins) / len(wins) - expected) < 4 * se + 1e-3, (gap, len(wins))
    assert sum(by_gap[0.25]) / len(by_gap[0.25]) < 0.97  # the label is noisy at one-fact gaps...
    large = [w for gap, ws in by_gap.items() if gap >= 0.5 for w in ws]
    assert sum(large) / len(large) > 0.99  # ... and almost never wrong at larger ones
    assert stats["ties"] > 0.15 * len(rows)  # ties are kept, labelled by a coin
    tie_first = [r["chosen"] < r["rejected"] for r in rows if r["chosen_score"] == r["rejected_score"]]
    assert 0.45 < sum(tie_first) / len(tie_first) < 0.55


def test_bradley_terry_temperature_zero_and_large():
    hard = facts.make_preference_rows("train", 2000, seed=0, bt_temperature=0)
    assert all(r["chosen_score"] >= r["rejected_score"] for r in hard)
    soft = facts.make_preference_rows("train", 4000, seed=0, bt_temperature=100.0)
    decided = [r["chosen_score"] > r["rejected_score"] for r in soft if r["chosen_score"] != r["rejected_score"]]
    assert 0.45 < sum(decided) / len(decided) < 0.55  # a huge temperature is a coin flip
    assert facts.bt_probability(1.0, 0.0, 0.1) == pytest.approx(1 / (1 + math.exp(-10)))
    assert facts.bt_probability(0.0, 1.0, 1e-9) == 0.0  # no overflow
    assert facts.bt_probability(0.5, 0.5) == 0.5
