"""``facts``: write K short arithmetic facts about a number; each fact is true or false, and the oracle knows which.

The testbed for segment-level reward models and DenseDPO (``shared/specs/segment_rm.md``, ``densedpo.md``): a
response is a list of independent one-line statements, the oracle reward is the share of them that are right, so
the quality of a response is a sum over its lines and a method that credits the *right lines* has something to
find. The oracle plays the judge: it scores any text, and labels preference pairs with Bradley-Terry noise.

Format
------
prompt (one templated sentence, then a newline)::

    Write 4 facts about sums with 7.

completion (one ``a<op>b=c`` statement per line, the topic number first, then the model stops; no answer line)::

    7+5=12
    7+9=16
    7+2=10
    7+11=18

(each line ends with ``\\n``). The topics are ``sums`` (``+``), ``differences`` (``-``) and ``products`` (``*``) with a
number n; the wording varies over :data:`TEMPLATES` (``Write/List/Give/State/Tell me/Name/Share/Write ... true``).
In the demonstrations the second operands are K distinct numbers from 1..max_operand in random order; a difference
may be negative (``3-7=-4``).

Demonstrations hold errors on purpose: each demonstration draws an error rate q uniformly from
[0, ``max_error_rate``], and each of its statements is false with probability q, its value off by 1..``max_offset``
either way (a false value is never negative when the true one is not, so it looks plausible). So the SFT model
learns the format and mostly the arithmetic, but also a habit of writing plausible wrong values that RL can fix.
The ``truths`` column says which lines of the demonstration are true.

Difficulty knobs (keyword arguments of :func:`make_dataset`; defaults in :data:`DEFAULT_DIFFICULTY`)
---------------------------------------------------------------------------------------------------
- ``num_facts`` (4): K, the facts asked for (and the lines of a demonstration).
- ``max_operand`` (12): the topic number n is drawn from 2..max_operand, the second operands from 1..max_operand
  (must be at least ``num_facts``, so that K distinct ones exist).
- ``ops`` ("+-*"): which topics may appear (any non-empty subset of ``+``, ``-``, ``*``), drawn uniformly.
- ``max_error_rate`` (0.4): the demonstrations' error rate q is uniform in [0, max_error_rate] (0: all true), so
  80% of the demonstrations' statements are true on average, and 46% of the demonstrations are all true.
- ``max_offset`` (3): a false value is the true value plus or minus 1..max_offset.

Columns: ``prompt``, ``completion``, ``op`` (str: ``+``, ``-`` or ``*``), ``number`` (int, the topic number n),
``num_facts`` (int, K) and ``truths`` (list of bool, one per line of the demonstration). ``op``, ``number`` and
``num_facts`` are what :func:`reward` needs.

Splits: the prompt decides the split. Each topic (op, n, K) has exactly one *test* wording: the template whose index
is a CRC32 of ``"<op>/<n>/<K>"`` modulo the number of templates (8); its other seven wordings are *train*. So the
prompt texts of the two splits are disjoint for every seed and size, and both splits cover every topic (the test
split holds out wordings, not arithmetic: a fact is a fact in both splits, and what this task measures is whether a
policy writes true statements, not whether it generalises to new arithmetic). Each split draws from its own random
stream (``random.Random`` seeded with ``"facts/<split>/<seed>"``; the preference pairs with ``"facts/pref/<split>/
<seed>"``), so the data are reproducible across machines and processes, and a smaller size gives a prefix of a
larger one.

Statements
----------
:func:`parse_statements` cuts a text into lines at ``\\n`` (only there) and returns one :class:`Statement` per line,
blank lines included, so the statements tile the text: ``start``/``end`` are character offsets (Python string
indices, i.e. code points; ``end`` exclusive, after the line's ``\\n`` if it has one) and ``text == source[start:end]``.
A line is **well-formed** when, after dropping one trailing ``\\r``, it is ``a<op>b=c`` where a, b and c are
integers of 1 to 100 ASCII digits, each with an optional sign (``+`` or ``-``) right before its digits, ``<op>`` is one
of the ASCII characters ``+``, ``-``, ``*``, and spaces or tabs may stand around the operator, the ``=`` and the ends
(``7 + 5 = 12``, ``7+-2=5``, ``-3*4=-12``, ``7+05=12`` are well-formed; ``7x5=35``, ``7×5=35``, ``７+5=12``,
``7+5=12.``, ``7+5``, ``7+5=12=12`` are not). It is **true** when it is well-formed and a<op>b equals c exactly
(integer arithmetic, no ``eval``). Parsing never raises; a non-string gives no statements.

Reward
------
:func:`reward` scores a completion against its prompt's ``op``, ``number`` and ``num_facts`` (K) columns:

    reward = (number of *credited* statements among the first K non-blank lines) / K, in [0, 1]

A statement is credited when it is well-formed, true, on-topic (its operator is the prompt's op and its first
operand a is the prompt's number n; any second operand b counts, ``7+0=7`` included) and not a repeat of an already
credited statement (same a, op and b after parsing, so ``7+5=12`` and ``7 + 05 = 12`` are one fact: a repeated
statement counts once). Blank (whitespace-only) lines take no slot; lines after the K-th non-blank line are ignored:
they neither earn nor cost anything, so writing more than K lines never scores above 1 and the oracle is a sum of
per-line credits of 1/K (:func:`statement_credits` gives them, line by line, aligned with :func:`parse_statements`),
which is what an evaluation of segment-level credit needs. Counting only the first K lines (rather than all lines,
capped at K) also keeps a policy from gaming the reward by writing extra lines. Garbage (no well-formed line, a
non-string, an empty completion) scores 0.0; a completion never makes it raise.

Preference pairs
----------------
:func:`make_preference_dataset` draws, per prompt, two responses independently from the demonstrations' process
(each with its own error rate q), scores both with the oracle, and labels the pair with Bradley-Terry noise:
P(first preferred) = sigmoid((score_1 - score_2) / ``bt_temperature``). The default temperature 0.1 makes a
one-fact difference (0.25 at K=4) a 92.4% preference, two facts 99.3%, and a tie a coin flip (ties are kept; their
scores are in the ``*_score`` columns for whoever wants to drop them). ``bt_temperature=0`` gives noise-free labels
(ties still by coin). At the defaults about a third of the pairs are ties. A pair whose two texts are identical is
dropped and replaced by the next draw (rare: under 1 in 10,000 at the defaults, none in 20,000 pairs; the ``stats``
argument reports how many).

Calibration
-----------
The demonstrations' error rate was tuned so that the default ``tiny-facts`` ``small`` preset (1.09M parameters, vocab
322, 600 SFT steps x 32 prompts, lr 3e-3, the :mod:`segrl.tiny` defaults) writes well-formed responses with a mix of
right and wrong statements, leaving RL room: a sampled (T=1) oracle reward of 0.4-0.7. Measured with
``python benchmarks/tiny_sft.py --task facts --size small --seeds 0`` (500 held-out prompts, 1 torch thread, this
project's 2-core CPU machine, 2026-11-27):

========================================  ==========  ======  ===========  ============  =========
difficulty (K=4, operands up to 12)       SFT budget  greedy  sampled T=1  held-out NLL  wall s
========================================  ==========  ======  ===========  ============  =========
max_error_rate=0.4 (**the default**)      600 x 32    0.573   0.561        0.502         139
max_error_rate=0.6                        600 x 32    0.579   0.406        0.548         148
========================================  ==========  ======  ===========  ============  =========

What the default model writes (seed 0, the same 500 prompts, parsed with :func:`parse_statements`): sampled at T=1,
99.6% of lines are well-formed, 98.9% on-topic, 60% true, 10% repeat an earlier second operand, and all but one
response have exactly 4 lines; the errors are near misses (``10*10=103``, ``8*8=63``), the same kind as the
demonstrations'. Greedy decoding is nearly always right (98% true) but repeats a fact in 41% of its lines (the
mode of the second operand is the same at every line, ``11-10=1`` four times), so its reward is held down by
repeats, not by errors. So RL has two things to fix: wrong values (mostly) and repeated facts. At
``max_error_rate=0.6`` the sampled lines were 43% true. One seed only (time); :mod:`segrl.tasks.arith` saw seeds
differ by 10-15 points, so expect a similar spread here.
"""

