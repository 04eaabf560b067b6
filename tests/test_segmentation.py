"""Worked examples (numbers computed by hand) and invariants for segrl.segmentation."""

import math
import re

import pytest
import scipy.stats
import torch

from segrl.errors import UserError
from segrl.segmentation import (
    broadcast_to_tokens,
    cascade_ends_segment,
    cutpoint_segments,
    decode_with_offsets,
    delimiter_segments,
    delimiter_segments_of_ids,
    entropy_segments,
    equal_chunk_segments,
    fixed_length_segments,
    low_probability_mask,
    num_segments,
    sampled_token_probs,
    segment_first_index,
    segment_ids_from_starts,
    segment_last_index,
    segment_lengths,
    segment_mean,
    segment_spans,
    segment_sum,
    token_entropy,
    uncertainty_segments,
)


def B(*rows):
    """Bool tensor from 0/1 rows."""
    return torch.tensor(rows, dtype=torch.bool)


def L(*rows):
    return torch.tensor(rows, dtype=torch.long)


def F(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def assert_ids(actual, *expected_rows):
    assert actual.dtype == torch.long
    assert actual.tolist() == [list(r) for r in expected_rows]


# ------------------------------------------------------------------------------------------------- signals


def test_token_entropy_worked_values():
    ln3 = math.log(3.0)
    inf = math.inf
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, ln3, -inf, -inf], [5.0, -inf, -inf, -inf]]])
    # uniform over 4: ln 4; p = (1/4, 3/4): -(0.25 ln 0.25 + 0.75 ln 0.75); a point mass: 0 (no NaN from -inf)
    expected = [[1.3862944, 0.5623351, 0.0]]
    assert torch.allclose(token_entropy(logits), torch.tensor(expected), atol=1e-6)
    # temperature 2 on logits (0, 2 ln 3) is again p = (1/4, 3/4)
    hot = torch.tensor([[[0.0, 2 * ln3]]])
    assert token_entropy(hot, temperature=2.0).item() == pytest.approx(0.5623351, abs=1e-6)


def test_token_entropy_matches_scipy_and_categorical():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 7, generator=gen, dtype=torch.float64) * 3
    for temperature in (1.0, 0.7):
        ours = token_entropy(logits, temperature)
        probs = torch.softmax(logits / temperature, dim=-1)
        assert torch.allclose(ours, torch.tensor(scipy.stats.entropy(probs.numpy(), axis=-1)), atol=1e-10)
        categorical = torch.distributions.Categorical(logits=logits / temperature).entropy()
        assert torch.allclose(ours, categorical, atol=1e-10)


def test_token_entropy_upcasts_half_precision():
    logits = torch.zeros(1, 1, 4, dtype=torch.bfloat16)
    out = token_entropy(logits)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(math.log(4), abs=1e-6)


def test_sampled_token_probs_worked_values():
    ln3 = math.log(3.0)
    logits = torch.tensor([[[0.0, ln3], [0.0, ln3]]])
    probs = sampled_token_probs(logits, L([1, 0]))
    assert torch.allclose(probs, F([0.75, 0.25]))
    # at temperature 2, logits (0, 2 ln 3) give p = (1/4, 3/4)
    assert sampled_token_probs(torch.tensor([[[0.0, 2 * ln3]]]), L([1]), temperature=2.0).item() == pytest.approx(0.75)


def test_sampled_token_probs_matches_softmax_indexing():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 5, 11, generator=gen) * 4
    token_ids = torch.randint(0, 11, (3, 5), generator=gen)
    for temperature in (1.0, 0.6):
        softmax = torch.softmax(logits / temperature, dim=-1)
        expected = torch.stack([torch.stack([softmax[b, t, token_ids[b, t]] for t in range(5)]) for b in range(3)])
        assert torch.allclose(sampled_token_probs(logits, token_ids, temperature), expected, atol=1e-6)


def test_sampled_token_probs_stable_for_extreme_logits():
    logits = torch.tensor([[[1000.0, 0.0, -1000.0]]])
    probs = sampled_token_probs(logits.expand(1, 3, 3).contiguous(), L([0, 1, 2]))
    assert torch.isfinite(probs).all()
    assert probs[0, 0].item() == 1.0 and probs[0, 2].item() == 0.0


# ------------------------------------------------------------------------------------------- core primitive


