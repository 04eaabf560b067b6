"""Reward scorers for decoding: function, sequence classifier, segment reward model, safe_scores and load_scorer."""

import math

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForSequenceClassification,
)

from segrl import segment_rm
from segrl.decoding.scorers import (
    FunctionScorer,
    SegmentRewardScorer,
    SequenceClassifierScorer,
    load_scorer,
    safe_scores,
)
from segrl.errors import UserError
from segrl.prepare import tokenize_prompt
from segrl.segmentation import entropy_segments, token_entropy

ATOL = 1e-5

PROMPTS = ["The soup was", "We sat by the window and", "Would"]
RESPONSES = [" hot. The bread was fresh!", " smiled.", " we come back? Yes, we would."]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer(random_model_dir):
    return AutoTokenizer.from_pretrained(random_model_dir)


@pytest.fixture(scope="module")
def reference(random_model_dir):
    return AutoModelForCausalLM.from_pretrained(random_model_dir).eval()


# ------------------------------------------------------------------------------------------------ FunctionScorer


def test_function_scorer_passes_keywords_and_maps_none_to_nan():
    calls = []

    def fn(**kwargs):
        calls.append(kwargs)
        return [1, None, -0.5]

    scorer = FunctionScorer(fn)
    scores = scorer(["p1", "p2", "p3"], ["a", "b", "c"])
    assert calls == [{"prompts": ["p1", "p2", "p3"], "completions": ["a", "b", "c"]}]
    assert scores[0] == 1.0 and isinstance(scores[0], float)
    assert math.isnan(scores[1]) and scores[2] == -0.5
    assert FunctionScorer(fn, name="mine").name == "mine"
    assert "fn" in scorer.name


# --------------------------------------------------------------------------------------------------- safe_scores


def test_safe_scores_falls_back_to_one_by_one():
    calls = []

    def scorer(prompts, responses):
        calls.append(list(responses))
        if len(responses) > 1:
            raise RuntimeError("batch failure")
        if responses[0].startswith("bad"):
            raise ValueError("cannot score this one")
        return [float(len(responses[0]))]

    scores, failures = safe_scores(scorer, ["p"] * 4, ["ok", "bad1", "three", "bad2"])
    assert scores[0] == 2.0 and scores[2] == 5.0
    assert math.isnan(scores[1]) and math.isnan(scores[3])
    assert failures == 2
    assert calls[0] == ["ok", "bad1", "three", "bad2"] and calls[1:] == [["ok"], ["bad1"], ["three"], ["bad2"]]


def test_safe_scores_cleans_non_finite_and_non_numeric_values():
    values = [1.5, math.nan, math.inf, -math.inf, "abc", "2.5", None, 3]
    scores, failures = safe_scores(lambda p, r: list(values), ["p"] * len(values), ["r"] * len(values))
    assert scores[0] == 1.5 and scores[5] == 2.5 and scores[7] == 3.0
    assert all(math.isnan(scores[i]) for i in (1, 2, 3, 4, 6))
    assert failures == 5


def test_safe_scores_wrong_count_raises_and_empty_input():
    with pytest.raises(UserError, match="returned 1 scores for 2"):
        safe_scores(lambda p, r: [1.0], ["a", "b"], ["x", "y"])
    with pytest.raises(UserError):  # also when the count is wrong in the one-by-one fallback
        def flaky(p, r):
            if len(r) > 1:
                raise RuntimeError
            return [1.0, 2.0]
        safe_scores(flaky, ["a", "b"], ["x", "y"])

    def never_called(p, r):
        raise AssertionError("an empty batch must not call the scorer")

    assert safe_scores(never_called, [], []) == ([], 0)


# ------------------------------------------------------------------------------------ SequenceClassifierScorer


def _classifier(tokenizer, num_labels=1):
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForSequenceClassification(config).eval()


def _one_text_logit(model, tokenizer, text):
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokenizer(text=text)["input_ids"]])).logits[0, 0].item()


def test_sequence_classifier_scores_equal_one_text_at_a_time(tokenizer):
    model = _classifier(tokenizer)
    scorer = SequenceClassifierScorer(model, tokenizer, batch_size=2)  # 3 texts: a batch of 2 and one alone
    lengths = [len(tokenizer(text=p + r)["input_ids"]) for p, r in zip(PROMPTS, RESPONSES)]
    assert lengths[0] != lengths[1]  # the first batch really pads
    scores = scorer(PROMPTS, RESPONSES)
    expected = [_one_text_logit(model, tokenizer, p + r) for p, r in zip(PROMPTS, RESPONSES)]
    assert scores == pytest.approx(expected, abs=ATOL)
    assert len(set(round(s, 4) for s in scores)) == 3  # the texts really score differently