from __future__ import annotations

import math
import random
import re
import zlib
from dataclasses import dataclass
from typing import Any

from segrl.errors import UserError
from segrl.tasks import canonical_ops, check_call, completion_text, need_int, with_defaults

#: Default difficulty (see the module docstring for what each knob does).
DEFAULT_DIFFICULTY: dict[str, Any] = {
    "num_facts": 4,
    "max_operand": 12,
    "ops": "+-*",
    "max_error_rate": 0.4,
    "max_offset": 3,
}

SPLITS = ("train", "test")
#: Default Bradley-Terry temperature of :func:`make_preference_dataset` (in units of the oracle score, 0..1).
DEFAULT_BT_TEMPERATURE = 0.1
#: A number in a statement has at most this many digits (a longer one makes the line malformed).
MAX_DIGITS = 100

#: Prompt wordings; a topic's test wording is TEMPLATES[crc32("<op>/<n>/<K>") % len(TEMPLATES)].
TEMPLATES = (
    "Write {k} facts about {topic} with {n}.",
    "List {k} facts about {topic} with {n}.",
    "Give {k} facts about {topic} with {n}.",
    "State {k} facts about {topic} with {n}.",
    "Tell me {k} facts about {topic} with {n}.",
    "Name {k} facts about {topic} with {n}.",
    "Share {k} facts about {topic} with {n}.",
    "Write {k} true facts about {topic} with {n}.",
)
#: Topic word of each operator.
TOPICS = {"+": "sums", "-": "differences", "*": "products"}


