"""Shared-prefix Monte Carlo rollouts (segrl.mc_rollouts): the continuations and next-token distribution of
``generate`` on the states repeated N times, EOS and length handling, the fallback, and SPO-chain on top of it."""

import logging

import pytest
import torch
from datasets import Dataset
from transformers import (AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM)

import segrl.trainers.spo as spo_module
from segrl.mc_rollouts import _log_once, sample_continuations, shared_prefix_inputs
from segrl.trainers.spo import SPOConfig, SPOTrainer

VOCAB, PAD = 50, 0
# Different lengths (left padding); [9] has no prefix to cache (its row of the cache is all padding).
STATES = [[3, 4, 5], [9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [11, 12]]
N = 3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=PAD)
    return LlamaForCausalLM(config).float().eval()


def generation_config(eos=(VOCAB,), **settings) -> GenerationConfig:
    """Greedy by default; ``eos`` VOCAB is no token, so that only the length stops a row."""
    return GenerationConfig(**{"do_sample": False, **settings}, pad_token_id=PAD, eos_token_id=list(eos),
                            disable_compile=True)


def repeated_states(model, states, n, config):
    """The path without sharing, as TRL's ``_generate_single_turn`` takes it: every state n times, left-padded
    into one batch, one ``generate`` call. Returns generate's output and the padded width."""
    rows = [state for state in states for _ in range(n)]
    width = max(len(row) for row in rows)
    ids = torch.tensor([[PAD] * (width - len(row)) + row for row in rows])
    mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
    with torch.no_grad():
        return model.generate(input_ids=ids, attention_mask=mask, generation_config=config), width


def cut_at_first(row: list[int], eos: set[int]) -> list[int]:
    return next((row[: i + 1] for i, token in enumerate(row) if token in eos), row)


REPORT = dict(output_logits=True, output_scores=True, return_dict_in_generate=True)


def test_greedy_continuations_and_logits_equal_generate_on_repeated_states(model):
    """Token for token, with the logits of every step (the cache's later columns and positions included)."""
    shared = sample_continuations(model, STATES, N, 10, generation_config())
    config = generation_config(max_new_tokens=10, **REPORT)
    unshared, width = repeated_states(model, STATES, N, config)
    assert shared == unshared.sequences[:, width:].tolist()
    assert len(shared) == len(STATES) * N and all(len(c) == 10 for c in shared)
    with torch.no_grad():
        steps = model.generate(**shared_prefix_inputs(model, STATES, N, config), generation_config=config).logits
    torch.testing.assert_close(torch.stack(steps), torch.stack(unshared.logits), atol=1e-5, rtol=0)


def test_first_token_distribution_equals_a_full_forward(model):
    """The logits generate samples the first token from equal an uncached, unpadded forward over the whole state,
    and after TRL's sampling settings (temperature, top-k, top-p, min-p, repetition penalty over the state) the
    processed scores equal those of the path without sharing."""
    config = generation_config(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, min_p=0.02,
                               repetition_penalty=1.3, max_new_tokens=1, **REPORT)
    inputs = shared_prefix_inputs(model, STATES, N, config)
    assert inputs["cache"].get_seq_length() == max(map(len, STATES)) - 1
    with torch.no_grad():
        shared = model.generate(**inputs, generation_config=config)
        reference = torch.stack([model(input_ids=torch.tensor([state])).logits[0, -1] for state in STATES])
    torch.testing.assert_close(shared.logits[0], reference.repeat_interleave(N, dim=0), atol=1e-5, rtol=0)
    unshared, _ = repeated_states(model, STATES, N, config)
    assert torch.equal(torch.isinf(shared.scores[0]), torch.isinf(unshared.scores[0]))  # the same tokens filtered
    finite = torch.isfinite(unshared.scores[0])
    torch.testing.assert_close(shared.scores[0][finite], unshared.scores[0][finite], atol=1e-5, rtol=0)


def test_continuations_stop_after_eos_or_at_max_new_tokens(model):
    room = 6
    free = sample_continuations(model, STATES, 1, room, generation_config())
    # An EOS that the first state's greedy continuation reaches mid-way (the tokens after it never come).
    stop = next(i for i in range(1, room - 1) if free[0][i] not in free[0][:i])
    eos = free[0][stop]
    config = generation_config(eos=(eos, VOCAB + 1))
    shared = sample_continuations(model, STATES, N, room, config)
    assert shared[:N] == [free[0][: stop + 1]] * N
    for continuation, unconstrained in zip(shared, [c for c in free for _ in range(N)]):
        assert continuation == cut_at_first(unconstrained, {eos})
        assert len(continuation) == room or continuation[-1] == eos
    sequences, width = repeated_states(model, STATES, N, generation_config(eos=(eos, VOCAB + 1), max_new_tokens=room))
    assert shared == [cut_at_first(row, {eos}) for row in sequences[:, width:].tolist()]
    assert sample_continuations(model, STATES, N, 1, config) == [c[:1] for c in shared]


