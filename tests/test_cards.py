"""CARDS (segrl.decoding.cards): thresholds and acceptance on hand-computed numbers, the cascade's cut points, the
retry cap, known outputs of a scripted model, batch = single prompt, bad input."""

import math

import pytest
import torch
from scripted import EOS, CharTokenizer, ScriptedLM, char_id, peaked, uncertain

from segrl.decoding.cards import (
    CardsConfig,
    acceptance_probability,
    cards,
    initial_threshold,
    reward_threshold,
)
from segrl.errors import UserError


pytestmark = pytest.mark.usefixtures("one_thread")


class Recorder:
    """A scorer that records every (prompt, response) it is asked about; ``fn(response) -> float``."""

    name = "recorder"

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, prompts, responses):
        self.calls.extend(zip(prompts, responses))
        return [self.fn(r) for r in responses]


def run(model, scorer, prompts, **overrides):
    config = CardsConfig(**{"target_reward": 0.0, "top_k": 1, **overrides})
    return sorted(cards(model, CharTokenizer(), scorer, prompts, config), key=lambda r: r.index)


# ------------------------------------------------------------------------------------------------ pure rules


def test_thresholds_on_hand_computed_numbers():
    r0 = initial_threshold(-1.0, 0.6, 0.5)
    assert r0 == pytest.approx(-0.2)  # 0.5 * -1 + 0.5 * 0.6
    assert reward_threshold(0, r0, 0.6, 128) == pytest.approx(-0.2)
    assert reward_threshold(32, r0, 0.6, 128) == pytest.approx(0.0)  # -0.2 + 32/128 * 0.8
    assert reward_threshold(96, r0, 0.6, 128) == pytest.approx(0.4)
    assert reward_threshold(200, r0, 0.6, 128) == pytest.approx(0.6)  # capped at r*
    # a prompt already above r*: the threshold is r* throughout
    assert reward_threshold(10, initial_threshold(2.0, 0.6, 0.5), 0.6, 128) == pytest.approx(0.6)
    tensor = reward_threshold(torch.tensor([0, 64, 128, 256]), -0.2, 0.6, 128)
    assert tensor.tolist() == pytest.approx([-0.2, 0.2, 0.6, 0.6])
    assert initial_threshold(math.nan, 0.6, 0.5) == 0.6  # an unscorable prompt starts at r*


def test_acceptance_rules():
    assert acceptance_probability(-0.35, 0.0, 0.7) == pytest.approx(math.exp(-0.5))  # 0.6065
    assert acceptance_probability(0.3, 0.0, 0.7) == 1.0
    assert acceptance_probability(0.0, 0.0, 0.7) == 1.0
    assert acceptance_probability(-0.01, 0.0, 0.7, "hard") == 0.0
    assert acceptance_probability(0.0, 0.0, 0.7, "hard") == 1.0
    assert acceptance_probability(math.nan, -5.0, 0.7) == 0.0
    assert acceptance_probability(-1e6, 0.0, 0.7) == 0.0


def test_config_checks():
    with pytest.raises(UserError, match="target_reward"):
        CardsConfig(target_reward=math.nan)
    with pytest.raises(UserError, match="acceptance"):
        CardsConfig(target_reward=0.0, acceptance="maybe")
    with pytest.raises(UserError, match="min_segment_tokens"):
        CardsConfig(target_reward=0.0, min_segment_tokens=10, max_segment_tokens=5)
    with pytest.raises(UserError, match="batch_size must be an integer >= 1"):
        CardsConfig(target_reward=0.0, batch_size=0)
    with pytest.raises(UserError, match="top_k"):
        CardsConfig(target_reward=0.0, top_k=True)


# ------------------------------------------------------------------------------------------------ segmentation


def script_by_length(uncertain_at: set[int], length: int, prompt_len: int):
    """Emits 'a','b','c',... in turn; the distribution of response token t is uncertain when t is in the set;
    EOS after ``length`` response tokens."""

    def rule(visible):
        t = len(visible) - prompt_len
        if t >= length:
            return peaked(EOS)
        token = char_id("abcdefghijklmnopqrstuvwxyz"[t % 26])
        return uncertain(token) if t in uncertain_at else peaked(token)

    return rule


def candidate_lengths(recorder, prompt):
    """Lengths of the successive accepted candidates, read off the responses the scorer saw (all accepted)."""
    texts = [r for p, r in recorder.calls if p == prompt and r]
    return [len(b) - len(a) for a, b in zip([""] + texts, texts)]


def test_cascade_ends_segments_where_the_spec_says():
    # uncertain before response tokens 2, 6, 9, 13: token 2 comes too early (2 < 4 tokens in the segment), so
    # segment 0 = tokens 0..5; segment 1 starts at 6, token 9 comes after 3 tokens (kept), 13 after 7 (cut)
    recorder = Recorder(lambda r: 1.0)
    model = ScriptedLM(script_by_length({2, 6, 9, 13}, length=20, prompt_len=2))
    (result,) = run(model, recorder, ["hi"])
    assert candidate_lengths(recorder, "hi") == [6, 7, 7]  # the last: tokens 13..19, then EOS (not in the text)
    assert result.text == "abcdefghijklmnopqrst"
    assert result.tokens == 21 and result.finish == "eos"
    assert result.segments == 3 and result.rejections == 0
    assert result.rm_calls == 4  # RM(x) + three candidates


