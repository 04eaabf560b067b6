"""Aligned pairs for DenseDPO: shared-prefix and re-infill builders on a scripted LM (exact invariants), segment
labellers (facts oracle, segment RM, LLM judge), whole-pair DPO labels, and one end-to-end run on a random Llama."""

import re
from types import SimpleNamespace

import pytest
import torch
from scripted import VOCAB, ScriptedLM, peaked
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from segrl.aligned_pairs import (
    align_continuations,
    entropy_segmenter,
    fixed_length_segmenter,
    judge_labeller,
    newline_segmenter,
    oracle_labeller,
    parse_judge_answer,
    reinfill_pairs,
    reward_model_labeller,
    shared_prefix_pairs,
    whole_pair_label,
)
from segrl.errors import UserError
from segrl.tasks import facts
from segrl.trainers.dense_dpo import validate_dense_dpo_row


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------- scripted facts "policy"

ALPHABET = "0123456789+-*=\n .abcdefghijklmnopqrstuvwxyzW"
EOS, PAD = 0, 1  # character i is id i + 2, as in tests/scripted.py


class FactsTokenizer:
    """One token per character of ALPHABET; the call and decode signatures segrl uses."""

    eos_token_id, pad_token_id = EOS, PAD
    eos_token, pad_token = "<eos>", "<pad>"
    chat_template = None

    def __call__(self, text=None, add_special_tokens=True):
        return {"input_ids": [ALPHABET.index(c) + 2 for c in text]}

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(ALPHABET[i - 2] for i in ids if i >= 2)


TOK = FactsTokenizer()
PROMPT = "Write 3 facts about sums with 7.\n"
# line f states 7+(f+3); line 1 is wrong (7+4=11)
REFERENCE = "7+3=10\n7+4=12\n7+5=12\n"
REF_LINES = ["7+3=10\n", "7+4=12\n", "7+5=12\n"]
COLUMNS = {"op": "+", "number": 7, "num_facts": 3}


def cid(c: str) -> int:
    return ALPHABET.index(c) + 2


def line_options(f: int) -> set[str]:
    """What the scripted model can write as line f: the true statement or its value off by +1 in the last digit."""
    c = 7 + f + 3
    return {f"7+{f + 3}={c}\n", f"7+{f + 3}={c // 10}{(c % 10 + 1) % 10}\n"}


def facts_rule(random_stop: bool = False):
    """Next-token logits of a facts writer: line f is ``7+(f+3)=1d`` with d the right digit or one more (50/50), then
    a newline; after 3 lines (or, with ``random_stop``, 50/50 after each line from the second on) EOS."""

    def rule(visible):
        text = TOK.decode(visible)
        completion = text.split("\n", 1)[1] if "\n" in text else ""
        *done, line = completion.split("\n")
        if line == "":
            if len(done) >= 3:
                return peaked(EOS)
            if random_stop and len(done) >= 1:
                logits = torch.zeros(VOCAB)
                logits[EOS] = logits[cid("7")] = 30.0
                return logits
            return peaked(cid("7"))
        if line == "7":
            return peaked(cid("+"))
        if line == "7+":
            return peaked(cid(str(min(len(done) + 3, 9))))
        if re.fullmatch(r"7\+\d", line):
            return peaked(cid("="))
        if re.fullmatch(r"7\+\d=", line):
            return peaked(cid("1"))
        if re.fullmatch(r"7\+\d=1", line):
            digit = (7 + int(line[2])) % 10
            logits = torch.zeros(VOCAB)
            logits[cid(str(digit))] = logits[cid(str((digit + 1) % 10))] = 30.0
            return logits
        return peaked(cid("\n"))

    return rule


def policy(random_stop: bool = False) -> ScriptedLM:
    return ScriptedLM(facts_rule(random_stop))


def validate(rows):
    for i, row in enumerate(rows):
        validate_dense_dpo_row(row, i)


def ids_of(text: str) -> list[int]:
    return TOK(text)["input_ids"]


