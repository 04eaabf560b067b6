"""The arith task: deterministic, disjoint splits; correct demonstrations; a robust final-answer reward."""

import operator
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from segrl.errors import UserError
from segrl.tasks import arith, get_task, task_names


# ---------------------------------------------------------------------------------------------------------------
# registry


def test_get_task_returns_the_module():
    assert get_task("arith") is arith
    assert "arith" in task_names()


def test_unknown_task_lists_the_known_ones():
    with pytest.raises(UserError, match="arith"):
        get_task("arithmetic")


# ---------------------------------------------------------------------------------------------------------------
# data


def test_same_seed_same_data_and_prefix_property():
    a = arith.make_dataset("train", 40, seed=3).to_list()
    b = arith.make_dataset("train", 40, seed=3).to_list()
    assert a == b
    assert arith.make_dataset("train", 15, seed=3).to_list() == a[:15]
    assert arith.make_dataset("train", 40, seed=4).to_list() != a


def test_columns_and_types():
    ds = arith.make_dataset("test", 5)
    assert ds.column_names == ["prompt", "completion", "answer", "values"]
    row = ds[0]
    assert isinstance(row["prompt"], str) and row["prompt"].endswith("?\n")
    assert isinstance(row["completion"], str) and row["completion"].endswith("\n")
    assert isinstance(row["answer"], int)
    assert row["values"][-1] == row["answer"]


def test_splits_are_disjoint():
    for seed in (0, 1):
        train = arith.make_rows("train", 3000, seed)
        test = arith.make_rows("test", 1000, seed)
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}
        # disjoint in the arithmetic too (the split is a function of the arithmetic, not the wording)
        assert not {r["completion"] for r in train} & {r["completion"] for r in test}
    # and across seeds: a test problem of seed 0 is never a train problem of seed 1
    assert not {r["prompt"] for r in arith.make_rows("test", 1000, 0)} & {
        r["prompt"] for r in arith.make_rows("train", 3000, 1)
    }


def test_every_demonstration_earns_reward_one():
    ds = arith.make_dataset("train", 300, seed=7)
    assert arith.reward(ds["prompt"], ds["completion"], answer=ds["answer"]) == [1.0] * 300


# Independent reading of the prompt's words (not the generator's templates table).
_WORDS = [
    (re.compile(r"(?:buys|finds|gets) (\d+) more"), operator.add),
    (re.compile(r"(?:gives away|loses|sells) (\d+)"), operator.sub),
    (re.compile(r"ends up with (\d+) times as many"), operator.mul),
]
_STEP_LINE = re.compile(r"(\d+)([+*-])(\d+)=(\d+)")
_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


def _solve_from_words(prompt: str) -> int:
    sentences = prompt.strip().split(". ")
    value = int(re.search(r"has (\d+) ", sentences[0]).group(1))
    for s in sentences[1:]:
        if "doubles them" in s:
            value *= 2
            continue
        if "triples them" in s:
            value *= 3
            continue
        for pattern, fn in _WORDS:
            m = pattern.search(s)
            if m:
                value = fn(value, int(m.group(1)))
                break
        else:
            assert s.startswith("How many"), s
    return value


def test_answers_are_correct_by_independent_computation():
    for split in ("train", "test"):
        for row in arith.make_rows(split, 300, seed=11, max_factor=5):
            assert _solve_from_words(row["prompt"]) == row["answer"]
            lines = row["completion"].splitlines()
            prev = row["values"][0]
            for line in lines[:-1]:
                a, op, b, c = _STEP_LINE.fullmatch(line).groups()
                assert int(a) == prev  # each step continues from the previous result
                assert _OPS[op](int(a), int(b)) == int(c)
                assert int(c) >= 0
                prev = int(c)
            assert lines[-1] == f"Answer: {row['answer']}" and prev == row["answer"]


def test_difficulty_knobs():
    def n_lines(**kw):
        return {len(r["completion"].splitlines()) for r in arith.make_rows("train", 50, **kw)}

    assert n_lines() == {4}  # 3 steps + the answer line (the default)
    assert n_lines(num_steps=1) == {2}
    assert n_lines(num_steps=5) == {6}
    rows = arith.make_rows("train", 200, ops="+", max_operand=5)
    for r in rows:
        for line in r["completion"].splitlines()[:-1]:
            a, op, b, c = _STEP_LINE.fullmatch(line).groups()
            assert op == "+" and 1 <= int(b) <= 5
    big = arith.make_rows("train", 200, max_value=60, max_operand=20)
    assert max(max(r["values"]) for r in big) <= 60
    ops_seen = {m.group(2) for r in arith.make_rows("train", 300) for m in _STEP_LINE.finditer(r["completion"])}
    assert ops_seen == {"+", "-", "*"}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"steps": 3}, "unknown difficulty knob"),
        ({"num_steps": 0}, "num_steps"),
        ({"ops": "+/"}, "ops"),
        ({"ops": ""}, "ops"),
        ({"max_factor": 1}, "max_factor"),
        ({"max_operand": 50, "max_value": 20}, "max_operand"),
    ],
)
def test_bad_difficulty_is_a_user_error(kwargs, match):
    with pytest.raises(UserError, match=match):
        arith.make_dataset("train", 3, **kwargs)


