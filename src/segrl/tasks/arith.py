"""``arith``: multi-step arithmetic word problems with a binary final-answer reward.

The credit-assignment testbed for SPO vs GRPO: a solution is a chain of short steps, one per line, and only the
final answer is rewarded, so a method that finds *which* step went wrong has something to find.

Format
------
prompt (one templated sentence per step, then a question, then a newline)::

    Ann has 12 apples. She buys 7 more. She gives away 5. She doubles them. How many apples now?

completion (the demonstration: one ``a<op>b=c`` line per step, then the answer line)::

    12+7=19
    19-5=14
    14*2=28
    Answer: 28

(each line ends with ``\\n``; the prompt ends with ``\\n`` too, so the completion starts on a fresh line).
A step sentence names its operator in words: ``buys/finds/gets X more`` (+), ``gives away/loses/sells X`` (-),
``doubles them`` (*2), ``triples them`` (*3), ``ends up with K times as many`` (*K). Names, pronouns and items
vary; the arithmetic does not depend on them. Values never go below 0 (a subtraction takes at most what there
is) or above ``max_value`` (a step that would is re-drawn).

Difficulty knobs (keyword arguments of :func:`make_dataset`; defaults in :data:`DEFAULT_DIFFICULTY`)
---------------------------------------------------------------------------------------------------
- ``num_steps`` (3): operations per problem, i.e. step lines per solution.
- ``max_operand`` (15): the starting amount and every added/subtracted amount are drawn from 1..max_operand.
- ``ops`` ("+-*"): which operators may appear (any non-empty subset of ``+``, ``-``, ``*``), drawn uniformly
  among those allowed at each step.
- ``max_factor`` (3): a multiplication multiplies by 2..max_factor.
- ``max_value`` (999): cap on every intermediate value.

Columns: ``prompt``, ``completion``, ``answer`` (int, the final value) and ``values`` (list of int: the starting
amount, then the correct value after each step, so that a per-step verifier can tell which line is wrong).

Splits: a problem belongs to ``test`` when a CRC32 of its arithmetic (start value, operators and operands, e.g.
``"12+7-5*2"``) falls in 1 of 10 buckets, to ``train`` otherwise. The splits are disjoint by construction for
every seed and size (the same arithmetic in other words lands in the same split, so "disjoint" holds for the
arithmetic too, not only for the text). Each split draws from its own random stream (``random.Random`` seeded
with the string ``"arith/<split>/<seed>"``), so the data are reproducible across machines and processes, and a
smaller ``num_examples`` gives a prefix of a larger one.

Reward
------
:func:`reward` gives 1.0 when the completion's **last** ``Answer:`` line parses to the correct integer, else 0.0
(see :func:`parse_answer` for exactly what parses). It never raises on a completion, whatever it holds.

Calibration
-----------
The defaults were tuned so that the default ``tiny-arith`` ``small`` preset (1.10M parameters, 600 SFT steps x 32
problems, lr 3e-3, about 3.5 minutes on 2 shared CPU cores with 1 torch thread) lands in the band that leaves
room for RL: 20-60% of held-out problems right greedily, over 10% sampled at T=1. Measured with
``python benchmarks/tiny_sft.py --task arith --size small --seeds 0 1 2`` (500 held-out problems, 2026-11-27):

=====================================  ===========  ================  ================  ============
difficulty (3 steps, + - *, x2/x3)     SFT budget   greedy (seeds)    sampled T=1       wall s/seed
=====================================  ===========  ================  ================  ============
max_operand=15 (**the default**)       600 x 32     45.0 28.8 33.2    26.2 19.6 22.4    204-212
max_operand=20                         600 x 32     22.2 18.6 17.6    13.4 11.4  8.4    195-205
max_operand=30 (the spec's setting)    600 x 32     10.4              7.0               222
max_operand=30                         600 x 64     29.0              13.8              452
max_operand=30, num_steps=2            600 x 32     11.5              8.3               154
=====================================  ===========  ================  ================  ============

Almost all errors are wrong sums and differences of two-digit numbers (x2/x3 lines are learned early), which is
why the operand range is the knob that moves accuracy most. Seeds differ a lot (the loss sits on a plateau for
the first 100-200 steps and leaves it at a seed-dependent time), so compare RL methods over several seeds.
The spec's 600 x 64 budget at operands up to 30 is in the band too, but takes 7.5 minutes here. (The rows other
than the default were measured while tuning, with a tokenizer trained on that row's data; the 600 x 64 row also
with a longer question sentence. The seed-0 ``max_operand=20`` model from a tokenizer trained on operands up to
30 scored 25.6 / 16.8: the tokenizer alone moves a seed by a few points.)
"""

from __future__ import annotations

import random
import re
import zlib
from decimal import Decimal, InvalidOperation
from typing import Any

from segrl.errors import UserError
from segrl.tasks import canonical_ops, check_call, completion_text, need_int, with_defaults