def test_segment_cap_and_length_cap():
    recorder = Recorder(lambda r: 1.0)
    model = ScriptedLM(script_by_length(set(), length=1000, prompt_len=2))
    (result,) = run(model, recorder, ["hi"], max_segment_tokens=8, max_new_tokens=20)
    assert candidate_lengths(recorder, "hi") == [8, 8, 4]  # the last segment is cut at L_max
    assert result.tokens == 20 and result.finish == "length"


# ------------------------------------------------------------------------------------------------ retries


def test_retry_cap_accepts_the_best_candidate():
    """Hard acceptance with an unreachable r*: every position sees exactly K candidates, then takes the best."""

    def rule(visible):
        logits = torch.zeros(len(CharTokenizer().get_vocab()))
        if len(visible) - 2 >= 8:
            logits[EOS] = 50.0
        else:
            logits[[char_id(c) for c in "abcd"]] = 10.0  # four equally likely tokens, entropy ln 4 < 3
        return logits

    recorder = Recorder(lambda r: r.count("a") - 0.01 * len(r))
    model = ScriptedLM(rule)
    (result,) = run(model, recorder, ["hi"], target_reward=100.0, acceptance="hard", top_k=4, max_rejections=3,
                    max_segment_tokens=4, min_segment_tokens=4)
    candidates = [r for _, r in recorder.calls[1:]]
    assert len(candidates) == 9  # three positions (4 + 4 tokens + EOS) x K = 3
    first = candidates[:3]
    best = max(first, key=recorder.fn)
    assert all(c.startswith(best) for c in candidates[3:6])  # the next position grows the best candidate
    assert result.fallbacks == 3 and result.rejections == 9 and result.segments == 3
    assert result.reward == pytest.approx(recorder.fn(result.text))
    # the fallback fed the best candidate again when it was not the latest: those tokens count as policy tokens
    assert result.policy_tokens >= 4 * 3 + 4 * 3 + 3


def test_soft_rejection_rate_matches_the_acceptance_probability():
    """A candidate scoring 0.5 below the threshold is accepted with probability exp(-0.5 / 0.7) ~ 0.49."""
    model = ScriptedLM(script_by_length(set(), length=4, prompt_len=2))
    recorder = Recorder(lambda r: -0.5 if r else 0.0)  # RM(x) = 0 = r*, so tau = 0 throughout
    results = run(model, recorder, ["hi"] * 300, target_reward=0.0, batch_size=50, max_rejections=1000)
    candidates = sum(r.segments + r.rejections for r in results)
    rate = sum(r.segments for r in results) / candidates
    assert rate == pytest.approx(math.exp(-0.5 / 0.7), abs=0.05)


# ------------------------------------------------------------------------------------------------ known output, KV cache


def naive_cards(rule, score, prompt, index, config):
    """CARDS for one prompt without any cache or batch: the model is asked about the whole visible sequence at
    every step (hard acceptance only, so the random stream is consumed by sampling alone)."""
    from segrl.decoding.base import row_generator
    from segrl.decoding.batch import sample_top_k
    from segrl.segmentation import token_entropy

    tokenizer = CharTokenizer()
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    generator = row_generator(config.seed, "cards", index)
    r0 = initial_threshold(score(""), config.target_reward, config.alpha)
    response, best, rejections, in_a_row = [], None, 0, 0
    while True:
        candidate = []
        while True:
            logits = torch.as_tensor(rule(prompt_ids + response + candidate), dtype=torch.float)
            if len(candidate) >= config.min_segment_tokens and token_entropy(logits).item() >= config.tau_u:
                break
            token = sample_top_k(logits[None], [generator], config.top_k, config.temperature).item()
            candidate.append(token)
            room = config.max_new_tokens - len(response)
            if token == EOS or len(candidate) >= min(room, config.max_segment_tokens):
                break
        reward = score(tokenizer.decode(response + candidate))
        tau = reward_threshold(len(response) + len(candidate), r0, config.target_reward, config.max_new_tokens)
        if best is None or reward > best[0]:
            best = (reward, candidate)
        if reward >= tau:
            chosen = candidate
        else:
            rejections, in_a_row = rejections + 1, in_a_row + 1
            if in_a_row < config.max_rejections:
                continue
            chosen = best[1]
        response, best, in_a_row = response + chosen, None, 0
        if response[-1] == EOS or len(response) >= config.max_new_tokens:
            return tokenizer.decode(response), rejections