def test_starts_completion_only_layout_with_right_padding():
    mask = B([1, 1, 1, 1, 0, 0])
    starts = B([0, 0, 1, 0, 1, 1])  # starts on padding are ignored
    assert_ids(segment_ids_from_starts(starts, mask), [0, 0, 1, 1, -1, -1])


def test_starts_full_layout_prompt_ignored_and_first_token_opens_zero():
    mask = B([0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1])
    starts = B([1, 1, 0, 1, 0, 0], [0, 1, 0, 1, 0, 1])
    assert_ids(segment_ids_from_starts(starts, mask), [-1, -1, 0, 1, 1, -1], [-1, 0, 0, 1, 1, 2])


def test_starts_all_padding_row_and_int_mask():
    mask = L([0, 0, 0], [1, 1, 0])  # TRL's completion_mask is 0/1 ints
    starts = B([1, 1, 1], [0, 1, 1])
    assert_ids(segment_ids_from_starts(starts, mask), [-1, -1, -1], [0, 1, -1])


# -------------------------------------------------------------------------------------------- entropy rule


def test_entropy_threshold_is_strict():
    entropy = F([0.5, 2.5, 1.0, 2.0, 3.0, 0.1])
    mask = torch.ones(1, 6, dtype=torch.bool)
    # 2.5 > 2 opens, 2.0 == 2 does not, 3.0 opens
    assert_ids(entropy_segments(entropy, mask, threshold=2.0), [0, 1, 1, 1, 2, 2])


def test_entropy_high_first_token_still_segment_zero():
    assert_ids(entropy_segments(F([5.0, 0.1, 4.0]), B([1, 1, 1]), 1.0), [0, 0, 1])


def test_entropy_threshold_zero_is_token_level():
    entropy = F([0.0, 0.3, 0.2, 0.9, 0.0], [0.0, 0.0, 0.01, 0.5, 0.7])
    mask = B([0, 1, 1, 1, 0], [1, 1, 1, 1, 1])
    assert_ids(entropy_segments(entropy, mask, 0.0), [-1, 0, 1, 2, -1], [0, 0, 1, 2, 3])  # H = 0 merges


def test_entropy_huge_threshold_is_one_segment_bandit_includes_eos():
    entropy = F([0.3, 9.0, 7.5, 40.0, 0.0])
    mask = B([1, 1, 1, 1, 0])
    eos = B([0, 0, 0, 1, 0])
    assert_ids(entropy_segments(entropy, mask, 1000.0), [0, 0, 0, 0, -1])  # bandit: EOS in the segment
    assert_ids(entropy_segments(entropy, mask, 1000.0, eos_mask=eos), [0, 0, 0, -1, -1])


def test_entropy_tail_rule_eos_excluded_without_empty_segment():
    entropy = F([0.1, 3.0, 0.2, 5.0, 0.0], [0.0, 0.0, 0.1, 2.0, 9.0])
    mask = B([1, 1, 1, 1, 0], [0, 0, 1, 1, 1])
    eos = B([0, 0, 0, 1, 0], [0, 0, 0, 0, 1])
    assert_ids(entropy_segments(entropy, mask, 1.0), [0, 1, 1, 2, -1], [-1, -1, 0, 1, 2])
    # EOS's high entropy would have opened its own segment: with the tail rule it is just -1
    assert_ids(entropy_segments(entropy, mask, 1.0, eos_mask=eos), [0, 1, 1, -1, -1], [-1, -1, 0, 1, -1])


def test_entropy_tail_rule_eos_only_token():
    ids = entropy_segments(F([0.0, 0.0, 4.0, 0.0]), B([0, 0, 1, 0]), 1.0, eos_mask=B([0, 0, 1, 0]))
    assert_ids(ids, [-1, -1, -1, -1])
    assert num_segments(ids).tolist() == [0]


# -------------------------------------------------------------------------------------------- CARDS cascade


def test_cascade_step_rule():
    assert cascade_ends_segment(3, 5.0) is False  # fewer than min_len = 4 tokens
    assert cascade_ends_segment(4, 3.0) is True  # >= tau_u = 3.0
    assert cascade_ends_segment(4, 2.99) is False
    assert cascade_ends_segment(64, 0.0) is True  # max_len reached
    assert cascade_ends_segment(63, 0.0) is False
    out = cascade_ends_segment(L(3, 4, 4, 64), F(5.0, 3.0, 2.99, 0.0))
    assert out.tolist() == [False, True, False, True]