# ----------------------------------------------------------------------------------------------------------------
# statements


@dataclass(frozen=True)
class Statement:
    """One line of a response (see the module docstring for the exact rules).

    ``start``/``end``: character offsets of the line in the text (``end`` exclusive, after its ``\\n`` if any);
    ``text``: the line as it stands in the text, newline included; ``well_formed``: it parses as ``a<op>b=c``;
    ``truth``: well-formed and arithmetically right; ``a``, ``op``, ``b``, ``c``: the parsed parts (None when not
    well-formed).
    """

    start: int
    end: int
    text: str
    well_formed: bool
    truth: bool
    a: int | None = None
    op: str | None = None
    b: int | None = None
    c: int | None = None

    @property
    def blank(self) -> bool:
        """The line holds only whitespace (it takes no slot in the reward)."""
        return not self.text.strip()


_INT = rf"[+-]?[0-9]{{1,{MAX_DIGITS}}}"
_STATEMENT = re.compile(rf"[ \t]*({_INT})[ \t]*([-+*])[ \t]*({_INT})[ \t]*=[ \t]*({_INT})[ \t]*")


def _apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    return a * b


def _parse_line(text: str, start: int, end: int) -> Statement:
    body = text[start:end]
    if body.endswith("\n"):
        body = body[:-1]
    if body.endswith("\r"):
        body = body[:-1]
    m = _STATEMENT.fullmatch(body)
    if m is None:
        return Statement(start, end, text[start:end], False, False)
    a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
    return Statement(start, end, text[start:end], True, _apply(a, op, b) == c, a, op, b, c)


def parse_statements(text: Any) -> list[Statement]:
    """One :class:`Statement` per line of ``text`` (lines end at ``\\n``; a last line without one counts when it is
    not empty). The statements tile the text. Never raises; a non-string (or ``""``) gives ``[]``."""
    if not isinstance(text, str):
        return []
    out = []
    pos, n = 0, len(text)
    while pos < n:
        nl = text.find("\n", pos)
        end = n if nl < 0 else nl + 1
        out.append(_parse_line(text, pos, end))
        pos = end
    return out


def statement_credits(text: Any, op: str, number: int, num_facts: int) -> list[float]:
    """The oracle's credit of each statement of ``parse_statements(text)`` (same order and length): ``1/num_facts``
    for a credited statement (well-formed, true, on-topic, not a repeat, among the first ``num_facts`` non-blank
    lines), else 0.0. Their sum is :func:`score` (up to float rounding)."""
    statements = parse_statements(text)
    return [1.0 / num_facts if ok else 0.0 for ok in _credited(statements, op, number, num_facts)]


def _credited(statements: list[Statement], op: str, number: int, num_facts: int) -> list[bool]:
    seen: set[tuple[int, str, int]] = set()
    out = []
    slots = 0
    for s in statements:
        if s.blank:
            out.append(False)
            continue
        slots += 1
        ok = slots <= num_facts and s.truth and s.op == op and s.a == number and (s.a, s.op, s.b) not in seen
        if ok:
            seen.add((s.a, s.op, s.b))  # type: ignore[arg-type]
        out.append(ok)
    return out


