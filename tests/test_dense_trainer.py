"""DenseRewardTrainer on a tiny random model: rewards, advantages (critic-free and GAE), the critic's fit, skips."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from segrl import advantages as adv
from segrl import segment_rm
from segrl.dense_rewards import Rollout, SegmentRewardModelSource
from segrl.errors import UserError
from segrl.losses import clipped_value_loss
from segrl.scoring import completion_entropies_and_logps, completion_token_scores
from segrl.shaping import densify
from segrl.trainers.dense import DenseRewardConfig, DenseRewardTrainer

COMMON = dict(
    per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=2, learning_rate=1e-2,
    report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0,
)


def test_clipped_value_loss_worked_example():
    values = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    old = torch.tensor([[0.5, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, False]])
    loss, clip_fraction = clipped_value_loss(values, old, returns, mask, clip=0.25)
    # token 0: unclipped (1 - 2)^2 = 1, clipped 0.5 + 0.25 = 0.75 -> (0.75 - 2)^2 = 1.5625 (larger, counted)
    # token 1: (0 - 1)^2 = 1 both ways; token 2 is off the mask
    assert loss.item() == pytest.approx(0.5 * (1.5625 + 1.0) / 2)
    assert clip_fraction.item() == pytest.approx(0.5)
    loss.backward()
    assert values.grad[0, 0].item() == 0.0  # the clipped branch does not move the value
    assert values.grad[0, 1].item() == pytest.approx(0.5 * 2 * (0 - 1) / 2)


def zero_reward(prompts, completions, **kwargs):
    return [0.0] * len(completions)


class ScriptedSource:
    """Dense rewards known in advance: 0.1 x (position + 1) on every completion token, NaN rows on request."""

    def __init__(self, nan_rows=()):
        self.nan_rows = set(nan_rows)
        self.metrics = {"segments/per_completion": [3.0]}
        self.seen = None

    def __call__(self, rollout: Rollout):
        self.seen = rollout
        length = rollout.completion_ids.shape[1]
        rewards = 0.1 * torch.arange(1, length + 1, dtype=torch.float32).expand(len(rollout.completions), length)
        rewards = rewards.clone()
        for row in self.nan_rows:
            rewards[row, 0] = math.nan
        return rewards


@pytest.fixture
def build(random_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    tokenizer.padding_side = "left"
    dataset = Dataset.from_dict({"prompt": ["The soup was", "We sat by the", "Would we", "The bread"] * 2})

    def make(source=None, reward=zero_reward, **overrides):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(random_model_dir)
        config = DenseRewardConfig(output_dir=str(tmp_path / "dense"), **{**COMMON, **overrides})
        trainer = DenseRewardTrainer(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                                     processing_class=tokenizer, dense_rewards=source)
        trainer.model.train()
        return trainer

    return make


def rollout(trainer):
    return trainer._generate_and_score_completions([{"prompt": "The soup was"}] * 4)


def test_critic_free_advantages_are_prime_returns_of_the_shaped_rewards(build):
    source = ScriptedSource()
    trainer = build(source, advantage_estimator="group", kl_coef=0.05, whiten_advantages=False)
    out = rollout(trainer)
    mask = out["completion_mask"].bool()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    _, ref_logps = completion_entropies_and_logps(trainer.reference, ids, attention, mask.shape[1])
    # r_t = clip(dense, ±10) - beta * (logp - ref_logp); at step 0 the policy is the reference, so the KL is 0
    torch.testing.assert_close(out["old_per_token_logps"] * mask, ref_logps * mask, atol=1e-5, rtol=0)
    rewards = (0.1 * torch.arange(1, mask.shape[1] + 1).float()).expand_as(mask) * mask
    expected = adv.dense_group_advantages(rewards, mask, 4)
    torch.testing.assert_close(out["advantages"], expected * mask, atol=1e-5, rtol=1e-5)
    assert out["tool_mask"].tolist() == out["completion_mask"].tolist()
    assert source.seen.reference_entropy.shape == mask.shape
    metrics = trainer._metrics["train"]
    assert metrics["dense/skipped_rows"] == [0] and metrics["segments/per_completion"] == [3.0]


def test_nan_rows_are_skipped_and_counted(build):
    trainer = build(ScriptedSource(nan_rows=[1]), advantage_estimator="group")
    out = rollout(trainer)
    assert out["tool_mask"][1].sum() == 0 and out["advantages"][1].abs().sum() == 0
    assert out["tool_mask"][0].sum() == out["completion_mask"][0].sum()
    assert torch.isfinite(out["advantages"]).all()
    assert trainer._metrics["train"]["dense/skipped_rows"] == [1]
    assert out["num_items_in_batch"] == out["tool_mask"].sum()


def test_holistic_reward_goes_on_the_last_token(build):
    def constant(prompts, completions, **kwargs):
        return [2.0] * len(completions)

    trainer = build(None, reward=constant, advantage_estimator="group", kl_coef=0.0, whiten_advantages=False)
    out = rollout(trainer)
    # every completion's only reward is 2.0 at its end: all returns equal the baseline, so every advantage is 0
    # except through length: G_t = 2 - b * (tokens left), b = 2 / length of the others
    mask = out["completion_mask"].bool()
    last = (mask.long().cumsum(1) == mask.sum(1, keepdim=True)) & mask
    expected = adv.dense_group_advantages(2.0 * last.float(), mask, 4)
    torch.testing.assert_close(out["advantages"], expected * mask, atol=1e-5, rtol=1e-5)


def test_gae_uses_the_critic_values_and_fits_the_critic(build):
    trainer = build(ScriptedSource(), advantage_estimator="gae", kl_coef=0.0, whiten_advantages=False,
                    value_learning_rate=1e-3)
    critic_before = {k: v.clone() for k, v in trainer.value_model.state_dict().items()}
    frozen = segment_rm.new_reward_model(trainer.model.config._name_or_path, "bandit", None, seed=0, bias=True)
    frozen.load_state_dict(critic_before)
    out = rollout(trainer)
    mask = out["completion_mask"].bool()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    with torch.no_grad():
        values = completion_token_scores(frozen.eval(), ids, attention, mask.shape[1], shift=1)
    rewards = (0.1 * torch.arange(1, mask.shape[1] + 1).float()).expand_as(mask) * mask
    expected, _ = adv.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(out["advantages"], expected * mask, atol=1e-4, rtol=1e-4)
    changed = any(not torch.equal(v, trainer.value_model.state_dict()[k]) for k, v in critic_before.items())
    assert changed
    metrics = trainer._metrics["train"]
    assert len(metrics["value/loss"]) == 1 and "value/explained_variance" in metrics


def test_critic_learns_the_returns(build):
    """Fitting the critic to one batch's returns again and again drives the value loss down."""
    trainer = build(ScriptedSource(), advantage_estimator="gae", kl_coef=0.0, value_learning_rate=3e-3,
                    value_clip=100.0)
    out = rollout(trainer)
    mask = out["completion_mask"].bool()
    ids = torch.cat([out["prompt_ids"], out["completion_ids"]], dim=1)
    attention = torch.cat([out["prompt_mask"], out["completion_mask"]], dim=1)
    returns = adv.returns_to_go((0.1 * torch.arange(1, mask.shape[1] + 1).float()).expand_as(mask) * mask, mask)
    for _ in range(40):
        with torch.no_grad():
            old = completion_token_scores(trainer.value_model, ids, attention, mask.shape[1], shift=1)
        trainer._fit_value_model(ids, attention, mask.shape[1], old, returns, mask)
    losses = trainer._metrics["train"]["value/loss"]
    assert losses[-1] < 0.1 * losses[1]