def test_uncertainty_min_len_max_len_and_ge():
    # min_len 2, max_len 4, tau_u 1.0; walk: t2 opens (2 tokens, 9 >= 1), t6 opens (4 = max_len),
    # t8 opens (2 tokens, 1.0 >= 1.0), t9 does not (1 token), t11 opens (3 tokens, 2 >= 1)
    entropy = F([9.0, 9.0, 9.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.99, 0.0, 2.0])
    mask = torch.ones(1, 12, dtype=torch.bool)
    ids = uncertainty_segments(entropy, mask, tau_u=1.0, min_len=2, max_len=4)
    assert_ids(ids, [0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 3, 4])
    assert segment_lengths(ids).tolist() == [[2, 4, 2, 3, 1]]


def test_uncertainty_defaults_min_len_four():
    # t3 has 3.0 but only 3 tokens so far; t4 has 3.0 with 4 tokens: opens; 2.99 never opens
    entropy = F([0.0, 0.0, 0.0, 3.0, 3.0, 0.0, 0.0, 0.0, 0.0, 2.99])
    ids = uncertainty_segments(entropy, torch.ones(1, 10, dtype=torch.bool))
    assert_ids(ids, [0, 0, 0, 0, 1, 1, 1, 1, 1, 1])


def test_uncertainty_defaults_max_len_64_full_layout():
    # 3 prompt tokens, 70 low-entropy completion tokens, 2 padding: segments of 64 and 6
    mask = torch.zeros(2, 75, dtype=torch.bool)
    mask[0, 3:73] = True
    entropy = torch.full((2, 75), 0.5)
    entropy[0, :3] = 100.0  # the prompt's entropies play no part
    ids = uncertainty_segments(entropy, mask)
    assert ids[0, :3].tolist() == [-1] * 3 and ids[0, 73:].tolist() == [-1, -1]
    assert ids[0, 3:67].tolist() == [0] * 64 and ids[0, 67:73].tolist() == [1] * 6
    assert ids[1].tolist() == [-1] * 75  # all-padding row
    assert segment_lengths(ids).tolist() == [[64, 6], [0, 0]]


# --------------------------------------------------------------------------------------------------- SPO


def test_low_probability_mask_rho_is_strict():
    probs = F([0.95, 0.9, 0.89, 0.1, 0.5])
    mask = B([1, 1, 1, 1, 0])
    assert low_probability_mask(probs, mask).tolist() == [[False, False, True, True, False]]
    probs64 = torch.tensor([[0.95, 0.9, 0.89, 0.1, 0.5]], dtype=torch.float64)
    assert low_probability_mask(probs64, mask).tolist() == [[False, False, True, True, False]]


def test_cutpoints_interval_one():
    probs = F([0.99, 0.5, 0.95, 0.3, 0.2, 0.99])
    assert_ids(cutpoint_segments(probs, torch.ones(1, 6, dtype=torch.bool), interval=1), [0, 1, 1, 2, 3, 3])


def test_cutpoints_interval_five():
    # low-probability tokens (0.5) at positions 1,2,4,5,6,7,9,10,11,12,13: the 1st, 6th and 11th are kept
    probs = F([0.99, 0.5, 0.5, 0.99, 0.5, 0.5, 0.5, 0.5, 0.99, 0.5, 0.5, 0.5, 0.5, 0.5])
    ids = cutpoint_segments(probs, torch.ones(1, 14, dtype=torch.bool))
    assert_ids(ids, [0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3])


def test_cutpoints_first_token_opens_segment_zero():
    mask = torch.ones(2, 4, dtype=torch.bool)
    probs = F([0.2, 0.99, 0.5, 0.99], [0.2, 0.99, 0.5, 0.4])
    assert_ids(cutpoint_segments(probs, mask, interval=1), [0, 0, 1, 1], [0, 0, 1, 2])
    # interval 2 keeps the 1st and 3rd low-probability tokens: row 0 has only two
    assert_ids(cutpoint_segments(probs, mask, interval=2), [0, 0, 0, 0], [0, 0, 0, 1])