# ----------------------------------------------------------------------------------------- shared prefix


def test_align_continuations():
    assert align_continuations([0, 0, 1], [0, 1, 1, 1], 2) == ([2, 2, 3], [2, 3, 3, 3], 2)
    assert align_continuations([0, 1], [0, 0, 0], 1) == ([1, 1], [1, 1, 1], 1)  # different counts: one segment
    assert align_continuations([0], [0, 1, 2], 0) == ([0], [0, 0, 0], 1)


def test_shared_prefix_pairs_on_a_scripted_model():
    n = 8
    rows = shared_prefix_pairs(policy(), TOK, [PROMPT] * n, [REFERENCE] * n, newline_segmenter(TOK),
                               columns=[COLUMNS] * n, seed=3)
    validate(rows)
    assert len({r["prefix_segments"] for r in rows}) > 1  # k varies over the pairs
    assert any(r["chosen"] != r["rejected"] for r in rows)
    for row in rows:
        k = row["prefix_segments"]
        assert row["regenerated"] == list(range(k, 3)) and row["segment_labels"] == [0, 0, 0]
        for side in ("chosen", "rejected"):
            segments = row[f"{side}_segments"]
            assert segments[:k] == REF_LINES[:k]  # the shared prefix is the reference's, byte for byte
            assert all(segments[f] in line_options(f) for f in range(k, 3))
            assert "".join(segments) == row[side]
            # seven character tokens per line, then EOS in no segment
            assert row[f"{side}_ids"] == ids_of(row[side]) + [EOS]
            assert row[f"{side}_segment_ids"] == [0] * 7 + [1] * 7 + [2] * 7 + [-1]
        prefix = 7 * k
        assert row["chosen_ids"][:prefix] == row["rejected_ids"][:prefix] == ids_of(REFERENCE)[:prefix]
        differing = [f for f in range(3) if row["chosen_segments"][f] != row["rejected_segments"][f]]
        assert not differing or differing[0] >= k
        assert row["prompt"] == PROMPT and row["prompt_ids"] == ids_of(PROMPT) and row["op"] == "+"
        assert row["reference"] == REFERENCE and row["method"] == "shared_prefix"


def test_shared_prefix_tails_of_different_lengths_merge_into_one_segment():
    n = 10
    rows = shared_prefix_pairs(policy(random_stop=True), TOK, [PROMPT] * n, [REFERENCE] * n,
                               newline_segmenter(TOK), seed=0)
    validate(rows)
    kinds = set()
    for row in rows:
        k = row["prefix_segments"]
        tails = [row[side][len("".join(REF_LINES[:k])):] for side in ("chosen", "rejected")]
        counts = [t.count("\n") for t in tails]
        if counts[0] == counts[1]:
            kinds.add("by index")
            assert len(row["segment_labels"]) == k + counts[0]
        else:
            kinds.add("merged")
            assert len(row["segment_labels"]) == k + 1 and row["regenerated"] == [k]
            assert [row["chosen_segments"][k], row["rejected_segments"][k]] == tails
    assert kinds == {"by index", "merged"}


# --------------------------------------------------------------------------------------------------- re-infill


def test_reinfill_pairs_on_a_scripted_model():
    n = 6
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * n, [REFERENCE] * n, newline_segmenter(TOK), eta=0.5,
                          columns=[COLUMNS] * n, seed=1)
    validate(rows)
    assert any(r["chosen"] != r["rejected"] for r in rows)
    assert len({tuple(r["regenerated"]) for r in rows}) > 1
    for row in rows:
        picked = row["regenerated"]
        assert len(picked) == 2 and picked == sorted(picked)  # round(0.5 * 3) = 2 of 3 lines
        assert len(row["segment_labels"]) == 3
        for side in ("chosen", "rejected"):
            segments = row[f"{side}_segments"]
            for f in range(3):
                if f in picked:  # regenerated, ended at its newline
                    assert segments[f] in line_options(f)
                else:
                    assert segments[f] == REF_LINES[f]
            assert row[f"{side}_ids"][-1] == EOS and row[f"{side}_segment_ids"][-1] == -1
        for f in set(range(3)) - set(picked):  # unpicked: the very same tokens in both copies
            tokens = [[t for t, s in zip(row[f"{side}_ids"], row[f"{side}_segment_ids"]) if s == f]
                      for side in ("chosen", "rejected")]
            assert tokens[0] == tokens[1] == ids_of(REF_LINES[f])