#: Default difficulty (see the module docstring for what each knob does).
DEFAULT_DIFFICULTY: dict[str, Any] = {
    "num_steps": 3,
    "max_operand": 15,
    "ops": "+-*",
    "max_factor": 3,
    "max_value": 999,
}

SPLITS = ("train", "test")
#: A problem is in the test split when crc32(arithmetic key) % TEST_BUCKETS == 0.
TEST_BUCKETS = 10

_NAMES = [
    ("Ann", "She"),
    ("Ben", "He"),
    ("Cara", "She"),
    ("Dan", "He"),
    ("Eve", "She"),
    ("Finn", "He"),
    ("Gina", "She"),
    ("Hugo", "He"),
    ("Ivy", "She"),
    ("Jack", "He"),
    ("Kim", "She"),
    ("Leo", "He"),
]
_ITEMS = ["apples", "books", "coins", "marbles", "pens", "stickers", "cards", "shells", "stamps", "cookies"]
_ADD = ["{P} buys {x} more.", "{P} finds {x} more.", "{P} gets {x} more."]
_SUB = ["{P} gives away {x}.", "{P} loses {x}.", "{P} sells {x}."]
_MUL_ANY = "{P} ends up with {x} times as many."
_MUL_NAMED = {2: "{P} doubles them.", 3: "{P} triples them."}


# ----------------------------------------------------------------------------------------------------------------
# data


def _check_difficulty(difficulty: dict[str, Any]) -> dict[str, Any]:
    d = with_defaults("arith", DEFAULT_DIFFICULTY, difficulty)
    for name, low in (("num_steps", 1), ("max_operand", 1), ("max_factor", 2), ("max_value", 1)):
        need_int("arith", d, name, low)
    d["ops"] = canonical_ops("arith", d["ops"])
    if d["max_operand"] > d["max_value"]:
        raise UserError(
            f"arith: max_operand ({d['max_operand']}) must not exceed max_value ({d['max_value']})"
        )
    return d