def test_cutpoints_none_and_rho_exact():
    probs = F([0.99, 0.9, 0.95, 1.0], [0.99, 0.9, 0.95, 0.899])
    ids = cutpoint_segments(probs, torch.ones(2, 4, dtype=torch.bool), interval=1)
    assert_ids(ids, [0, 0, 0, 0], [0, 0, 0, 1])


def test_cutpoints_prompt_and_padding_not_counted():
    # prompt lows would shift the every-k-th count if they were counted
    probs = F([0.1, 0.5, 0.5, 0.5, 0.99, 0.1], [0.1, 0.1, 0.99, 0.5, 0.99, 0.1])
    mask = B([0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 0])
    assert_ids(cutpoint_segments(probs, mask, interval=2), [-1, 0, 0, 1, 1, -1], [-1, -1, 0, 1, 1, -1])
    assert_ids(cutpoint_segments(probs, B([0] * 6, [0] * 6)), [-1] * 6, [-1] * 6)


# -------------------------------------------------------------------------------------- fixed and chunks


def test_fixed_length_segments():
    mask = B([0, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0], [0] * 7)
    assert_ids(fixed_length_segments(mask, 2), [-1, 0, 0, 1, 1, 2, -1], [0, 0, 1, -1, -1, -1, -1], [-1] * 7)
    assert_ids(fixed_length_segments(mask, 1), [-1, 0, 1, 2, 3, 4, -1], [0, 1, 2, -1, -1, -1, -1], [-1] * 7)


def test_equal_chunks_with_remainders():
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[0, :10] = True  # 10 = 3 + 3 + 2 + 2
    mask[1, 2:10] = True  # 8 = 2 + 2 + 2 + 2, after a 2-token prompt
    mask[2, :3] = True  # 3 tokens < 4 chunks: one token each
    ids = equal_chunk_segments(mask, 4)
    assert ids[0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, -1, -1]
    assert ids[1].tolist() == [-1, -1, 0, 0, 1, 1, 2, 2, 3, 3, -1, -1]
    assert ids[2].tolist() == [0, 1, 2] + [-1] * 9
    assert ids[3].tolist() == [-1] * 12


@pytest.mark.parametrize("n", range(0, 15))
@pytest.mark.parametrize("chunks", [1, 3, 4, 5])
def test_equal_chunks_agree_with_tensor_split(n, chunks):
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 1 : 1 + n] = True
    sizes = [len(part) for part in torch.arange(n).tensor_split(chunks) if len(part)]
    assert segment_lengths(equal_chunk_segments(mask, chunks))[0].tolist() == sizes


# ---------------------------------------------------------------------------------------------- delimiters


def test_delimiters_hand_made_offsets_merged_and_prefixed_tokens():
    # tokens: "One" ".\n" "Two" "\nThree" "." " Four"
    text = "One.\nTwo\nThree. Four"
    offsets = L([[0, 3], [3, 5], [5, 8], [8, 14], [14, 15], [15, 20]])
    mask = torch.ones(1, 6, dtype=torch.bool)
    # the merged ".\n" ends segment 0; "\nThree" starts with the newline, so it opens the next segment
    assert_ids(delimiter_segments([text], offsets, mask, "newline"), [0, 0, 1, 2, 2, 2])
    assert_ids(delimiter_segments([text], offsets, mask, "sentence"), [0, 0, 1, 2, 2, 3])
    assert_ids(delimiter_segments([text], offsets, mask, "blank_line"), [0, 0, 0, 0, 0, 0])


def test_delimiters_full_layout_special_tokens_and_padding():
    # prompt offsets are garbage (they point past the boundary) and must be ignored; EOS has offsets (0, 0)
    text = "A b.\nC"
    offsets = L([[0, 5], [5, 9], [0, 1], [1, 3], [3, 5], [5, 6], [0, 0], [0, 0]])
    mask = B([0, 0, 1, 1, 1, 1, 1, 0])
    assert_ids(delimiter_segments([text], offsets, mask), [-1, -1, 0, 0, 0, 1, 1, -1])