def test_reinfill_fraction_and_fixed_length_segments():
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * 3, [REFERENCE] * 3, newline_segmenter(TOK), eta=1.0)
    assert all(r["regenerated"] == [0, 1, 2] for r in rows)
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * 3, [REFERENCE] * 3, newline_segmenter(TOK), eta=0.01)
    assert all(len(r["regenerated"]) == 1 for r in rows)

    # 21 reference tokens in segments of 4: 5 of 4 and a last one of 1; half of 6 regenerated
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * 4, [REFERENCE] * 4, fixed_length_segmenter(4), seed=2)
    validate(rows)
    ref = ids_of(REFERENCE)
    for row in rows:
        assert len(row["regenerated"]) == 3 and len(row["segment_labels"]) == 6
        for side in ("chosen", "rejected"):
            for f in range(6):
                tokens = [t for t, s in zip(row[f"{side}_ids"], row[f"{side}_segment_ids"]) if s == f]
                if f not in row["regenerated"]:
                    assert tokens == ref[4 * f: 4 * f + 4]
                elif f < 5:
                    assert len(tokens) == 4  # the 5th sampled token would open a new segment: dropped


def test_cap_ends_a_regenerated_segment_and_the_first_token_is_never_eos():
    # max_new_tokens=3: a regenerated line is cut after 3 tokens; the line after it follows as in the reference
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * 3, [REFERENCE] * 3, newline_segmenter(TOK), eta=0.01,
                          max_new_tokens=3, seed=4)
    validate(rows)
    for row in rows:
        (f,) = row["regenerated"]
        assert row["chosen_segments"][f] == row["rejected_segments"][f] == REF_LINES[f][:3]
    # a scripted model that wants to stop at once: EOS is masked at the first token of a sampled segment
    stopper = ScriptedLM(lambda visible: peaked(EOS) if len(visible) > len(ids_of(PROMPT)) else eos_first())
    rows = shared_prefix_pairs(stopper, TOK, [PROMPT] * 2, ["abc\n"] * 2, newline_segmenter(TOK), seed=0)
    validate(rows)
    assert all(r["chosen"] in ("a", "b") and r["chosen_ids"][-1] == EOS for r in rows)


def eos_first() -> torch.Tensor:
    """EOS far ahead, then "a" and "b" (50/50 once EOS is masked)."""
    logits = torch.zeros(VOCAB)
    logits[EOS], logits[cid("a")], logits[cid("b")] = 40.0, 20.0, 20.0
    return logits


def test_builds_are_reproducible_and_do_not_depend_on_the_batch():
    def build(**kwargs):
        return reinfill_pairs(policy(), TOK, [PROMPT] * 5, [REFERENCE] * 5, newline_segmenter(TOK), **kwargs)

    first = build(seed=7, batch_size=16)
    assert build(seed=7, batch_size=16) == first
    assert build(seed=7, batch_size=2) == first  # each sample has its own random stream
    assert build(seed=8) != first
    prefix = shared_prefix_pairs(policy(), TOK, [PROMPT] * 5, [REFERENCE] * 5, newline_segmenter(TOK), seed=7)
    assert shared_prefix_pairs(policy(), TOK, [PROMPT] * 5, [REFERENCE] * 5, newline_segmenter(TOK), seed=7,
                               batch_size=1) == prefix