def score(text: Any, op: str, number: int, num_facts: int) -> float:
    """The oracle reward of one response text (see the module docstring): credited statements / ``num_facts``."""
    return sum(_credited(parse_statements(text), op, number, num_facts)) / num_facts


# ----------------------------------------------------------------------------------------------------------------
# data


def _check_difficulty(difficulty: dict[str, Any]) -> dict[str, Any]:
    d = with_defaults("facts", DEFAULT_DIFFICULTY, difficulty)
    for name, low in (("num_facts", 1), ("max_operand", 2), ("max_offset", 1)):
        need_int("facts", d, name, low)
    d["ops"] = canonical_ops("facts", d["ops"])
    rate = d["max_error_rate"]
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise UserError(f"facts: difficulty knob max_error_rate must be a number in [0, 1], got {rate!r}")
    d["max_error_rate"] = float(rate)
    if d["max_operand"] < d["num_facts"]:
        raise UserError(
            f"facts: max_operand ({d['max_operand']}) must be at least num_facts ({d['num_facts']}), so that a "
            "response can hold that many distinct facts"
        )
    return d



def held_out_template(op: str, number: int, num_facts: int) -> int:
    """Index in :data:`TEMPLATES` of the one wording of topic (op, number, num_facts) that belongs to ``test``."""
    return zlib.crc32(f"{op}/{number}/{num_facts}".encode()) % len(TEMPLATES)


def render_prompt(op: str, number: int, num_facts: int, template: int) -> str:
    """The prompt text of a topic in wording ``template`` (an index in :data:`TEMPLATES`), newline included."""
    return TEMPLATES[template].format(k=num_facts, topic=TOPICS[op], n=number) + "\n"


def split_of(op: str, number: int, num_facts: int, template: int) -> str:
    """Which split a prompt belongs to (``"train"`` or ``"test"``)."""
    return "test" if template == held_out_template(op, number, num_facts) else "train"


def _draw_prompt(rng: random.Random, split: str, d: dict[str, Any]) -> dict[str, Any]:
    op = rng.choice(d["ops"])
    n = rng.randint(2, d["max_operand"])
    k = d["num_facts"]
    held_out = held_out_template(op, n, k)
    if split == "test":
        template = held_out
    else:
        template = rng.choice([i for i in range(len(TEMPLATES)) if i != held_out])
    return {"prompt": render_prompt(op, n, k, template), "op": op, "number": n, "num_facts": k}


def _draw_response(rng: random.Random, op: str, n: int, d: dict[str, Any]) -> tuple[str, list[bool]]:
    """K statements about (op, n) with distinct second operands, each false with probability q ~ U[0, max_rate]."""
    q = rng.uniform(0.0, d["max_error_rate"])
    lines, truths = [], []
    for b in rng.sample(range(1, d["max_operand"] + 1), d["num_facts"]):
        c = _apply(n, op, b)
        wrong = rng.random() < q
        if wrong:
            delta = rng.randint(1, d["max_offset"]) * rng.choice((-1, 1))
            if c >= 0 and c + delta < 0:
                delta = -delta
            c += delta
        lines.append(f"{n}{op}{b}={c}\n")
        truths.append(not wrong)
    return "".join(lines), truths


def make_rows(split: str, num_examples: int, seed: int = 0, **difficulty: Any) -> list[dict[str, Any]]:
    """The rows of :func:`make_dataset` as a list of dicts (no ``datasets`` overhead)."""
    check_call("facts", SPLITS, split, num_examples, seed)
    d = _check_difficulty(difficulty)
    rng = random.Random(f"facts/{split}/{seed}")
    rows = []
    for _ in range(num_examples):
        row = _draw_prompt(rng, split, d)
        completion, truths = _draw_response(rng, row["op"], row["number"], d)
        rows.append({"prompt": row["prompt"], "completion": completion, "op": row["op"], "number": row["number"],
                     "num_facts": row["num_facts"], "truths": truths})
    return rows