def test_known_output_equals_a_cache_free_implementation():
    """The scripted model's next token depends on the sum of every visible token, so a rejected candidate left
    visible in the KV cache, or an accepted one hidden, changes the text; a plain re-implementation that feeds the
    whole sequence at every step gives the expected output."""

    def rule(visible):
        if len(visible) >= 16:
            return peaked(EOS)
        logits = torch.zeros(len(CharTokenizer().get_vocab()))
        logits[[char_id(c) for c in "xyzw"]] = 5.0
        logits[char_id("xyzw"[sum(visible) % 4])] += 1.5  # a prefix-dependent favourite
        if sum(visible) % 7 == 0:
            logits[:] = 0.0  # an uncertain step: the cascade may cut here
            logits[char_id("q")] = 1.0
        return logits

    def score(response):
        return response.count("x") - response.count("z") - 0.1 * len(response)

    prompts = ["abc", "hey", "hello", "q"]
    config = CardsConfig(target_reward=0.5, acceptance="hard", top_k=5, max_segment_tokens=5, max_rejections=3,
                         batch_size=3, seed=7)
    results = sorted(cards(ScriptedLM(rule), CharTokenizer(), Recorder(score), prompts, config),
                     key=lambda r: r.index)
    expected = [naive_cards(rule, score, p, i, config) for i, p in enumerate(prompts)]
    assert [(r.text, r.rejections) for r in results] == expected
    assert sum(r.rejections for r in results) > 0 and sum(r.fallbacks for r in results) > 0  # both paths ran


def test_batch_and_single_prompt_decoding_agree():
    def rule(visible):
        if len(visible) > 40:
            return peaked(EOS)
        logits = torch.zeros(len(CharTokenizer().get_vocab()))
        logits[[char_id(c) for c in "abcdefgh"]] = torch.arange(8, dtype=torch.float) / 4
        if sum(visible) % 5 == 0:
            logits[char_id(" ")] = 1.0
        return logits

    prompts = ["one", "two two", "three", "fo", "five five five"]
    scorer = Recorder(lambda r: (r.count("h") - r.count("a")) / (1 + len(r)))
    settings = {"target_reward": 0.1, "top_k": 8, "max_segment_tokens": 6, "max_new_tokens": 24,
                "max_rejections": 4, "seed": 3}
    single = run(ScriptedLM(rule), scorer, prompts, batch_size=1, **settings)
    batched = run(ScriptedLM(rule), scorer, prompts, batch_size=3, **settings)
    fields = ("text", "reward", "tokens", "policy_tokens", "rm_calls", "segments", "rejections", "fallbacks")
    assert [[getattr(r, f) for f in fields] for r in single] == [[getattr(r, f) for f in fields] for r in batched]
    assert len({r.text for r in single}) == len(prompts)


def test_batch_and_single_agree_on_a_real_model(random_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    scorer = Recorder(lambda r: r.count("e") / (1 + len(r)))
    prompts = ["The soup", "We sat by", "Would we", "The waiter smiled"]
    config = {"target_reward": 0.2, "max_new_tokens": 16, "max_segment_tokens": 5, "max_rejections": 3,
              "tau_u": 5.0, "seed": 1}
    single = sorted(cards(model, tokenizer, scorer, prompts, CardsConfig(batch_size=1, **config)), key=lambda r: r.index)
    batched = sorted(cards(model, tokenizer, scorer, prompts, CardsConfig(batch_size=4, **config)), key=lambda r: r.index)
    assert [(r.text, r.rejections) for r in single] == [(r.text, r.rejections) for r in batched]
    assert all(r.tokens > 0 for r in single)


# ------------------------------------------------------------------------------------------------ bad input


def test_failing_and_nan_rewards_are_rejected_and_counted():
    model = ScriptedLM(script_by_length(set(), length=8, prompt_len=2))
    state = {"calls": 0}

    def flaky(prompts, responses):
        state["calls"] += 1
        if state["calls"] % 3 == 0:
            raise RuntimeError("reward server down")
        return [math.nan if r.endswith("d") else 1.0 for r in responses]

    (result,) = run(model, flaky, ["hi"], max_segment_tokens=4, max_rejections=2, acceptance="hard")
    assert result.reward_errors > 0
    assert result.text == "abcdefgh" and result.finish == "eos"
    # "abcd" scores NaN: never accepted, so the position falls back after K = 2 candidates (all NaN)
    assert result.fallbacks >= 1


def test_bad_prompts_are_skipped_with_a_reason():
    model = ScriptedLM(script_by_length(set(), length=3, prompt_len=2), max_positions=20)
    results = run(model, Recorder(lambda r: 1.0), ["hi", "", "x" * 30, "ok"], max_new_tokens=10)
    assert [r.error is None for r in results] == [True, False, False, True]
    assert "empty" in results[1].error and "context" in results[2].error
    assert results[1].text is None and results[1].finish == "skipped"
    assert results[3].text == "abc"


def test_unreachable_target_terminates_with_fallbacks():
    model = ScriptedLM(script_by_length(set(), length=12, prompt_len=2))
    (result,) = run(model, Recorder(lambda r: 0.0), ["hi"], target_reward=1e9, acceptance="hard",
                    max_segment_tokens=4, max_rejections=5)
    assert result.text == "abcdefghijkl"
    assert result.fallbacks == result.segments == 4  # 3 x 4 tokens, then EOS alone
    assert result.rejections == 4 * 5