def test_references_sampled_by_the_policy_and_given_as_ids():
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * 3, None, newline_segmenter(TOK), seed=0)
    validate(rows)
    for row in rows:
        lines = re.findall(r".*\n", row["reference"])
        assert len(lines) == 3 and all(line in line_options(f) for f, line in enumerate(lines))
    # token ids without EOS: the copies end without EOS either
    rows = reinfill_pairs(policy(), TOK, [PROMPT], [ids_of(REFERENCE)], newline_segmenter(TOK), seed=0)
    validate(rows)
    assert rows[0]["chosen_ids"][-1] != EOS and -1 not in rows[0]["chosen_segment_ids"]


def test_bad_inputs():
    seg = newline_segmenter(TOK)
    with pytest.raises(UserError, match="eta"):
        reinfill_pairs(policy(), TOK, [PROMPT], [REFERENCE], seg, eta=0)
    with pytest.raises(UserError, match="references"):
        reinfill_pairs(policy(), TOK, [PROMPT, PROMPT], [REFERENCE], seg)
    with pytest.raises(UserError, match="empty"):
        shared_prefix_pairs(policy(), TOK, [PROMPT], [""], seg)
    with pytest.raises(UserError, match="context"):
        reinfill_pairs(policy(), TOK, [PROMPT], [REFERENCE], seg, max_new_tokens=5000)
    with pytest.raises(UserError, match="overwrite"):
        reinfill_pairs(policy(), TOK, [PROMPT], [REFERENCE], seg, columns=[{"chosen": "x"}])


# --------------------------------------------------------------------------------------------------- labellers


def pair_row(chosen_segments, rejected_segments, regenerated=None, **columns):
    """A hand-made aligned pair in the trainer's format (character tokens, EOS in no segment)."""
    row = {"prompt": PROMPT, "prompt_ids": ids_of(PROMPT), **COLUMNS, **columns}
    for side, segments in (("chosen", chosen_segments), ("rejected", rejected_segments)):
        row[side] = "".join(segments)
        row[f"{side}_segments"] = list(segments)
        row[f"{side}_ids"] = ids_of(row[side]) + [EOS]
        row[f"{side}_segment_ids"] = [f for f, s in enumerate(segments) for _ in s] + [-1]
    row["segment_labels"] = [0] * len(chosen_segments)
    if regenerated is not None:
        row["regenerated"] = regenerated
    validate_dense_dpo_row(row, 0)
    return row


def test_oracle_labeller_on_hand_made_facts_pairs():
    label = oracle_labeller()
    rows = [
        pair_row(["7+5=12\n", "7+9=17\n"], ["7+5=13\n", "7+9=16\n"], num_facts=2),  # the spec's example
        pair_row(["7+5=12\n", "7+9=16\n7+2=9\n"], ["7+5=12\n", "7+9=16\n7+2=8\n"], regenerated=[1]),  # merged tail
        pair_row(["7+5=12\n", "7+5=12\n"], ["7+5=12\n", "7+6=13\n"]),  # a repeat earns nothing, in context
        pair_row(["7+5=", "12\n"], ["7+5=", "13\n"]),  # a line cut in two is credited where it ends
        pair_row(["7+5=12\n"], ["7+5=12\n"]),
    ]
    before = [dict(r) for r in rows]
    labelled, counts = label(rows)
    assert [r["segment_labels"] for r in labelled] == [[1, -1], [0, 1], [0, -1], [0, 1], [0]]
    assert rows == before  # the input rows are left as they were
    assert counts == {"segments": 8, "labelled": 5, "ties": 3, "unparsed": 0, "tied_pairs": 1}
    for i, row in enumerate(labelled):
        validate_dense_dpo_row(row, i)
    with pytest.raises(UserError, match="num_facts"):
        label([{k: v for k, v in rows[0].items() if k != "num_facts"}])