def test_sequence_classifier_reads_conversations_through_the_chat_template(random_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    model = _classifier(tokenizer)
    prompt = [{"role": "user", "content": "The soup was"}]
    scores = SequenceClassifierScorer(model, tokenizer)([prompt, "We sat"], [" hot.", " by the window."])
    expected = [_one_text_logit(model, tokenizer, "user: The soup was\nassistant:  hot.\n"),
                _one_text_logit(model, tokenizer, "We sat by the window.")]
    assert scores == pytest.approx(expected, abs=ATOL)


def test_sequence_classifier_conversation_has_one_bos(random_model_dir):
    from tokenizers import processors

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    tokenizer.add_special_tokens({"bos_token": "<bos>"})
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tokenizer.bos_token_id)])
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    model = _classifier(tokenizer)
    prompt = [{"role": "user", "content": "The soup was"}]
    conversation = prompt + [{"role": "assistant", "content": " hot."}]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0, 0].item()
    assert SequenceClassifierScorer(model, tokenizer)([prompt], [" hot."])[0] == pytest.approx(expected, abs=ATOL)


def test_sequence_classifier_needs_one_label(tokenizer):
    with pytest.raises(UserError, match="one label"):
        SequenceClassifierScorer(_classifier(tokenizer, num_labels=2), tokenizer)


# ----------------------------------------------------------------------------------------- SegmentRewardScorer


def _ids(tokenizer, prompt, response):
    prompt_ids = tokenize_prompt(tokenizer, prompt, "x")
    return prompt_ids, tokenizer(text=response, add_special_tokens=False)["input_ids"]


def _head(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, :, 0].float()


@pytest.fixture(scope="module")
def bandit_rm(random_model_dir):
    return segment_rm.new_reward_model(random_model_dir, "bandit", None, seed=1).eval()


def test_bandit_score_is_the_head_at_the_last_response_token(bandit_rm, tokenizer):
    prompts = PROMPTS + ["The soup was"]
    responses = RESPONSES + [""]
    scorer = SegmentRewardScorer(bandit_rm, tokenizer, batch_size=16)
    scores = scorer(prompts, responses)
    expected = []
    for prompt, response in zip(prompts, responses):
        p, r = _ids(tokenizer, prompt, response)
        expected.append(_head(bandit_rm, p + r)[-1].item())  # empty response: the last prompt token
    assert scores == pytest.approx(expected, abs=ATOL)
    # the empty response reads r(x) at the prompt's last token, which differs from the non-empty one's
    assert abs(scores[3] - scores[0]) > 1e-4
    # one at a time, in batches of 2, and an all-empty batch
    assert [scorer([p], [r])[0] for p, r in zip(prompts, responses)] == pytest.approx(scores, abs=ATOL)
    assert SegmentRewardScorer(bandit_rm, tokenizer, batch_size=2)(prompts, responses) == pytest.approx(
        scores, abs=ATOL)
    only_empty = scorer(["The soup was", "Would"], ["", ""])
    expected_empty = [_head(bandit_rm, tokenize_prompt(tokenizer, p, "x"))[-1].item() for p in ("The soup was", "Would")]
    assert only_empty == pytest.approx(expected_empty, abs=ATOL)