def test_single_token_states_need_no_cache(model):
    states = [[5], [7]]
    inputs = shared_prefix_inputs(model, states, N, generation_config())
    assert "cache" not in inputs
    sequences, width = repeated_states(model, states, N, generation_config(max_new_tokens=4))
    assert sample_continuations(model, states, N, 4, generation_config()) == sequences[:, width:].tolist()


def test_caches_it_cannot_share_are_refused_once(model, caplog):
    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=2, sliding_window=4, pad_token_id=PAD)
    sliding = MistralForCausalLM(config).eval()
    _log_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="segrl.mc_rollouts"):
        assert sample_continuations(sliding, STATES, N, 4, generation_config()) is None
        assert sample_continuations(sliding, STATES, N, 4, generation_config()) is None
        assert sample_continuations(model, STATES, N, 4, generation_config(cache_implementation="static")) is None
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "DynamicSlidingWindowLayer" in messages[0] and "'static'" in messages[1]


# ---------------------------------------------------------------------------------------------------- SPO-chain


def letters_reward(prompts, completions, **kwargs):
    return [text.count("e") / max(1, sum(c.isalpha() for c in text)) for text in completions]


@pytest.fixture
def spo(random_model_dir, tmp_path):
    def build(**overrides):
        torch.manual_seed(0)
        config = SPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                           max_completion_length=8, max_steps=1, learning_rate=1e-2, report_to="none",
                           logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0,
                           partition="fixed", segment_length=2, num_mc_samples=3, **overrides)
        dataset = Dataset.from_dict({"prompt": ["The soup was", "We sat by the", "Would we", "The bread"] * 2})
        return SPOTrainer(model=AutoModelForCausalLM.from_pretrained(random_model_dir), reward_funcs=[letters_reward],
                          args=config, train_dataset=dataset,
                          processing_class=AutoTokenizer.from_pretrained(random_model_dir))

    return build


def mc_batch(trainer):
    """One batch of two prompts' groups; returns the MC rollouts' (states, continuations) calls."""
    calls = []

    def record(states, n, room):
        continuations = SPOTrainer._mc_rollouts(trainer, states, n, room)
        calls.append((states, continuations))
        return continuations

    trainer._mc_rollouts = record
    trainer.model.train()
    torch.manual_seed(3)
    trainer._generate_and_score_completions([{"prompt": "The soup was"}] * 2 + [{"prompt": "Would we"}] * 2)
    return calls


def spy(monkeypatch, result=sample_continuations) -> list:
    """Record the calls SPOTrainer makes to ``sample_continuations``, which returns what ``result`` does."""
    calls = []
    monkeypatch.setattr(spo_module, "sample_continuations", lambda *args: calls.append(args) or result(*args))
    return calls


def test_spo_chain_rollouts_equal_the_unshared_path_under_greedy_decoding(spo, monkeypatch):
    """Greedy continuations (generation_kwargs) are deterministic: sharing the prefix changes none of them; a cache
    that cannot be shared falls back to TRL's path."""
    trainer = spo(generation_kwargs={"do_sample": False})
    shared_calls = spy(monkeypatch)
    shared = mc_batch(trainer)
    assert len(shared_calls) == len(shared) == 1
    states, continuations = shared[0]
    assert len({len(state) for state in states}) > 1  # left padding is exercised
    assert len(continuations) == 3 * len(states) and any(continuations)
    refused = spy(monkeypatch, result=lambda *args: None)  # as for a cache it cannot share
    assert mc_batch(trainer) == shared and len(refused) == 1


def test_a_replaced_sampler_receives_every_rollout(spo, monkeypatch):
    trainer = spo()
    shared_calls = spy(monkeypatch)
    contexts = []
    generate = trainer._generate_single_turn
    trainer._generate_single_turn = lambda prompts, *a, **k: contexts.append(prompts) or generate(prompts, *a, **k)
    (states, _), = mc_batch(trainer)
    assert not shared_calls
    assert contexts[1] == [state for state in states for _ in range(3)]  # after the policy's call: each state N times


def test_spo_chain_trains_a_step_with_shared_rollouts(spo, monkeypatch):
    trainer = spo()
    calls = spy(monkeypatch)
    trainer.train()
    assert calls
    log = next(entry for entry in trainer.state.log_history if "loss" in entry)
    assert log["segments/mc_tokens"] > 0 and torch.isfinite(torch.tensor(log["loss"]))