def test_delimiters_straddling_token_stays_where_it_starts():
    # SentencePiece-style "▁end!\n\nA" holds text before the delimiter: it stays, " new" opens
    text = "The end!\n\nA new"
    offsets = L([[0, 3], [3, 13], [13, 17]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert_ids(delimiter_segments([text], offsets, mask, "sentence"), [0, 0, 1])
    assert_ids(delimiter_segments([text], offsets, mask, "blank_line"), [0, 0, 1])


def test_delimiters_edge_cases():
    rows = [
        ("\nHi\nYo", [[0, 1], [1, 3], [3, 4], [4, 6]]),  # leading newline ends nothing
        ("a\nb\n\nc", [[0, 1], [1, 2], [2, 3], [3, 5]]),  # "c" is cut off: the last match maps to no token
        ("Hi.\n", [[0, 2], [2, 4], [0, 0], [0, 0]]),  # delimiter at the end of the text, then padding
    ]
    texts = [text for text, _ in rows]
    offsets = L(*[o for _, o in rows])
    mask = B([1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0])
    assert_ids(delimiter_segments(texts, offsets, mask), [0, 0, 0, 1], [0, 0, 1, 1], [0, 0, -1, -1])
    assert_ids(delimiter_segments(texts, offsets, B([0] * 4, [0] * 4, [0] * 4)), [-1] * 4, [-1] * 4, [-1] * 4)


def test_delimiters_sentence_details_and_custom_pattern():
    # closing quote after the period; "3.5" is no sentence end
    text = 'He said "hi." Then 3.5 more'
    offsets = L([[0, 2], [2, 7], [7, 9], [9, 11], [11, 13], [13, 18], [18, 20], [20, 22], [22, 27]])
    mask = torch.ones(1, 9, dtype=torch.bool)
    assert_ids(delimiter_segments([text], offsets, mask, "sentence"), [0, 0, 0, 0, 0, 1, 1, 1, 1])
    mask = torch.ones(1, 3, dtype=torch.bool)
    comma = delimiter_segments(["a, b"], L([[0, 1], [1, 2], [2, 4]]), mask, re.compile(r",\s*"))
    assert_ids(comma, [0, 0, 1])


def test_delimiters_bad_input():
    offsets, mask = L([[0, 1]]), B([1])
    with pytest.raises(UserError, match="unknown delimiter 'newlines'"):
        delimiter_segments(["a"], offsets, mask, "newlines")
    with pytest.raises(UserError, match="2 texts for a batch of 1"):
        delimiter_segments(["a", "b"], offsets, mask)


def _tiny_tokenizer(style):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["The cat sat on the mat. The dog ran.\nThe end!\n\nA new paragraph? Yes.", "Hello world.\nHello again."]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    alphabet = []
    if style == "metaspace":
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if style == "bytelevel-trimmed":
            tok.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=alphabet, special_tokens=["<pad>", "<unk>"], show_progress=False
    )
    tok.train_from_iterator(corpus * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def _segment_texts(text, offsets_row, ids_row):
    """Each segment's text: from its first token's start offset to its last token's end offset."""
    firsts, lasts = segment_first_index(ids_row[None])[0], segment_last_index(ids_row[None])[0]
    return [text[offsets_row[f, 0] : offsets_row[l, 1]] for f, l in zip(firsts.tolist(), lasts.tolist())]


TEXT = "The cat sat.\nThe dog ran. The end!\n\nA new"


@pytest.mark.parametrize(
    "style, delimiter, expected",
    [
        ("bytelevel", "newline", ["The cat sat.\n", "The dog ran. The end!\n\n", "A new"]),
        ("bytelevel", "sentence", ["The cat sat.\n", "The dog ran.", " The end!\n\n", "A new"]),
        ("bytelevel", "blank_line", ["The cat sat.\nThe dog ran. The end!\n\n", "A new"]),
        # trimmed offsets leave the space before "The" out of every token
        ("bytelevel-trimmed", "sentence", ["The cat sat.\n", "The dog ran.", "The end!\n\n", "A new"]),
        # this tokenizer merges ".\n" and "▁end!\n\nA": the straddling token stays with the sentence it starts
        ("metaspace", "newline", ["The cat sat.\n", "The dog ran. The end!\n\nA", " new"]),
        ("metaspace", "sentence", ["The cat sat.\n", "The dog ran.", " The end!\n\nA", " new"]),
    ],
)
def test_delimiters_with_trained_fast_tokenizer(style, delimiter, expected):
    tokenizer = _tiny_tokenizer(style)
    texts = [TEXT, "Hello world."]  # the second row is right-padded
    enc = tokenizer(texts, return_offsets_mapping=True, padding=True, return_tensors="pt")
    ids = delimiter_segments(texts, enc["offset_mapping"], enc["attention_mask"], delimiter)
    assert _segment_texts(TEXT, enc["offset_mapping"][0], ids[0]) == expected
    assert _segment_texts(texts[1], enc["offset_mapping"][1], ids[1]) == ["Hello world."]
    assert (ids[1] == -1).tolist() == (enc["attention_mask"][1] == 0).tolist()


# ------------------------------------------------------------------------------------------------- helpers

IDS = L([0, 0, 1, 1, 1, -1], [-1, 0, 1, 2, -1, -1], [-1] * 6)


def test_helpers_worked_example():
    nan = math.nan
    values = F([1, 2, 3, 4, 5, nan], [nan, 7, 8, 9, nan, 100], [1, 1, 1, 1, 1, 1])
    assert num_segments(IDS).tolist() == [2, 3, 0]
    assert segment_lengths(IDS).tolist() == [[2, 3, 0], [1, 1, 1], [0, 0, 0]]
    assert segment_sum(values, IDS).tolist() == [[3, 12, 0], [7, 8, 9], [0, 0, 0]]
    assert segment_sum(values, IDS, num_segments=5).tolist() == [[3, 12, 0, 0, 0], [7, 8, 9, 0, 0], [0] * 5]
    assert segment_mean(values, IDS).tolist() == [[1.5, 4, 0], [7, 8, 9], [0, 0, 0]]
    seg_values = F([10, 20, 30], [1, 2, 3], [7, 8, 9])
    assert broadcast_to_tokens(seg_values, IDS, fill=-5.0).tolist() == [
        [10, 10, 20, 20, 20, -5],
        [-5, 1, 2, 3, -5, -5],
        [-5] * 6,
    ]
    assert segment_first_index(IDS).tolist() == [[0, 2, -1], [1, 2, 3], [-1, -1, -1]]
    assert segment_last_index(IDS).tolist() == [[1, 4, -1], [1, 2, 3], [-1, -1, -1]]
    assert segment_spans(IDS[0]) == [(0, 2), (2, 5)]
    assert segment_spans(IDS[1]) == [(1, 2), (2, 3), (3, 4)]
    assert segment_spans(IDS[2]) == []


def test_helpers_on_a_batch_without_segments():
    ids = L([-1, -1, -1], [-1, -1, -1])
    assert num_segments(ids).tolist() == [0, 0]
    assert segment_sum(torch.ones(2, 3), ids).shape == (2, 0)
    assert segment_mean(torch.ones(2, 3), ids).shape == (2, 0)
    assert segment_last_index(ids).shape == (2, 0)
    assert broadcast_to_tokens(torch.zeros(2, 0), ids, fill=7.0).tolist() == [[7.0] * 3] * 2


def test_helpers_are_differentiable():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]] * 3, requires_grad=True)
    segment_sum(values, IDS).sum().backward()
    assert values.grad.tolist() == (IDS >= 0).float().tolist()
    seg = torch.ones(3, 3, requires_grad=True)
    broadcast_to_tokens(seg, IDS).sum().backward()
    assert seg.grad.tolist() == segment_lengths(IDS).float().tolist()


