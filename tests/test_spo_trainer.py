"""SPOTrainer (chain) on a tiny random model: equality with GRPO where they must agree, MC values, training."""

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer

from segrl.errors import UserError
from segrl.trainers.spo import SPOConfig, SPOTrainer

COMMON = dict(
    per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=2, learning_rate=1e-2,
    report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0,
)


def letters_reward(prompts, completions, **kwargs):
    """A reward with spread on random text: the fraction of letters that are 'e'."""
    return [text.count("e") / max(1, sum(c.isalpha() for c in text)) for text in completions]


@pytest.fixture
def parts(random_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    dataset = Dataset.from_dict({"prompt": ["The soup was", "We sat by the", "Would we", "The bread"] * 2})

    def build(trainer_class, config_class, reward=letters_reward, **overrides):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(random_model_dir)
        config = config_class(output_dir=str(tmp_path / trainer_class.__name__), **{**COMMON, **overrides})
        return trainer_class(model=model, reward_funcs=[reward], args=config, train_dataset=dataset,
                             processing_class=tokenizer)

    return build


def rollout(trainer):
    """One generation batch in training mode: one prompt, its group of 4 completions."""
    trainer.model.train()
    return trainer._generate_and_score_completions([{"prompt": "The soup was"}] * 4)


def test_one_segment_with_group_baseline_is_grpo_without_std_scaling(parts):
    """No boundary to value (one segment), baseline = group mean, no mask, no whitening: A = R - mean, as GRPO."""
    grpo = parts(GRPOTrainer, GRPOConfig, scale_rewards="none")
    spo = parts(SPOTrainer, SPOConfig, scale_rewards="none", partition="fixed", segment_length=100,
                segment0_baseline="group_mean", use_prob_mask=False, whiten_advantages=False)
    torch.manual_seed(1)
    expected = rollout(grpo)
    torch.manual_seed(1)
    actual = rollout(spo)
    assert torch.equal(actual["completion_ids"], expected["completion_ids"])
    mask = expected["completion_mask"].bool()
    assert expected["advantages"].abs().sum() > 0  # the rewards do differ within the group
    broadcast = expected["advantages"].unsqueeze(1).expand_as(mask) * mask
    torch.testing.assert_close(actual["advantages"], broadcast)
    assert spo._metrics["train"]["segments/mc_states"] == [0.0]


def test_loss_with_broadcast_advantages_equals_grpo_loss(parts):
    grpo = parts(GRPOTrainer, GRPOConfig)
    spo = parts(SPOTrainer, SPOConfig, use_prob_mask=False)
    torch.manual_seed(2)
    inputs = rollout(grpo)
    inputs["advantages"] = torch.tensor([1.0, -0.5, 0.25, -0.75])
    spo_inputs = dict(inputs, advantages=inputs["advantages"].unsqueeze(1).expand_as(inputs["completion_mask"]).clone(),
                      tool_mask=torch.ones_like(inputs["completion_mask"]))
    grpo.current_gradient_accumulation_steps = spo.current_gradient_accumulation_steps = 1  # set by train()
    torch.testing.assert_close(spo._compute_loss(spo.model, spo_inputs), grpo._compute_loss(grpo.model, inputs))


def test_chain_values_states_by_monte_carlo(parts):
    spo = parts(SPOTrainer, SPOConfig, partition="fixed", segment_length=3, num_mc_samples=2)
    out = rollout(spo)
    metrics = spo._metrics["train"]
    lengths = out["completion_mask"].sum(dim=1)
    boundaries = int(((lengths - 1) // 3).sum())  # one state per segment start after the first
    assert metrics["segments/mc_states"][0] + metrics["segments/dedup_rate"][0] * boundaries == pytest.approx(boundaries)
    assert metrics["segments/mc_tokens"][0] > 0
    policy_tokens = out["completion_mask"].sum().item()
    assert metrics["segments/policy_tokens"] == [policy_tokens]
    assert metrics["tokens/generated"] == [policy_tokens + metrics["segments/mc_tokens"][0]]
    assert out["advantages"].shape == out["completion_ids"].shape
    assert torch.isfinite(out["advantages"]).all()


def test_two_training_steps_change_the_parameters(parts):
    spo = parts(SPOTrainer, SPOConfig, num_mc_samples=2, cutpoint_interval=2)
    before = [p.detach().clone() for p in spo.model.parameters()]
    spo.train()
    changed = any(not torch.equal(a, b) for a, b in zip(before, spo.model.parameters()))
    assert changed
    losses = [log["loss"] for log in spo.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any("segments/per_completion" in log for log in spo.state.log_history)


def test_bad_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="partition"):
        SPOConfig(output_dir=str(tmp_path), partition="sentences", report_to="none")


def parity_reward(prompts, completions, **kwargs):
    """1 for an even number of characters: leaves of a random model disagree, so advantages are not all 0."""
    return [float(len(text) % 2 == 0) for text in completions]


def test_tree_mode_builds_trees_and_trains_on_their_segments(parts):
    spo = parts(SPOTrainer, SPOConfig, reward=parity_reward, spo_mode="tree", tree_branching=[3, 3, 3],
                segment_length=2, use_prob_mask=False, whiten_advantages=False)
    spo.eos_token_ids = list(range(0, len(spo.processing_class), 6))  # a sixth of the vocabulary ends a segment
    torch.manual_seed(0)
    out = rollout(spo)
    metrics = spo._metrics["train"]
    nodes, examples = metrics["segments/tree_nodes"][0], metrics["segments/tree_examples"][0]
    assert 3 <= nodes <= 3 + 9 + 27 and 1 <= examples <= nodes  # one tree: the sampler's group shares its prompt
    assert out["advantages"].abs().sum() > 0
    mask = out["completion_mask"].bool()
    assert out["completion_ids"].shape[0] == examples and mask.sum(dim=1).min() >= 1
    for row_adv, row_mask in zip(out["advantages"], mask):  # one segment per example: one advantage per row
        assert row_adv[row_mask].unique().numel() == 1
    assert metrics["tokens/generated"] == [metrics["segments/policy_tokens"][0]]
    # every example's prompt is the root prompt followed by its ancestors' segments
    root = spo._tokenize_prompts(["The soup was"])[0][0]
    for ids, keep in zip(out["prompt_ids"], out["prompt_mask"].bool()):
        assert ids[keep].tolist()[: len(root)] == list(root)


def test_tree_mode_two_training_steps(parts):
    spo = parts(SPOTrainer, SPOConfig, spo_mode="tree", tree_branching=[2, 2], segment_length=3)
    spo.eos_token_ids = list(range(0, len(spo.processing_class), 3))
    before = [p.detach().clone() for p in spo.model.parameters()]
    spo.train()
    assert any(not torch.equal(a, b) for a, b in zip(before, spo.model.parameters()))
    losses = [log["loss"] for log in spo.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_delimiter_partition_runs_and_values_each_segment_start(parts):
    spo = parts(SPOTrainer, SPOConfig, partition="delimiter", delimiter="sentence", num_mc_samples=2)
    out = rollout(spo)
    metrics = spo._metrics["train"]
    assert metrics["segments/per_completion"][0] >= 1.0
    assert torch.isfinite(out["advantages"]).all()
    with pytest.raises(UserError, match="delimiter"):
        SPOConfig(output_dir="unused", partition="delimiter", delimiter="paragraphs", use_cpu=True, report_to="none")


def test_tree_mode_with_a_kl_term_uses_reference_logprobs(parts):
    spo = parts(SPOTrainer, SPOConfig, reward=parity_reward, spo_mode="tree", tree_branching=[2, 2], segment_length=3,
                beta=0.1)
    spo.eos_token_ids = list(range(0, len(spo.processing_class), 6))
    out = rollout(spo)
    # Before any update the policy is the reference: identical log-probs, so the KL term starts at 0.
    torch.testing.assert_close(out["ref_per_token_logps"], out["old_per_token_logps"])
    for parameter in spo.model.parameters():  # the policy moves, the reference must not
        parameter.data.add_(0.05)
    moved = rollout(spo)
    mask = moved["completion_mask"].bool()
    assert (moved["ref_per_token_logps"] - moved["old_per_token_logps"])[mask].abs().max() > 1e-3
    spo.train()
    kls = [log["kl"] for log in spo.state.log_history if "kl" in log]
    assert len(kls) == 2 and all(kl > 0 for kl in kls)  # the policy was moved before training


def test_tree_replay_buffer_adds_earlier_examples_with_their_old_logprobs(parts):
    spo = parts(SPOTrainer, SPOConfig, reward=parity_reward, spo_mode="tree", tree_branching=[3, 3], segment_length=2,
                replay_iterations=2, replay_per_prompt=4)
    spo.eos_token_ids = list(range(0, len(spo.processing_class), 6))
    torch.manual_seed(0)
    first = rollout(spo)
    metrics = spo._metrics["train"]
    assert metrics["segments/replayed_examples"] == [0.0]
    stored = spo._replay[-1]
    # one prompt in the batch: its first replay_per_prompt examples are kept, in order
    assert len(stored) == min(4, int(metrics["segments/tree_examples"][0])) >= 1
    assert [r["completion_ids"] for r in stored] == [
        first["completion_ids"][row][first["completion_mask"][row].bool()].tolist() for row in range(len(stored))
    ]
    for parameter in spo.model.parameters():  # the policy moves on; stored log-probs must not
        parameter.data.add_(0.05)
    second = rollout(spo)
    current = int(metrics["segments/tree_examples"][1])
    assert metrics["segments/replayed_examples"][1] == len(stored)
    assert second["completion_ids"].shape[0] == current + len(stored)
    for row, record in enumerate(stored, start=current):
        n = len(record["completion_ids"])
        assert second["completion_ids"][row, :n].tolist() == record["completion_ids"]
        torch.testing.assert_close(second["old_per_token_logps"][row, :n], torch.tensor(record["logps"]))
    assert first["completion_ids"].shape[0] == int(metrics["segments/tree_examples"][0])