def test_train_end_to_end_with_a_segment_reward_model(build, random_model_dir, tmp_path):
    rm = segment_rm.new_reward_model(random_model_dir, "segment", 5.0, seed=1).eval()
    trainer = build(SegmentRewardModelSource(rm), advantage_estimator="gae")
    trainer.train()
    logged = {k for record in trainer.state.log_history for k in record}
    assert {"dense/reward", "dense/kl", "value/loss", "segments/per_completion"} <= logged
    trainer.save_value_model(tmp_path / "value_model")
    assert (tmp_path / "value_model" / "model.safetensors").is_file()


def test_segment_source_reads_segment_ends_and_densifies(random_model_dir):
    rm = segment_rm.new_reward_model(random_model_dir, "segment", 1.0, seed=0).eval()
    source = SegmentRewardModelSource(rm, interpolation="even")
    prompt_ids = torch.tensor([[0, 5, 6], [5, 6, 7]])
    prompt_mask = torch.tensor([[0, 1, 1], [1, 1, 1]])
    completion_ids = torch.tensor([[8, 9, 10, 1], [11, 1, 0, 0]])  # id 1 is EOS in the fixture tokenizer
    completion_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    entropy = torch.tensor([[3.0, 0.5, 2.0, 9.0], [0.1, 9.0, 9.0, 9.0]])
    batch = Rollout(["a", "b"], ["x", "y"], prompt_ids, prompt_mask, completion_ids, completion_mask, entropy, [1])
    segment_ids = source.segment_ids(batch)
    assert segment_ids.tolist() == [[0, 0, 1, -1], [0, -1, -1, -1]]  # tail rule: EOS is -1
    with torch.no_grad():
        scores = completion_token_scores(rm, torch.cat([prompt_ids, completion_ids], 1),
                                         torch.cat([prompt_mask, completion_mask], 1), 4)
    expected = torch.tensor([[scores[0, 1] / 2, scores[0, 1] / 2, scores[0, 2], 0.0], [scores[1, 0], 0.0, 0.0, 0.0]])
    torch.testing.assert_close(source(batch), expected)
    torch.testing.assert_close(source(batch), densify(segment_rm.segment_rewards(scores, segment_ids), segment_ids))