def test_bad_split_and_size_are_user_errors():
    with pytest.raises(UserError, match="split"):
        arith.make_dataset("validation", 3)
    with pytest.raises(UserError, match="num_examples"):
        arith.make_dataset("train", -1)


def test_too_few_distinct_problems_is_a_user_error_not_a_hang():
    # 1 step, operand 1, only "+": the single problem "1+1" lives in exactly one split
    only = arith.split_of(1, [("+", 1)])
    other = "train" if only == "test" else "test"
    with pytest.raises(UserError, match="too few distinct problems"):
        arith.make_rows(other, 1, num_steps=1, max_operand=1, ops="+")


def test_corpus_covers_the_format():
    texts = arith.corpus()
    joined = "".join(texts)
    for word in ("Answer:", "doubles", "triples", "times as many", "gives away", "How many", "*", "-", "+"):
        assert word in joined
    assert all(d in joined for d in "0123456789")


# ---------------------------------------------------------------------------------------------------------------
# reward: worked examples


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("12+7=19\n19-5=14\n14*2=28\nAnswer: 28\n", 1.0),
        ("Answer: 28", 1.0),
        ("Answer: 28.", 1.0),  # a trailing period
        ("Answer:28", 1.0),
        ("answer:28", 1.0),  # decided: the marker is case-insensitive
        ("ANSWER : 28", 1.0),  # spaces before the colon
        ("Answer:   +28  ", 1.0),  # a leading "+", surrounding whitespace
        ("Answer: 28 apples", 1.0),  # text after the number
        ("Answer: 28.0", 1.0),  # a whole-number decimal
        ("The answer: 28", 1.0),  # the marker may follow text on its line
        ("Answer: 27", 0.0),
        ("Answer: 280", 0.0),
        ("Answer: 28.5", 0.0),
        ("Answer: -28", 0.0),
        ("Answer: 28\nAnswer: 27\n", 0.0),  # two answer lines: the last one counts
        ("Answer: 27\nAnswer: 28\n", 1.0),
        ("Answer: 28\nAnswer: none\n", 0.0),  # the last one counts even when it does not parse
        ("12+7=19\n19-5=14\n14*2=28\n", 0.0),  # no answer line
        ("Answer:\n28", 0.0),  # the number must be on the answer line
        ("Answer: twenty-eight", 0.0),
        ("", 0.0),
        ("\x00\x01 garbage ::: answer answer", 0.0),
        ("28", 0.0),
    ],
)
def test_reward_worked_examples(completion, expected):
    assert arith.reward(["p"], [completion], answer=[28]) == [expected]


def test_parse_answer_values():
    assert arith.parse_answer("x\nAnswer: 28\n") == 28
    assert arith.parse_answer("Answer: -5") == -5
    assert arith.parse_answer("Answer: +5.") == 5
    assert arith.parse_answer("Answer: 5.5") is None
    assert arith.parse_answer("no marker") is None
    assert arith.parse_answer(None) is None


def test_reward_conversational_and_trl_keywords():
    conv = [[{"role": "assistant", "content": "3+4=7\nAnswer: 7\n"}], [{"role": "assistant", "content": "Answer: 8"}]]
    blocks = [[{"role": "assistant", "content": [{"type": "text", "text": "Answer: 7"}]}]]
    prompts = [[{"role": "user", "content": "q"}]] * 2
    got = arith.reward(prompts, conv, answer=[7, 7], completion_ids=[[1], [2]], trainer_state=None, values=[[], []])
    assert got == [1.0, 0.0]
    assert arith.reward(["q"], blocks, answer=[7]) == [1.0]
    assert arith.reward(["q", "q"], ["Answer: 7", "Answer: 7"], answer=["7", 7.0]) == [1.0, 1.0]


def test_reward_never_raises_on_garbage_completions():
    garbage = [None, 123, b"Answer: 28", {"role": "assistant"}, [{"role": "user", "content": "Answer: 28"}],
               [None, 3], [{"content": None}], float("nan"), ["Answer: 28"]]
    assert arith.reward(["p"] * len(garbage), garbage, answer=[28] * len(garbage)) == [0.0] * len(garbage)


def test_reward_data_errors_are_user_errors():
    with pytest.raises(UserError, match="answer"):
        arith.reward(["p"], ["Answer: 1"])
    with pytest.raises(UserError, match="row 0"):
        arith.reward(["p"], ["Answer: 1"], answer=["one"])
    with pytest.raises(UserError, match="completions"):
        arith.reward(["p"], ["Answer: 1"], answer=[1, 2])