def _entropy_threshold(reference, tokenizer):
    """A threshold between the response entropies (all close to log V for a random model), far from each of
    them, so that some tokens open a segment and some do not."""
    entropies = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        p, r = _ids(tokenizer, prompt, response)
        with torch.no_grad():
            logits = reference(input_ids=torch.tensor([p + r])).logits[0]
        entropies += token_entropy(logits[len(p) - 1 : len(p) + len(r) - 1]).tolist()
    values = sorted(entropies)
    gaps = [(values[i + 1] - values[i], i) for i in range(len(values) - 1)]
    middle = len(values) // 2
    gap, i = max((g, i) for g, i in gaps if abs(i - middle) <= len(values) // 4)
    assert gap > 2e-5
    return (values[i] + values[i + 1]) / 2


def _segment_score_by_loop(rm, reference, tokenizer, prompt, response, threshold):
    """e(x, y) by a plain loop: token j of the response opens a segment when the reference's entropy of the
    distribution it was drawn from exceeds the threshold; the mean of the head at each segment's last token."""
    p, r = _ids(tokenizer, prompt, response)
    ids = p + r
    head = _head(rm, ids)
    with torch.no_grad():
        logits = reference(input_ids=torch.tensor([ids])).logits[0]
    starts = [j for j in range(len(r)) if j == 0 or token_entropy(logits[len(p) + j - 1]).item() > threshold]
    ends = [s - 1 for s in starts[1:]] + [len(r) - 1]
    rewards = [head[len(p) + e].item() for e in ends]
    # the library's entropy_segments on this one row agrees with the loop
    entropy = token_entropy(logits[len(p) - 1 : len(ids) - 1])[None]
    segment_ids = entropy_segments(entropy, torch.ones_like(entropy, dtype=torch.bool), threshold)[0].tolist()
    assert max(segment_ids) + 1 == len(starts) and [segment_ids.index(k) for k in range(len(starts))] == starts
    return sum(rewards) / len(rewards), len(starts)


def test_segment_score_is_the_mean_of_segment_rewards(random_model_dir, reference, tokenizer):
    threshold = _entropy_threshold(reference, tokenizer)
    rm = segment_rm.new_reward_model(random_model_dir, "segment", threshold, seed=2).eval()
    prompts = PROMPTS + ["We sat"]
    responses = RESPONSES + [""]
    scores = SegmentRewardScorer(rm, tokenizer, reference=reference)(prompts, responses)
    expected, counts = [], []
    for prompt, response in zip(PROMPTS, RESPONSES):
        score, count = _segment_score_by_loop(rm, reference, tokenizer, prompt, response, threshold)
        expected.append(score)
        counts.append(count)
    expected.append(_head(rm, tokenize_prompt(tokenizer, "We sat", "x"))[-1].item())
    # the threshold really cuts: some response has several segments, fewer than its tokens
    lengths = [len(_ids(tokenizer, p, r)[1]) for p, r in zip(PROMPTS, RESPONSES)]
    assert any(1 < c < n for c, n in zip(counts, lengths))
    assert scores == pytest.approx(expected, abs=ATOL)
    one_by_one = [SegmentRewardScorer(rm, tokenizer, reference=reference)([p], [r])[0]
                  for p, r in zip(prompts, responses)]
    assert one_by_one == pytest.approx(scores, abs=ATOL)


def test_segment_score_with_a_low_threshold_is_the_mean_over_tokens(random_model_dir, reference, tokenizer):
    rm = segment_rm.new_reward_model(random_model_dir, "segment", 1.0, seed=2).eval()
    scores = SegmentRewardScorer(rm, tokenizer, reference=reference, batch_size=2)(PROMPTS, RESPONSES)
    expected = []
    for prompt, response in zip(PROMPTS, RESPONSES):
        score, count = _segment_score_by_loop(rm, reference, tokenizer, prompt, response, 1.0)
        p, r = _ids(tokenizer, prompt, response)
        assert count == len(r)  # every entropy is above 1 nat: one token per segment
        assert score == pytest.approx(_head(rm, p + r)[len(p):].mean().item(), abs=ATOL)
        expected.append(score)
    assert scores == pytest.approx(expected, abs=ATOL)


def test_segment_rm_needs_a_reference(random_model_dir, tokenizer):
    rm = segment_rm.new_reward_model(random_model_dir, "segment", 1.0)
    with pytest.raises(UserError, match="reference"):
        SegmentRewardScorer(rm, tokenizer)


# ------------------------------------------------------------------------------------------------- load_scorer


def test_load_sentiment_task_and_module_path():
    for spec in ("sentiment", "segrl.tasks.sentiment:reward"):
        scorer = load_scorer(spec)
        assert isinstance(scorer, FunctionScorer) and scorer.name == spec
        positive, empty = scorer(["x", "x"], ["I love it, wonderful", ""])
        assert positive > 0.5 and empty == -1.0


def test_load_scorer_refuses_bad_specs(tmp_path):
    with pytest.raises(UserError, match="nonexistent.module"):
        load_scorer("nonexistent.module:fn")
    with pytest.raises(UserError, match="not_there"):
        load_scorer("segrl.tasks.sentiment:not_there")
    with pytest.raises(UserError):
        load_scorer(str(tmp_path / "no-such-model"))
    with pytest.raises(UserError):
        load_scorer("no-such-user/no-such-reward-model")


def test_load_scorer_refuses_a_causal_lm_directory(random_model_dir):
    with pytest.raises(UserError, match="one label"):  # a policy given as --reward: a 2-label classifier head
        load_scorer(str(random_model_dir))


def test_load_scorer_model_directories(random_model_dir, reference, tokenizer, tmp_path):
    model = _classifier(tokenizer)
    model.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    scorer = load_scorer(str(tmp_path / "clf"), batch_size=2)
    assert isinstance(scorer, SequenceClassifierScorer)
    expected = [_one_text_logit(model, tokenizer, p + r) for p, r in zip(PROMPTS, RESPONSES)]
    assert scorer(PROMPTS, RESPONSES) == pytest.approx(expected, abs=ATOL)

    bandit = segment_rm.new_reward_model(random_model_dir, "bandit", None, seed=1)
    bandit.save_pretrained(tmp_path / "bandit")
    tokenizer.save_pretrained(tmp_path / "bandit")
    scorer = load_scorer(str(tmp_path / "bandit"))
    assert isinstance(scorer, SegmentRewardScorer) and scorer.variant == "bandit"
    p, r = _ids(tokenizer, PROMPTS[0], RESPONSES[0])
    assert scorer(PROMPTS[:1], RESPONSES[:1])[0] == pytest.approx(_head(bandit.eval(), p + r)[-1].item(), abs=ATOL)

    segment = segment_rm.new_reward_model(random_model_dir, "segment", 1.0, seed=1)
    segment.save_pretrained(tmp_path / "segment")
    tokenizer.save_pretrained(tmp_path / "segment")
    with pytest.raises(UserError, match="tokenizer"):
        load_scorer(str(tmp_path / "segment"))  # no policy to segment with
    scorer = load_scorer(str(tmp_path / "segment"), policy=reference, policy_tokenizer=tokenizer)
    assert isinstance(scorer, SegmentRewardScorer) and scorer.reference is reference
    assert (scorer.variant, scorer.threshold) == ("segment", 1.0)