def make_dataset(split: str, num_examples: int, seed: int = 0, **difficulty: Any):
    """A ``datasets.Dataset`` of ``num_examples`` prompts with demonstrations from ``split`` ("train" or "test").

    Columns ``prompt``, ``completion``, ``op``, ``number``, ``num_facts``, ``truths``; knobs and defaults in the
    module docstring. Deterministic in its arguments; the prompt texts of train and test are disjoint.
    """
    from datasets import Dataset, Features, Sequence, Value

    rows = make_rows(split, num_examples, seed, **difficulty)
    features = Features(
        {
            "prompt": Value("string"),
            "completion": Value("string"),
            "op": Value("string"),
            "number": Value("int64"),
            "num_facts": Value("int64"),
            "truths": Sequence(Value("bool")),
        }
    )
    return Dataset.from_list(rows, features=features)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def bt_probability(score_a: float, score_b: float, bt_temperature: float = DEFAULT_BT_TEMPERATURE) -> float:
    """P(a preferred over b) = sigmoid((score_a - score_b) / bt_temperature); with temperature 0: 1, 0 or 0.5."""
    diff = score_a - score_b
    if bt_temperature == 0:
        return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    return _sigmoid(diff / bt_temperature)


def make_preference_rows(
    split: str,
    num_pairs: int,
    seed: int = 0,
    bt_temperature: float = DEFAULT_BT_TEMPERATURE,
    stats: dict[str, int] | None = None,
    **difficulty: Any,
) -> list[dict[str, Any]]:
    """The rows of :func:`make_preference_dataset` as a list of dicts."""
    check_call("facts", SPLITS, split, num_pairs, seed, "num_pairs")
    if (
        isinstance(bt_temperature, bool)
        or not isinstance(bt_temperature, (int, float))
        or not math.isfinite(bt_temperature)
        or bt_temperature < 0
    ):
        raise UserError(f"facts: bt_temperature must be a finite number >= 0, got {bt_temperature!r}")
    d = _check_difficulty(difficulty)
    rng = random.Random(f"facts/pref/{split}/{seed}")
    rows: list[dict[str, Any]] = []
    drawn = dropped = ties = 0
    max_attempts = 1000 + 100 * num_pairs
    while len(rows) < num_pairs:
        if drawn >= max_attempts:
            raise UserError(
                f"facts: could not draw {num_pairs} {split} preference pairs with difficulty {d} (got {len(rows)} "
                f"in {max_attempts} tries, {dropped} of them identical pairs); the setting has too few distinct "
                "responses (raise max_operand or max_error_rate)"
            )
        drawn += 1
        p = _draw_prompt(rng, split, d)
        text_1, truths_1 = _draw_response(rng, p["op"], p["number"], d)
        text_2, truths_2 = _draw_response(rng, p["op"], p["number"], d)
        u = rng.random()  # drawn for every pair, so that a smaller num_pairs gives a prefix
        if text_1 == text_2:
            dropped += 1
            continue
        s1 = score(text_1, p["op"], p["number"], p["num_facts"])
        s2 = score(text_2, p["op"], p["number"], p["num_facts"])
        ties += s1 == s2
        first = u < bt_probability(s1, s2, bt_temperature)
        (cw, tw, sw), (cl, tl, sl) = ((text_1, truths_1, s1), (text_2, truths_2, s2))[:: 1 if first else -1]
        rows.append(
            {
                "prompt": p["prompt"],
                "chosen": cw,
                "rejected": cl,
                "chosen_truths": tw,
                "rejected_truths": tl,
                "chosen_score": sw,
                "rejected_score": sl,
                "op": p["op"],
                "number": p["number"],
                "num_facts": p["num_facts"],
            }
        )
    if stats is not None:
        stats.update({"pairs": len(rows), "drawn": drawn, "dropped_identical": dropped, "ties": ties})
    return rows