# ------------------------------------------------------------------------------------ invariants (random)


def _random_batch(seed, batch=6, length=24):
    """Contiguous completion masks in both layouts (random prompt length, right padding, empty rows)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        begin = int(torch.randint(0, length // 2, (1,), generator=gen))
        count = int(torch.randint(0, length - begin + 1, (1,), generator=gen))
        mask[b, begin : begin + count] = True
    return gen, mask


def _check_invariants(ids, mask):
    assert ids.dtype == torch.long and ids.shape == mask.shape
    assert ((ids == -1) == ~mask).all()
    for row, row_mask in zip(ids, mask):
        inside = row[row_mask]
        if len(inside):
            assert inside[0] == 0
            assert set(inside.diff().tolist()) <= {0, 1}


@pytest.mark.parametrize("seed", range(12))
def test_every_segmenter_keeps_the_invariants(seed):
    gen, mask = _random_batch(seed)
    batch, length = mask.shape
    starts = torch.rand(batch, length, generator=gen) < 0.3
    entropy = torch.rand(batch, length, generator=gen) * 4
    probs = torch.rand(batch, length, generator=gen)
    eos = mask & ~torch.cat([mask[:, 1:], torch.zeros(batch, 1, dtype=torch.bool)], dim=1)  # last token

    _check_invariants(segment_ids_from_starts(starts, mask), mask)
    _check_invariants(entropy_segments(entropy, mask, 2.0), mask)
    _check_invariants(entropy_segments(entropy, mask, 2.0, eos_mask=eos), mask & ~eos)
    _check_invariants(cutpoint_segments(probs, mask, 0.9, interval=2), mask)
    _check_invariants(fixed_length_segments(mask, 5), mask)
    _check_invariants(equal_chunk_segments(mask, 4), mask)
    cascade = uncertainty_segments(entropy, mask, tau_u=2.5, min_len=2, max_len=5)
    _check_invariants(cascade, mask)
    lengths = segment_lengths(cascade)
    for row, n in zip(lengths, num_segments(cascade)):
        assert (row[:n] <= 5).all() and (row[: max(n - 1, 0)] >= 2).all()


@pytest.mark.parametrize("seed", range(6))
def test_helper_round_trips(seed):
    gen, mask = _random_batch(seed)
    ids = segment_ids_from_starts(torch.rand(mask.shape, generator=gen) < 0.3, mask)
    lengths = segment_lengths(ids)
    assert (segment_sum(torch.ones(mask.shape), ids) == lengths.float()).all()
    assert (lengths.sum(dim=1) == mask.sum(dim=1)).all()
    assert (num_segments(ids) == (lengths > 0).sum(dim=1)).all()

    per_segment = torch.rand(lengths.shape, generator=gen)
    tokens = broadcast_to_tokens(per_segment, ids, fill=-1.0)
    assert torch.allclose(broadcast_to_tokens(segment_mean(tokens, ids), ids, fill=-1.0), tokens)

    last, first = segment_last_index(ids), segment_first_index(ids)
    for b in range(ids.shape[0]):
        for s in range(int(num_segments(ids)[b])):
            assert ids[b, last[b, s]] == s and ids[b, first[b, s]] == s
            assert last[b, s] + 1 == ids.shape[1] or ids[b, last[b, s] + 1] != s
            assert first[b, s] == 0 or ids[b, first[b, s] - 1] != s
        spans = segment_spans(ids[b])
        assert [end - start for start, end in spans] == lengths[b, : len(spans)].tolist()


def test_decode_with_offsets_spans_concatenate_to_the_text(random_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    ids = tokenizer("12+7=19\n19-5=14\nAnswer: 14\n")["input_ids"] + [tokenizer.eos_token_id]
    text, offsets = decode_with_offsets(tokenizer, ids)
    assert text == "12+7=19\n19-5=14\nAnswer: 14\n"
    assert offsets[-1][0] == offsets[-1][1] == len(text)  # EOS is special: it spans nothing
    assert "".join(text[a:b] for a, b in offsets) == text
    assert all(a <= b for a, b in offsets) and all(b == c for (_, b), (c, _) in zip(offsets, offsets[1:]))
    ids_row = delimiter_segments([text], torch.tensor([offsets]), torch.ones(1, len(ids), dtype=torch.bool))[0]
    lines = ["".join(text[a:b] for (a, b), s in zip(offsets, ids_row.tolist()) if s == k) for k in range(3)]
    assert lines == ["12+7=19\n", "19-5=14\n", "Answer: 14\n"]


def test_delimiter_segments_of_padded_token_ids(random_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    first = tokenizer("a=1\nb=2\n")["input_ids"]
    second = tokenizer("c=3")["input_ids"]
    width = max(len(first), len(second))
    ids = torch.tensor([first + [tokenizer.pad_token_id] * (width - len(first)),
                        second + [tokenizer.pad_token_id] * (width - len(second))])
    mask = torch.arange(width).expand(2, -1) < torch.tensor([[len(first)], [len(second)]])
    segment_ids = delimiter_segments_of_ids(tokenizer, ids, mask, "newline")
    assert num_segments(segment_ids).tolist() == [2, 1]
    assert (segment_ids[~mask] == -1).all()
    first_line = [i for i, s in enumerate(segment_ids[0].tolist()) if s == 0]
    assert tokenizer.decode(ids[0, first_line]) == "a=1\n"