def _draw_chain(rng: random.Random, d: dict[str, Any]) -> tuple[int, list[tuple[str, int]]] | None:
    """One start value and ``num_steps`` (op, operand) pairs, or None when a step has no allowed operation."""
    cur = rng.randint(1, d["max_operand"])
    start = cur
    steps: list[tuple[str, int]] = []
    for _ in range(d["num_steps"]):
        choices = []
        if "+" in d["ops"] and cur + 1 <= d["max_value"]:
            choices.append("+")
        if "-" in d["ops"] and cur >= 1:
            choices.append("-")
        if "*" in d["ops"] and 1 <= cur and cur * 2 <= d["max_value"]:
            choices.append("*")
        if not choices:
            return None
        op = rng.choice(choices)
        if op == "+":
            x = rng.randint(1, min(d["max_operand"], d["max_value"] - cur))
            cur += x
        elif op == "-":
            x = rng.randint(1, min(d["max_operand"], cur))
            cur -= x
        else:
            x = rng.randint(2, min(d["max_factor"], d["max_value"] // cur))
            cur *= x
        steps.append((op, x))
    return start, steps


def _key(start: int, steps: list[tuple[str, int]]) -> str:
    return str(start) + "".join(f"{op}{x}" for op, x in steps)


def split_of(start: int, steps: list[tuple[str, int]]) -> str:
    """Which split a problem's arithmetic belongs to (``"train"`` or ``"test"``)."""
    return "test" if zlib.crc32(_key(start, steps).encode()) % TEST_BUCKETS == 0 else "train"


def _render(rng: random.Random, start: int, steps: list[tuple[str, int]]) -> dict[str, Any]:
    name, pron = rng.choice(_NAMES)
    items = rng.choice(_ITEMS)
    sentences = [f"{name} has {start} {items}."]
    lines = []
    values = [start]
    cur = start
    for op, x in steps:
        if op == "+":
            sentences.append(rng.choice(_ADD).format(P=pron, x=x))
            new = cur + x
        elif op == "-":
            sentences.append(rng.choice(_SUB).format(P=pron, x=x))
            new = cur - x
        else:
            options = [_MUL_ANY] + ([_MUL_NAMED[x]] if x in _MUL_NAMED else [])
            sentences.append(rng.choice(options).format(P=pron, x=x))
            new = cur * x
        lines.append(f"{cur}{op}{x}={new}\n")
        values.append(new)
        cur = new
    sentences.append(f"How many {items} now?")
    return {
        "prompt": " ".join(sentences) + "\n",
        "completion": "".join(lines) + f"Answer: {cur}\n",
        "answer": cur,
        "values": values,
    }


def make_rows(split: str, num_examples: int, seed: int = 0, **difficulty: Any) -> list[dict[str, Any]]:
    """The rows of :func:`make_dataset` as a list of dicts (no ``datasets`` overhead)."""
    check_call("arith", SPLITS, split, num_examples, seed)
    d = _check_difficulty(difficulty)
    rng = random.Random(f"arith/{split}/{seed}")
    rows: list[dict[str, Any]] = []
    attempts, max_attempts = 0, 1000 + 200 * num_examples
    while len(rows) < num_examples:
        attempts += 1
        if attempts > max_attempts:
            raise UserError(
                f"arith: could not draw {num_examples} {split} problems with difficulty {d} "
                f"(got {len(rows)} in {max_attempts} tries); the setting has too few distinct problems "
                "(raise max_operand or num_steps, or allow more ops)"
            )
        chain = _draw_chain(rng, d)
        if chain is None or split_of(*chain) != split:
            continue
        rows.append(_render(rng, *chain))
    return rows


def make_dataset(split: str, num_examples: int, seed: int = 0, **difficulty: Any):
    """A ``datasets.Dataset`` of ``num_examples`` problems from ``split`` ("train" or "test").

    Columns ``prompt``, ``completion``, ``answer``, ``values``; knobs and defaults in the module docstring.
    Deterministic in its arguments; train and test are disjoint.
    """
    from datasets import Dataset, Features, Sequence, Value

    rows = make_rows(split, num_examples, seed, **difficulty)
    features = Features(
        {
            "prompt": Value("string"),
            "completion": Value("string"),
            "answer": Value("int64"),
            "values": Sequence(Value("int64")),
        }
    )
    return Dataset.from_list(rows, features=features)


def corpus(seed: int = 0) -> list[str]:
    """Texts to train the ``tiny-arith`` tokenizer on: 2,000 training problems (prompt + completion) covering
    every template word, plus one line with every character the format uses."""
    # explicit knobs (not DEFAULT_DIFFICULTY), so that retuning the defaults does not change the tokenizer
    rows = make_rows("train", 2000, seed, num_steps=3, max_operand=15, ops="+-*", max_factor=5, max_value=999)
    texts = [r["prompt"] + r["completion"] for r in rows]
    texts.append("0123456789 +-*=:.?\nAnswer: ")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# reward

# The last "answer" (any case) followed by optional spaces and a colon; the number is parsed after it.
_ANSWER = re.compile(r"answer[ \t]*:", re.IGNORECASE)
_NUMBER = re.compile(r"[ \t]*([+-]?)[ \t]*(\d+(?:\.\d+)?)")


def parse_answer(text: Any) -> int | None:
    """The integer on the last ``Answer:`` line of ``text``, or None.

    Rules (worked examples in ``tests/test_arith.py``):

    - the marker is the **last** occurrence of ``answer`` followed by optional spaces/tabs and ``:``, in any case
      and anywhere on a line (``"Answer: 28"``, ``"answer:28"``, ``"The answer: 28"`` all give 28); an earlier
      answer line is ignored even when the last one does not parse;
    - after it: optional spaces/tabs, an optional sign (``+`` or ``-``), then digits on the same line; text after
      the number is ignored (``"Answer: 28 apples"``, ``"Answer: 28."`` give 28);
    - a decimal is accepted only when it is a whole number (``"28.0"`` gives 28, ``"28.5"`` gives None);
    - anything else (no marker, no number right after it, the number on the next line, a non-string) gives None.
    """
    if not isinstance(text, str):
        return None
    last = None
    for last in _ANSWER.finditer(text):
        pass
    if last is None:
        return None
    m = _NUMBER.match(text, last.end())
    if m is None:
        return None
    try:
        value = Decimal(m.group(2))
    except InvalidOperation:  # pragma: no cover - the regex only lets digits through
        return None
    if value != value.to_integral_value():
        return None
    n = int(value)
    return -n if m.group(1) == "-" else n


def _as_int(value: Any, row: int) -> int:
    if isinstance(value, bool):
        raise UserError(f"arith reward: row {row}: column 'answer' must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise UserError(f"arith reward: row {row}: column 'answer' must be an integer, got {value!r}")


def reward(prompts: list[Any], completions: list[Any], answer: list[Any] | None = None, **kwargs: Any) -> list[float]:
    """1.0 for each completion whose last ``Answer:`` line parses (see :func:`parse_answer`) to the correct
    integer, else 0.0. TRL's reward-function signature; ``answer`` is the dataset column of the same name.

    Completions may be strings or conversational message lists (the assistant messages' text is used). A
    missing or non-integer ``answer`` column is a data error and raises :class:`UserError`; a completion never
    makes it raise.
    """
    if answer is None:
        raise UserError("arith reward: the dataset has no 'answer' column (make it with segrl.tasks.arith)")
    if len(answer) != len(completions):
        raise UserError(
            f"arith reward: got {len(completions)} completions but {len(answer)} values in column 'answer'"
        )
    out = []
    for i, (completion, truth) in enumerate(zip(completions, answer)):
        target = _as_int(truth, i)
        got = parse_answer(completion_text(completion))
        out.append(1.0 if got is not None and got == target else 0.0)
    return out


__all__ = [
    "DEFAULT_DIFFICULTY",
    "corpus",
    "make_dataset",
    "make_rows",
    "parse_answer",
    "reward",
    "split_of",
]