def make_preference_dataset(
    split: str,
    num_pairs: int,
    seed: int = 0,
    bt_temperature: float = DEFAULT_BT_TEMPERATURE,
    stats: dict[str, int] | None = None,
    **difficulty: Any,
):
    """A ``datasets.Dataset`` of ``num_pairs`` preference pairs from ``split`` in TRL's preference format.

    Columns ``prompt``, ``chosen``, ``rejected`` (plain strings; chosen/rejected are completions of the prompt),
    ``chosen_truths``, ``rejected_truths`` (list of bool, one per line), ``chosen_score``, ``rejected_score`` (the
    oracle reward), ``op``, ``number``, ``num_facts``. Both responses are drawn independently from the
    demonstrations' process; the label is Bradley-Terry with temperature ``bt_temperature`` (module docstring).
    Pairs with identical texts are dropped and replaced; pass a dict as ``stats`` to get ``pairs``, ``drawn``,
    ``dropped_identical`` and ``ties`` (pairs with equal scores, kept). Deterministic in its arguments; the prompt
    texts of train and test are disjoint, and a smaller ``num_pairs`` gives a prefix of a larger one.
    """
    from datasets import Dataset, Features, Sequence, Value

    rows = make_preference_rows(split, num_pairs, seed, bt_temperature, stats, **difficulty)
    features = Features(
        {
            "prompt": Value("string"),
            "chosen": Value("string"),
            "rejected": Value("string"),
            "chosen_truths": Sequence(Value("bool")),
            "rejected_truths": Sequence(Value("bool")),
            "chosen_score": Value("float64"),
            "rejected_score": Value("float64"),
            "op": Value("string"),
            "number": Value("int64"),
            "num_facts": Value("int64"),
        }
    )
    return Dataset.from_list(rows, features=features)


def corpus(seed: int = 0) -> list[str]:
    """Texts to train the ``tiny-facts`` tokenizer on: 2,000 training prompts with demonstrations (every template
    and topic word), plus one line with every character the format uses."""
    # explicit knobs (not DEFAULT_DIFFICULTY), so that retuning the defaults does not change the tokenizer
    rows = make_rows("train", 2000, seed, num_facts=4, max_operand=12, ops="+-*", max_error_rate=0.6, max_offset=3)
    texts = [r["prompt"] + r["completion"] for r in rows]
    texts.append("0123456789 +-*=.\n")
    return texts


# ----------------------------------------------------------------------------------------------------------------
# reward


def _column_int(name: str, value: Any, row: int, low: int | None = None) -> int:
    n: int | None = None
    if isinstance(value, bool):
        n = None
    elif isinstance(value, int):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
        n = int(value)
    if n is None or (low is not None and n < low):
        bound = "" if low is None else f" >= {low}"
        raise UserError(f"facts reward: row {row}: column {name!r} must be an integer{bound}, got {value!r}")
    return n


def reward(
    prompts: list[Any],
    completions: list[Any],
    op: list[Any] | None = None,
    number: list[Any] | None = None,
    num_facts: list[Any] | None = None,
    **kwargs: Any,
) -> list[float]:
    """The oracle reward of each completion, in [0, 1]: the share of the ``num_facts`` requested facts that the
    completion's first ``num_facts`` non-blank lines state correctly (well-formed, true, on the prompt's ``op`` and
    ``number``, a repeat counted once); see the module docstring for the exact rules. TRL's reward-function
    signature; ``op``, ``number`` and ``num_facts`` are the dataset columns of those names, other keywords are
    ignored.

    Completions may be strings or conversational message lists (the assistant messages' text is used). A missing
    or malformed column is a data error and raises :class:`UserError`; a completion never makes it raise.
    """
    columns = {"op": op, "number": number, "num_facts": num_facts}
    for name, values in columns.items():
        if values is None:
            raise UserError(f"facts reward: the dataset has no {name!r} column (make it with segrl.tasks.facts)")
        if len(values) != len(completions):
            raise UserError(
                f"facts reward: got {len(completions)} completions but {len(values)} values in column {name!r}"
            )
    out = []
    for i, completion in enumerate(completions):
        o = op[i]  # type: ignore[index]
        if o not in TOPICS:
            raise UserError(f"facts reward: row {i}: column 'op' must be one of '+', '-', '*', got {o!r}")
        n = _column_int("number", number[i], i)  # type: ignore[index]
        k = _column_int("num_facts", num_facts[i], i, 1)  # type: ignore[index]
        out.append(score(completion_text(completion), o, n, k))
    return out


__all__ = [
    "DEFAULT_BT_TEMPERATURE",
    "DEFAULT_DIFFICULTY",
    "Statement",
    "TEMPLATES",
    "bt_probability",
    "corpus",
    "held_out_template",
    "make_dataset",
    "make_preference_dataset",
    "make_preference_rows",
    "make_rows",
    "parse_statements",
    "render_prompt",
    "reward",
    "score",
    "split_of",
    "statement_credits",
]
