"""SequenceBatch: every cache edit keeps each row's logits equal to a cache-free run on its kept tokens; sample_top_k."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.cache_utils import DynamicLayer

from segrl.decoding.batch import SequenceBatch, _check_cache, sample_top_k
from segrl.errors import UserError

VOCAB = 50
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
    )
    return LlamaForCausalLM(config).float().eval()


def reference(model, sequence):
    """The next-token logits after ``sequence``, from scratch, without a cache."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([sequence])).logits[0, -1].float()


def feed_and_check(batch, seqs, additions, model, pad=0, every_position=True):
    """Feed one block (row i gets ``additions[i]``, possibly empty), check the logits at each row's last valid
    position (at every valid one with ``every_position``) against a cache-free run, and append the tokens to
    ``seqs``. Returns the column where the block starts."""
    start = batch.width
    width = max(1, max(len(a) for a in additions))
    tokens = torch.full((len(additions), width), pad, dtype=torch.long)
    valid = torch.zeros(len(additions), width, dtype=torch.bool)
    for row, added in enumerate(additions):
        tokens[row, : len(added)] = torch.tensor(added, dtype=torch.long)
        valid[row, : len(added)] = True
    logits = batch.feed(tokens, valid)
    assert logits.shape == (len(additions), width, VOCAB) and logits.dtype == torch.float32
    for row, added in enumerate(additions):
        for j in range(len(added)) if every_position else range(max(0, len(added) - 1), len(added)):
            torch.testing.assert_close(logits[row, j], reference(model, seqs[row] + added[: j + 1]), atol=ATOL, rtol=0)
        seqs[row] = seqs[row] + list(added)
    assert batch.num_tokens.tolist() == [len(s) for s in seqs]
    return start


def probe(batch, seqs, model, first_token=7):
    """Feed one token per row and check every row's logits (the property the module promises)."""
    feed_and_check(batch, seqs, [[(first_token + row) % VOCAB] for row in range(batch.size)], model)


def assert_compact(batch, seqs):
    kept = [len(s) for s in seqs]
    assert batch.width == max(kept)
    assert batch.num_tokens.tolist() == kept
    for row, n in enumerate(kept):
        assert batch.live[row].tolist() == [False] * (batch.width - n) + [True] * n  # right-aligned
    for layer in batch.cache.layers:
        assert layer.keys.shape[0] == batch.size and layer.keys.shape[2] == batch.width
        assert layer.values.shape[2] == batch.width


def test_prefill_of_different_lengths_matches_cache_free_logits(model):
    sequences = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16], [17]]
    batch, last = SequenceBatch.prefill(model, sequences)
    assert last.shape == (4, VOCAB)
    for row, sequence in enumerate(sequences):
        torch.testing.assert_close(last[row], reference(model, sequence), atol=ATOL, rtol=0)
    assert batch.size == 4 and batch.width == 7
    assert batch.num_tokens.tolist() == [5, 2, 7, 1]
    assert batch.live.sum(1).tolist() == [5, 2, 7, 1]
    seqs = [list(s) for s in sequences]
    probe(batch, seqs, model)


def test_candidate_rounds_drop_compact_select_repeat_extend(model):
    sequences = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16]]
    batch, _ = SequenceBatch.prefill(model, sequences)
    seqs = [list(s) for s in sequences]

    # round 1: rows add 3, 1 and 2 tokens; rows 0 and 2 reject theirs
    before = [list(s) for s in seqs]
    start = feed_and_check(batch, seqs, [[20, 21, 22], [23], [24, 25]], model, every_position=True)
    batch.drop(torch.tensor([True, False, True]), start)
    seqs = [before[0], seqs[1], before[2]]
    assert batch.num_tokens.tolist() == [5, 3, 7]
    assert batch.live.sum(1).tolist() == [5, 3, 7]
    probe(batch, seqs, model)

    # round 2: a row adds nothing; row 1 rejects its 4 tokens, row 2 keeps its 2
    before = [list(s) for s in seqs]
    start = feed_and_check(batch, seqs, [[30], [31, 32, 33, 34], [35, 36]], model)
    batch.drop(torch.tensor([False, True, False]), start)
    seqs[1] = before[1]
    feed_and_check(batch, seqs, [[37, 38], [], [39]], model)  # a row with no valid token in a block
    width_before = batch.width
    batch.compact()
    assert batch.width < width_before
    assert_compact(batch, seqs)
    probe(batch, seqs, model)

    # a candidate after compact, dropped by every row: compact returns to the same shape
    before = [list(s) for s in seqs]
    start = feed_and_check(batch, seqs, [[40, 41], [42], [43, 44, 45]], model)
    batch.drop(torch.ones(3, dtype=torch.bool), start)
    seqs = before
    batch.compact()
    assert_compact(batch, seqs)
    probe(batch, seqs, model)

    # select reorders and drops row 1
    batch.select(torch.tensor([2, 0]))
    seqs = [seqs[2], seqs[0]]
    assert batch.size == 2 and batch.num_tokens.tolist() == [len(s) for s in seqs]
    probe(batch, seqs, model)

    # repeat: row i becomes rows 2i, 2i+1, which then diverge
    batch.repeat(2)
    seqs = [seqs[0], seqs[0], seqs[1], seqs[1]]
    assert batch.size == 4 and batch.num_tokens.tolist() == [len(s) for s in seqs]
    feed_and_check(batch, seqs, [[1, 2], [3], [4, 5, 6], [7]], model)
    probe(batch, seqs, model)

    # extend with a batch wider than this one, then with one narrower
    wide_seqs = [list(range(1, 30)), [48, 47]]
    other, _ = SequenceBatch.prefill(model, wide_seqs)
    assert other.width > batch.width
    batch.extend(other)
    seqs = seqs + [list(s) for s in wide_seqs]
    assert batch.size == 6 and batch.width == other.width
    assert batch.num_tokens.tolist() == [len(s) for s in seqs]
    probe(batch, seqs, model)

    narrow_seqs = [[11, 12, 13]]
    narrow, _ = SequenceBatch.prefill(model, narrow_seqs)
    width = batch.width
    batch.extend(narrow)
    seqs = seqs + [list(s) for s in narrow_seqs]
    assert batch.size == 7 and batch.width == width
    probe(batch, seqs, model)

    # a last candidate round over the extended batch, then compact
    before = [list(s) for s in seqs]
    start = feed_and_check(batch, seqs, [[9] * (row % 3) for row in range(7)], model)
    rejected = torch.tensor([row % 2 == 0 for row in range(7)])
    batch.drop(rejected, start)
    seqs = [before[row] if rejected[row] else seqs[row] for row in range(7)]
    batch.compact()
    assert_compact(batch, seqs)
    probe(batch, seqs, model)


