"""DRLCTrainer: the critic's spans reach the per-token rewards; the critics are built from the config; the CLI."""

import json

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

from segrl import advantages as adv
from segrl.cli import app
from segrl.critic.align import CharSpan
from segrl.critic.answers import parse_answer
from segrl.critic.critics import ChatCritic, Critique, LexiconCritic
from segrl.dense_rewards import CriticSpanSource
from segrl.errors import UserError
from segrl.segmentation import decode_with_offsets
from segrl.trainers.drlc import DRLCConfig, DRLCTrainer

COMMON = dict(
    per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=1, learning_rate=1e-2,
    report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0,
)


def constant_reward(prompts, completions, **kwargs):
    return [1.0] * len(completions)


class FirstCharacterCritic:
    """Marks the first character of every non-empty response as a positive span (+0.5); row 1 does not parse."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts, responses, scores=None):
        self.calls.append((list(prompts), list(responses), scores))
        return [Critique(ok=False, reason="scripted") if i == 1 else
                Critique(ok=True, spans=[CharSpan(0, 1, "positive", 0.5)] if r else [])
                for i, r in enumerate(responses)]


@pytest.fixture
def build(random_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    tokenizer.padding_side = "left"
    dataset = Dataset.from_dict({"prompt": ["The soup was", "We sat by the"] * 4})

    def make(scripted=None, **overrides):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(random_model_dir)
        config = DRLCConfig(output_dir=str(tmp_path / "drlc"), **{**COMMON, **overrides})
        trainer = DRLCTrainer(model=model, reward_funcs=[constant_reward], args=config, train_dataset=dataset,
                              processing_class=tokenizer, critic=scripted)
        trainer.model.train()
        return trainer

    return make, tokenizer


def test_critic_span_rewards_plus_holistic_reward_make_the_advantages(build):
    make, tokenizer = build
    critic = FirstCharacterCritic()
    trainer = make(critic, advantage_estimator="group", kl_coef=0.0, whiten_advantages=False)
    out = trainer._generate_and_score_completions([{"prompt": "The soup was"}] * 4)
    mask = out["completion_mask"].bool()
    prompts, responses, scores = critic.calls[0]
    assert prompts == ["The soup was"] * 4 and scores == [1.0] * 4  # the holistic rewards are handed to the critic
    expected = torch.zeros(mask.shape)
    for row, ids in enumerate(out["completion_ids"]):
        text, offsets = decode_with_offsets(tokenizer, ids[mask[row]].tolist())
        assert text == responses[row]
        owner = next((t for t, (start, end) in enumerate(offsets) if start == 0 and end > 0), None)
        if row != 1 and owner is not None:  # row 1's answer did not parse: no critic reward
            expected[row, owner] += 0.5
    last = (mask.long().cumsum(1) == mask.sum(1, keepdim=True)) & mask
    expected = expected + last.float() * 1.0  # the holistic reward on the last token
    torch.testing.assert_close(out["advantages"], adv.dense_group_advantages(expected, mask, 4) * mask,
                               atol=1e-5, rtol=1e-5)
    metrics = trainer._metrics["train"]
    assert metrics["critic/unparsed"] == [1.0]
    assert metrics["dense/skipped_rows"] == [0]  # an unparsed answer is not a skipped row


def test_the_critic_is_built_from_the_config(build, tmp_path):
    make, _ = build
    assert isinstance(make(advantage_estimator="group").dense_rewards.critic, LexiconCritic)
    template = tmp_path / "short.json"
    template.write_text(json.dumps({"instruction": "Mark good words.", "inputs": [["Text", "response"]],
                                    "sections": {"Good:": 0.5}}))
    trainer = make(critic="self", critic_template=str(template), advantage_estimator="group")
    critic = trainer.dense_rewards.critic
    assert isinstance(trainer.dense_rewards, CriticSpanSource) and isinstance(critic, ChatCritic)
    assert critic.model is trainer.accelerator.unwrap_model(trainer.model)  # self-critique: the trained policy
    assert critic.cache_size == 0 and critic.template.sections == {"Good:": 0.5}


def test_self_critique_counts_answers_that_do_not_parse(build, tmp_path):
    """The policy answers the critic prompt (greedy, so the answers can be regenerated and checked); answers that
    do not parse are counted and give no critic reward, while the holistic reward still trains the row."""
    make, tokenizer = build
    template = tmp_path / "short.json"
    template.write_text(json.dumps({"instruction": "Mark.", "inputs": [["T", "response"]], "sections": {"G:": 0.5}}))
    trainer = make(critic="self", critic_template=str(template), critic_max_new_tokens=4, advantage_estimator="group")
    out = trainer._generate_and_score_completions([{"prompt": "The soup was"}] * 4)
    critic = trainer.dense_rewards.critic
    mask = out["completion_mask"].bool()
    responses = [decode_with_offsets(tokenizer, ids[keep].tolist())[0] for ids, keep in zip(out["completion_ids"], mask)]
    rendered = [critic.render("The soup was", r, 1.0) for r in responses if r.strip()]
    answers = critic._generate(rendered)
    unparsed = sum(not parse_answer(a, ["G:"]).ok for a in answers)
    assert trainer._metrics["train"]["critic/unparsed"] == [float(unparsed)]
    assert torch.isfinite(out["advantages"]).all() and trainer._metrics["train"]["dense/skipped_rows"] == [0]


def test_config_checks():
    common = dict(output_dir="x", use_cpu=True, bf16=False)
    with pytest.raises(UserError, match="lexicon critic"):
        DRLCConfig(critic_template="toxicity", **common)
    with pytest.raises(UserError, match="reward_model"):
        DRLCConfig(reward_model="rm/final", **common)
    with pytest.raises(UserError, match="critic_max_new_tokens"):
        DRLCConfig(critic_max_new_tokens=0, **common)
    with pytest.raises(UserError, match="Unknown critic template"):
        DRLCConfig(critic="self", critic_template="poetry", **common)
    assert DRLCConfig(critic="self", critic_template="summarization", **common).critic == "self"


def test_train_drlc_cli_with_the_lexicon_critic(random_model_dir, tmp_path):
    result = CliRunner().invoke(app, [
        "train", "drlc", "--model", str(random_model_dir), "--task", "sentiment", "--critic", "lexicon",
        "--advantage_estimator", "group", "--max_steps", "1", "--per_device_train_batch_size", "4",
        "--num_generations", "4", "--max_completion_length", "6", "--eval_examples", "4", "--eval_every", "1",
        "--logging_steps", "1", "--train_examples", "8", "--output_dir", str(tmp_path / "drlc"),
        "--report_to", "none", "--save_strategy", "no",
    ])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "drlc" / "config.json").read_text())
    assert config["method"] == "drlc" and config["trainer"]["critic"] == "lexicon"
    records = [json.loads(line) for line in (tmp_path / "drlc" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss" in r)
    assert {"critic/unparsed", "critic/reward", "dense/reward", "rewards/reward/mean"} <= set(step)
    assert (tmp_path / "drlc" / "final" / "model.safetensors").is_file()


def test_the_lexicon_critic_on_a_task_without_sentiment_is_refused(random_model_dir, tmp_path):
    result = CliRunner().invoke(app, ["train", "drlc", "--model", str(random_model_dir), "--output_dir",
                                      str(tmp_path / "drlc")])  # the default task is arith
    assert result.exit_code == 2 and "the lexicon critic marks sentiment words" in result.output
    assert not (tmp_path / "drlc").exists()