def test_oracle_labels_of_built_pairs_match_the_line_truths():
    rows = reinfill_pairs(policy(), TOK, [PROMPT] * 6, [REFERENCE] * 6, newline_segmenter(TOK),
                          columns=[COLUMNS] * 6, seed=5)
    labelled, counts = oracle_labeller()(rows)
    for row in labelled:
        for f in range(3):
            truth = [facts.parse_statements(row[f"{side}_segments"][f])[0].truth for side in ("chosen", "rejected")]
            expected = truth[0] - truth[1] if f in row["regenerated"] else 0
            assert row["segment_labels"][f] == expected
    assert counts["segments"] == 12 and counts["labelled"] > 0


class FakeRewardModel(torch.nn.Module):
    """The head's output at each position is the token id there (so a segment's reward is its last token's id)."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(pad_token_id=PAD)

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=input_ids.float()[..., None])


def test_reward_model_labeller_reads_each_segment_at_its_last_token():
    row = {"prompt": "p", "prompt_ids": [5], "chosen": "", "rejected": "",
           "chosen_ids": [10, 11, 20, 0], "chosen_segment_ids": [0, 0, 1, -1],
           "rejected_ids": [10, 12, 3, 3, 0], "rejected_segment_ids": [0, 0, 1, 1, -1],
           "segment_labels": [0, 0], "regenerated": [0, 1]}
    short = dict(row, rejected_ids=[10, 12, 3], rejected_segment_ids=[0, 0, 1])  # padding must not matter
    labelled, counts = reward_model_labeller(FakeRewardModel())([row, short])
    assert [r["segment_labels"] for r in labelled] == [[-1, 1], [-1, 1]]  # 11 < 12; 20 > 3
    assert counts == {"segments": 4, "labelled": 4, "ties": 0, "unparsed": 0, "tied_pairs": 0}
    labelled, counts = reward_model_labeller(FakeRewardModel(), tie_margin=1.0)([row])
    assert labelled[0]["segment_labels"] == [0, 1] and counts["ties"] == 1
    labelled, _ = reward_model_labeller(FakeRewardModel())([dict(row, regenerated=[1])])
    assert labelled[0]["segment_labels"] == [0, 1]


def test_parse_judge_answer():
    assert parse_judge_answer("A") == 1
    assert parse_judge_answer(" b.") == -1
    assert parse_judge_answer("Tie") == 0
    assert parse_judge_answer("\n TIE.\nBoth are wrong.") == 0
    for garbage in ("A is better", "**A**", "", "C", "A B", None):
        assert parse_judge_answer(garbage) is None


def test_judge_labeller_prompts_parsing_and_cache():
    judge = judge_labeller(SimpleNamespace(), TOK)
    asked = []

    def scripted(prompts):
        asked.append(list(prompts))
        return ["A" if "> 7+9=16" in p.split("Candidate A:")[1].split("Candidate B:")[0] else "garbage"
                for p in prompts]

    judge._generate = scripted
    rows = [pair_row(["7+5=12\n", "7+9=16\n"], ["7+5=12\n", "7+9=17\n"], regenerated=[1]),
            pair_row(["7+5=13\n", "7+9=16\n"], ["7+5=12\n", "7+9=16\n"])]
    labelled, counts = judge(rows)
    assert [r["segment_labels"] for r in labelled] == [[0, 1], [0, 1]]
    assert counts == {"segments": 3, "labelled": 2, "ties": 1, "unparsed": 1, "tied_pairs": 0}
    prompts = asked[0]
    assert len(prompts) == 3
    first = prompts[0]  # row 0, segment 1: the copies agree before it
    assert "Prompt:\n> Write 3 facts about sums with 7.\n\n" in first
    assert "Response so far:\n> 7+5=12\n\nCandidate A:\n> 7+9=16\n\nCandidate B:\n> 7+9=17\n\n" in first
    assert "Response so far:\n>\n\nCandidate A:\n> 7+5=13" in prompts[1]  # segment 0: nothing before it
    assert "Response A so far:\n> 7+5=13\n\nResponse B so far:\n> 7+5=12\n\n" in prompts[2]  # contexts differ
    assert first.endswith("Answer:")
    again, counts_again = judge(rows)  # every answer comes from the cache
    assert len(asked) == 1 and again == labelled and counts_again == counts


# ------------------------------------------------------------------------------------------- whole-pair DPO


def test_whole_pair_label():
    rows = [pair_row(["7+5=12\n", "7+9=16\n"], ["7+5=13\n", "7+9=16\n"], regenerated=[0]),  # chosen better
            pair_row(["7+5=13\n", "7+9=16\n"], ["7+5=12\n", "7+9=16\n"], regenerated=[0]),  # rejected better
            pair_row(["7+5=12\n"], ["7+5=12\n"])]  # tie
    out, counts = whole_pair_label(rows, facts.reward)
    assert counts == {"pairs": 3, "kept": 2, "swapped": 1, "ties": 1, "unscored": 0}
    assert [r["chosen"] for r in out] == ["7+5=12\n7+9=16\n"] * 2
    assert [r["rejected"] for r in out] == ["7+5=13\n7+9=16\n"] * 2
    assert out[1]["chosen_ids"] == rows[1]["rejected_ids"] and out[1]["rejected_ids"] == rows[1]["chosen_ids"]
    for i, row in enumerate(out):
        assert (row["chosen_score"], row["rejected_score"]) == (2 / 3, 1 / 3)
        assert row["segment_labels"] == [1] and set(row["chosen_segment_ids"]) == {0}  # EOS included: plain DPO
        validate_dense_dpo_row(row, i)


# ----------------------------------------------------------------------------------- end to end, random Llama


def test_end_to_end_on_a_random_llama(random_model_dir):
    model = AutoModelForCausalLM.from_pretrained(random_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    model.train()
    prompts = ["The soup was", "We sat by the", "Would we"]
    three = fixed_length_segmenter(3)
    kwargs = dict(max_new_tokens=8, seed=2, batch_size=2)  # a seed where some shared prefix is not empty

    prefix = shared_prefix_pairs(model, tokenizer, prompts, None, three, **kwargs)
    assert model.training  # the builders leave the mode as they found it
    assert shared_prefix_pairs(model, tokenizer, prompts, None, three, **kwargs) == prefix
    validate(prefix)
    assert any(r["prefix_segments"] > 0 for r in prefix)
    for row in prefix:
        k = row["prefix_segments"]
        cut = [s < k for s in row["chosen_segment_ids"]].index(False)
        assert row["chosen_ids"][:cut] == row["rejected_ids"][:cut]  # (their texts may differ at the boundary when
        # random bytes split a character there: the character goes where it is completed)

    infill = reinfill_pairs(model, tokenizer, prompts, None, three, **kwargs)
    validate(infill)
    for row in prefix + infill:
        for side in ("chosen", "rejected"):
            assert row[side] == tokenizer.decode(row[f"{side}_ids"], skip_special_tokens=True)
            assert row[side].startswith("".join(row[f"{side}_segments"]))
    for row in infill:
        for f in set(range(len(row["segment_labels"]))) - set(row["regenerated"]):
            tokens = [[t for t, s in zip(row[f"{side}_ids"], row[f"{side}_segment_ids"]) if s == f]
                      for side in ("chosen", "rejected")]
            assert tokens[0] == tokens[1]

    # entropy segments with the text before as context; threshold 0 makes every token a segment, so a
    # regenerated segment is exactly one token
    tokens = reinfill_pairs(model, tokenizer, prompts[:2], None, entropy_segmenter(model, 0.0), **kwargs)
    validate(tokens)
    for row in tokens:
        for side in ("chosen", "rejected"):
            ids = row[f"{side}_segment_ids"]
            assert all(ids.count(f) == 1 for f in range(len(row["segment_labels"])))

    # a text reference with lines, cut by the real tokenizer's offsets
    lines = reinfill_pairs(model, tokenizer, prompts[:1], ["The soup was hot.\nThe bread was fresh!\n"],
                           newline_segmenter(tokenizer), eta=0.5, **kwargs)
    validate(lines)
    assert len(lines[0]["segment_labels"]) == 2
    kept = ({0, 1} - set(lines[0]["regenerated"])).pop()
    assert lines[0]["chosen_segments"][kept] == ["The soup was hot.\n", "The bread was fresh!\n"][kept]

    # a random segment reward model on the same tokenizer: labels are signs of the head at each segment's end
    from segrl.segment_rm import new_reward_model

    rm = new_reward_model(random_model_dir, "bandit", None, seed=0)
    labelled, counts = reward_model_labeller(rm)(infill)
    assert counts["segments"] == sum(len(r["regenerated"]) for r in infill)
    with torch.no_grad():
        for row in labelled:
            reads = []
            for side in ("chosen", "rejected"):
                scores = rm(input_ids=torch.tensor([row["prompt_ids"] + row[f"{side}_ids"]])).logits[0, :, 0]
                ids = row[f"{side}_segment_ids"]
                reads.append({f: scores[len(row["prompt_ids"]) + max(t for t, s in enumerate(ids) if s == f)]
                              for f in row["regenerated"]})
            for f in row["regenerated"]:
                if abs(reads[0][f] - reads[1][f]) > 1e-4:  # (batched and single forwards differ by rounding)
                    assert row["segment_labels"][f] == int(torch.sign(reads[0][f] - reads[1][f]))

    with pytest.raises(UserError, match="context"):
        reinfill_pairs(model, tokenizer, prompts, None, three, max_new_tokens=60)


def test_entropy_segmenter_reads_the_entropy_of_each_token_in_context(random_model_dir):
    model = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    prompts, completions = [[5, 6, 7], [8]], [[9, 10, 11, 12], [13, 14]]
    with torch.no_grad():
        entropies = [seg_entropy(model, p, c) for p, c in zip(prompts, completions)]
    threshold = float(torch.cat(entropies).median())
    ids = torch.tensor([[9, 10, 11, 12], [13, 14, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    got = entropy_segmenter(model, threshold)(ids, mask, prompt_ids=prompts)
    for row, entropy in enumerate(entropies):
        starts = (entropy > threshold).tolist()
        expected = [sum(starts[1: t + 1]) for t in range(len(starts))]  # the first token always opens segment 0
        assert got[row, : len(expected)].tolist() == expected
    assert got[1, 2:].tolist() == [-1, -1] and len(set(got[0].tolist())) > 1


def seg_entropy(model, prompt, completion):
    """Entropy of the distribution of each completion token, from one unpadded forward pass."""
    logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
    probs = torch.softmax(logits[len(prompt) - 1: -1].float(), dim=-1)
    return -(probs * probs.log()).sum(dim=-1)


def test_judge_with_a_real_model(random_model_dir):
    """A random judge: its answers are (almost surely) garbage, so ties counted as unparsed; one generation per
    distinct question; special-token strings in the quoted text are broken."""
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    judge = judge_labeller(LlamaForCausalLM(config), tokenizer, max_new_tokens=4)
    rows = [pair_row(["7+5=12\n", "7+9=16\n"], ["7+5=13\n", "7+9=17\n"]),
            pair_row(["7+5=12\n", "7+9=16\n"], ["7+5=13\n", "7+9=17\n"], regenerated=[1])]
    for row in rows:
        row["prompt"] = "Say <eos> now.\n"
    labelled, counts = judge(rows)
    assert counts["segments"] == 3 and counts["labelled"] + counts["ties"] == 3
    assert len(judge.cache) == 2  # row 1's question is row 0's second question
    # the segment-1 question is asked for both rows, the segment-0 one for row 0 only
    asked = {key: 2 if "Candidate A:\n> 7+9=16" in key else 1 for key in judge.cache}
    assert counts["unparsed"] == sum(n for key, n in asked.items() if parse_judge_answer(judge.cache[key]) is None)
    assert all(isinstance(a, str) for a in judge.cache.values())
    assert any("<\u200beos>" in key for key in judge.cache) and not any("Say <eos>" in key for key in judge.cache)