def test_extend_a_wider_batch_with_a_narrower_one_keeps_width(model):
    batch, _ = SequenceBatch.prefill(model, [[1, 2, 3, 4, 5, 6]])
    other, _ = SequenceBatch.prefill(model, [[7], [8, 9]])
    batch.extend(other)
    assert batch.width == 6
    assert batch.live.tolist() == [[True] * 6, [False] * 4 + [True, False], [False] * 4 + [True, True]]
    probe(batch, [[1, 2, 3, 4, 5, 6], [7], [8, 9]], model)


def test_prefill_refuses_an_empty_sequence(model):
    with pytest.raises(ValueError):
        SequenceBatch.prefill(model, [[1, 2], []])
    with pytest.raises(ValueError):
        SequenceBatch.prefill(model, [])


def test_check_cache_refuses_other_layer_types(model):
    class Other:
        pass

    class Cache:
        def __init__(self, layers):
            self.layers = layers

    with pytest.raises(UserError, match="Other"):
        _check_cache(Cache([DynamicLayer(), Other()]))
    with pytest.raises(UserError):
        _check_cache(object())  # no layers at all
    _check_cache(Cache([DynamicLayer(), DynamicLayer()]))  # accepted
    batch, _ = SequenceBatch.prefill(model, [[1, 2]])
    _check_cache(batch.cache)


def test_sliding_window_model_is_refused():
    torch.manual_seed(0)
    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, sliding_window=4)
    with pytest.raises(UserError, match="DynamicSlidingWindowLayer"):
        SequenceBatch.prefill(MistralForCausalLM(config).eval(), [[1, 2, 3]])


def _generators(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def test_top_k_1_is_argmax():
    torch.manual_seed(1)
    logits = torch.randn(6, VOCAB)
    tokens = sample_top_k(logits, _generators(range(6)), top_k=1, temperature=0.7)
    assert tokens.dtype == torch.long and tokens.tolist() == logits.argmax(-1).tolist()


def test_a_rows_sample_depends_only_on_its_generator():
    torch.manual_seed(2)
    logits = torch.randn(4, VOCAB)
    for seed in range(20):
        seeds = [seed, 100 + seed, 200 + seed, 300 + seed]
        together = sample_top_k(logits, _generators(seeds), top_k=10, temperature=1.5)
        for row in range(4):
            alone = sample_top_k(logits[row : row + 1], _generators([seeds[row]]), top_k=10, temperature=1.5)
            assert alone.item() == together[row].item()
        # the same row in another batch position, with other neighbours
        swapped = sample_top_k(logits[[3, 1]], _generators([seeds[3], 999]), top_k=10, temperature=1.5)
        assert swapped[0].item() == together[3].item()


def test_top_2_frequencies_match_tempered_softmax():
    logits = torch.tensor([0.1, 2.0, -1.0, 1.5, 0.9, -0.3, 1.2, 0.0])
    temperature, draws = 0.7, 2000
    tokens = sample_top_k(logits.expand(draws, -1), _generators(range(draws)), top_k=2, temperature=temperature)
    assert set(tokens.tolist()) <= {1, 3}  # only the two largest logits
    expected = torch.softmax(torch.tensor([2.0, 1.5]) / temperature, dim=0)
    observed = torch.tensor([(tokens == 1).float().mean(), (tokens == 3).float().mean()])
    assert observed.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(observed, expected, atol=0.04, rtol=0)


def test_top_k_above_vocabulary_samples_the_full_softmax():
    logits = torch.tensor([1.0, 0.0, -0.5])
    draws = 2000
    tokens = sample_top_k(logits.expand(draws, -1), _generators(range(draws)), top_k=100, temperature=1.0)
    observed = torch.bincount(tokens, minlength=3).float() / draws
    torch.testing.assert_close(observed, torch.softmax(logits, 0), atol=0.04, rtol=0)