def test_config_checks():
    with pytest.raises(UserError, match="beta"):
        DenseRewardConfig(output_dir="x", beta=0.1, use_cpu=True, bf16=False)
    with pytest.raises(UserError, match="advantage_estimator"):
        DenseRewardConfig(output_dir="x", advantage_estimator="vtrace", use_cpu=True, bf16=False)


def test_missing_holistic_reward_skips_the_row(build):
    def sometimes_none(prompts, completions, **kwargs):
        return [None, 1.0, 1.0, 1.0]

    trainer = build(ScriptedSource(), reward=sometimes_none, advantage_estimator="group")
    out = rollout(trainer)
    assert out["tool_mask"][0].sum() == 0 and out["tool_mask"][1:].sum() == out["completion_mask"][1:].sum()
    assert trainer._metrics["train"]["dense/skipped_rows"] == [1]


def test_a_reward_only_logged_never_skips(build):
    def always_none(prompts, completions, **kwargs):
        return [None] * len(completions)

    trainer = build(ScriptedSource(), reward=always_none, advantage_estimator="group", reward_weights=[0.0])
    out = rollout(trainer)
    assert out["tool_mask"].sum() == out["completion_mask"].sum()
    assert trainer._metrics["train"]["dense/skipped_rows"] == [0]


def test_reference_stays_the_starting_policy_while_the_policy_trains(build, random_model_dir):
    """Regression: a reference deep-copied after TRL prepared the policy kept calling the policy's forward."""
    trainer = build(ScriptedSource(), advantage_estimator="group", max_steps=2)
    trainer.train()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    start = AutoModelForCausalLM.from_pretrained(random_model_dir).eval()
    with torch.no_grad():
        reference, policy, initial = (m(input_ids=ids).logits for m in (trainer.reference, trainer.model, start))
    torch.testing.assert_close(reference, initial)
    assert (policy - initial).abs().max() > 1e-3
    assert trainer.state.log_history[1]["dense/kl"] != pytest.approx(0.0, abs=1e-6)


def test_several_ppo_epochs_per_batch(build):
    """num_iterations > 1: TRL reuses the batch (with its generation-time log-probs), the critic fits it as often."""
    trainer = build(ScriptedSource(), advantage_estimator="gae", num_iterations=2, max_steps=2,
                    steps_per_generation=1)
    trainer.train()
    values = [r["value/loss"] for r in trainer.state.log_history if "value/loss" in r]
    assert len(values) == 1  # one generation batch serves both policy steps
    first = next(iter(trainer.value_optimizer.state.values()))
    assert first["step"].item() == 2  # 2 critic epochs x 1 minibatch of 4 rows
