"""Numerical guards (docs/NUMERICAL_GUARDS.md): NaN/inf rewards, advantages, losses and gradients are caught at the
step where they appear, named with their samples, and the run stops or the optimizer step is skipped.

Tiny random models built in the session (conftest ``random_model_dir``); each run is 1-3 optimizer steps."""

import json
import logging
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig

from segrl import guards, segment_rm
from segrl.guards import NumericalError
from segrl.trainers.dense import DenseRewardConfig, DenseRewardTrainer
from segrl.trainers.grpo import TokenCountingGRPOTrainer
from segrl.trainers.segment_rm import SegmentRewardConfig, SegmentRewardTrainer
from segrl.trainers.spo import SPOConfig, SPOTrainer

COMMON = dict(
    per_device_train_batch_size=4, num_generations=4, max_completion_length=8, max_steps=3, learning_rate=1e-2,
    report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0,
    disable_tqdm=True,
)
PROMPTS = ["The soup was", "We sat by the", "Would we", "The bread"]
ROOT = Path(__file__).resolve().parents[1]


def length_reward(prompts, completions, **kwargs):
    """Spread on random text (so the gradient is not zero): the completion's length modulo 3."""
    return [float(len(text) % 3) for text in completions]


@pytest.fixture(scope="module")
def tokenizer(random_model_dir):
    return AutoTokenizer.from_pretrained(random_model_dir)


@pytest.fixture
def rl(random_model_dir, tokenizer, tmp_path):
    """Build an RL trainer (TokenCountingGRPOTrainer, SPO or dense) on the tiny model, one prompt group per step."""

    def build(trainer_class=TokenCountingGRPOTrainer, config_class=GRPOConfig, rewards=(length_reward,), extra=None,
              **overrides):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(random_model_dir)
        config = config_class(output_dir=str(tmp_path / trainer_class.__name__), **{**COMMON, **overrides})
        return trainer_class(model=model, reward_funcs=list(rewards), args=config,
                             train_dataset=Dataset.from_dict({"prompt": PROMPTS}), processing_class=tokenizer,
                             **(extra or {}))

    return build


class Snapshots(TrainerCallback):
    """The parameters after each optimizer step (``after[k]``: after step k; ``after[0]``: at the start)."""

    def __init__(self):
        self.after = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.after[0] = [p.detach().clone() for p in model.parameters()]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step] = [p.detach().clone() for p in model.parameters()]


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def nan_gradients_on(trainer, steps):
    """Make the gradient of one parameter NaN while optimizer step k (1-based) in ``steps`` is computed."""
    param = next(p for p in trainer.model.parameters() if p.requires_grad)
    param.register_hook(lambda g: g * math.nan if trainer.state.global_step + 1 in steps else g)


def logged(trainer, name):
    return [(log["step"], log[name]) for log in trainer.state.log_history if name in log]


# ------------------------------------------------------------------------------------------------ pure helpers


def test_nonfinite_rows_masks_and_counter():
    values = torch.tensor([[0.0, math.nan], [1.0, 2.0], [math.inf, 0.0], [-math.inf, 3.0]])
    assert guards.nonfinite_rows(values).tolist() == [0, 2, 3]
    mask = torch.tensor([[True, False], [True, True], [True, True], [False, True]])
    assert guards.nonfinite_rows(values, mask).tolist() == [2]
    assert guards.nonfinite_rows(torch.tensor(math.nan)).tolist() == [0]
    assert [guards.is_nonfinite_number(v) for v in (None, 1, 0.5, math.nan, -math.inf, torch.tensor(math.inf))] == [
        False, False, False, True, True, True]
    counter = guards.SkipCounter(limit=2)
    counter.record(True, 1)
    counter.record(False, 2)
    counter.record(True, 3)
    with pytest.raises(NumericalError, match="Step 4: 2 optimizer steps in a row"):
        counter.record(True, 4, "the gradient norm is nan")
    assert counter.total == 3


# ------------------------------------------------------------------------------------------------ RL: rewards


@pytest.mark.parametrize(("bad", "step"), [(math.nan, 2), (-math.inf, 1)])
def test_nonfinite_reward_stops_the_run_naming_the_function_and_completion(rl, bad, step):
    """On ``step`` the reward function returns ``bad`` for the completion at index 2: the run stops there."""
    poisoned = {}

    def flaky_reward(prompts, completions, trainer_state, **kwargs):
        rewards = length_reward(prompts, completions)
        if trainer_state.global_step + 1 == step:
            rewards[2] = bad
            poisoned["completion"], poisoned["prompt"] = completions[2], prompts[2]
        return rewards

    trainer = rl(rewards=[flaky_reward], max_steps=2)
    with pytest.raises(NumericalError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith(f"Step {step}:") and trainer.state.global_step == step - 1
    assert f"reward function 'flaky_reward' returned {bad} (not None) for row 2" in message
    assert f"completion {guards.shorten(poisoned['completion'])!r}" in message
    assert f"prompt {poisoned['prompt']!r}" in message


def test_none_rewards_are_not_applicable_not_an_error(rl):
    def sometimes_none(prompts, completions, **kwargs):
        return [None if i % 2 else 1.0 + len(text) % 2 for i, text in enumerate(completions)]

    def always_none(prompts, completions, **kwargs):
        return [None] * len(completions)

    trainer = rl(rewards=[sometimes_none, always_none], max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1
    assert logged(trainer, "guards/skipped_steps") == [(1, 0.0)]


def test_nonfinite_monte_carlo_reward_stops_spo(rl, tokenizer):
    def mc_reward(prompts, completions, **kwargs):
        return [math.nan if "soup" in text else 0.0 for text in completions]

    spo = rl(SPOTrainer, SPOConfig, rewards=[mc_reward])
    ids = tokenizer(" hot soup")["input_ids"] + [tokenizer.eos_token_id]
    assert len(ids) <= 8  # max_completion_length: not truncated
    with pytest.raises(NumericalError) as error:
        spo._score([{"prompt": "The soup was"}, {"prompt": "We sat"}], [ids, ids[:2]])
    message = str(error.value)
    assert message.startswith("Step 1:") and "'mc_reward' returned nan (not None) for continuation 0" in message
    assert repr(tokenizer.decode(ids, skip_special_tokens=True)) in message and "continuation 1" not in message


# ------------------------------------------------------------------------------------------------ RL: advantages, loss


def test_nonfinite_advantage_stops_naming_its_row(rl, tokenizer):
    trainer = rl()
    prompt = tokenizer(["The soup was", "We sat by"], padding=True, padding_side="left", return_tensors="pt")
    completion = tokenizer([" hot.", " the window."], padding=True, padding_side="right", return_tensors="pt")
    output = {"prompt_ids": prompt["input_ids"], "prompt_mask": prompt["attention_mask"],
              "completion_ids": completion["input_ids"], "completion_mask": completion["attention_mask"]}
    mask = completion["attention_mask"].bool()
    advantages = torch.where(mask, 0.5, 0.0)
    advantages[1, 0] = math.inf
    with pytest.raises(NumericalError) as error:
        trainer._set_token_advantages(output, advantages, mask, whiten=True)
    message = str(error.value)
    assert "Step 1: non-finite advantages in 1 of 2 rows" in message
    assert "row 1: prompt 'We sat by' completion ' the window.'" in message and "row 0" not in message
    advantages[1, 0] = 0.0
    advantages[0, -1] = math.nan  # off the mask (padding): not an error, and 0 in what TRL's loss reads
    trainer._set_token_advantages(output, advantages, mask, whiten=False)
    assert torch.equal(output["advantages"], torch.where(mask, advantages, 0.0))


def test_nonfinite_loss_stops_an_rl_run_at_its_step(rl):
    trainer = rl(max_steps=2)
    compute = trainer._compute_loss

    def loss_inf_on_step_2(model, inputs):
        loss = compute(model, inputs)
        return loss * math.inf if trainer.state.global_step + 1 == 2 else loss

    trainer._compute_loss = loss_inf_on_step_2
    with pytest.raises(NumericalError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("Step 2: non-finite loss, stopping the run: the loss is")
    assert "row 0: prompt" in message and trainer.state.global_step == 1


def test_nonfinite_gradient_skips_the_step_and_training_goes_on(rl, caplog):
    trainer = rl()
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    nan_gradients_on(trainer, steps={2})
    with caplog.at_level(logging.WARNING, logger="segrl.trainers.guarded"):
        trainer.train()
    after = snapshots.after
    assert trainer.state.global_step == 3
    assert not same(after[1], after[0]) and same(after[2], after[1]) and not same(after[3], after[2])
    assert logged(trainer, "guards/skipped_steps") == [(1, 0.0), (2, 1.0), (3, 1.0)]
    assert "Step 2: the gradient norm is nan; optimizer step skipped" in caplog.text
    # The linear schedule does not advance past the skipped step: step 3 trains at step 2's rate.
    rates = [rate for _, rate in logged(trainer, "learning_rate")]
    assert rates[0] > rates[1] == rates[2] > 0


# ------------------------------------------------------------------------------------------------ dense


class InfSource:
    """Dense rewards 0.1 on every token; +inf on row 2's first token."""

    def __call__(self, rollout):
        rewards = torch.full(rollout.completion_ids.shape, 0.1)
        rewards[2, 0] = math.inf
        self.completion = rollout.completions[2]
        return rewards


def test_inf_dense_reward_stops_naming_the_source_and_row(rl):
    source = InfSource()
    trainer = rl(DenseRewardTrainer, DenseRewardConfig, advantage_estimator="group", extra={"dense_rewards": source})
    trainer.model.train()
    with pytest.raises(NumericalError) as error:
        trainer._generate_and_score_completions([{"prompt": "The soup was"}] * 4)
    message = str(error.value)
    assert "Step 1: non-finite dense rewards (±inf) from InfSource in 1 of 4 rows" in message
    assert f"row 2: prompt 'The soup was' completion {guards.shorten(source.completion)!r}" in message


def test_value_model_step_is_skipped_on_a_nan_gradient_then_stops(rl):
    trainer = rl(DenseRewardTrainer, DenseRewardConfig, advantage_estimator="gae")
    trainer.max_consecutive_skips = 2
    value_model = trainer.value_model
    before = [p.detach().clone() for p in value_model.parameters()]
    ids = torch.tensor([[5, 6, 7, 8, 9]] * 4)
    mask = torch.ones(4, 3, dtype=torch.bool)
    old, returns = torch.zeros(4, 3), torch.ones(4, 3)
    next(value_model.parameters()).register_hook(lambda g: g * math.nan)
    trainer._fit_value_model(ids, torch.ones_like(ids), 3, old, returns, mask)
    assert same(before, value_model.parameters()) and trainer.value_optimizer.state == {}
    assert trainer._metrics["train"]["guards/value_skipped_steps"] == [1.0]
    with pytest.raises(NumericalError, match="2 optimizer steps in a row .* value model"):
        trainer._fit_value_model(ids, torch.ones_like(ids), 3, old, returns, mask)


# ------------------------------------------------------------------------------------------------ reward model


def rm_trainer(model_dir, tokenizer, output_dir, **overrides):
    """A token-variant segment reward model trainer on two prepared pairs (built by hand)."""
    eos = tokenizer.eos_token_id
    words = [tokenizer(w)["input_ids"] for w in ("The soup", " was hot", " was cold", " sat by", " the window")]
    rows = []
    for prompt, chosen, rejected in ((words[0], words[1], words[2]), (words[0], words[3], words[4])):
        rows.append({"chosen_ids": prompt + chosen + [eos], "rejected_ids": prompt + rejected + [eos],
                     "prompt_length": len(prompt),
                     "chosen_segment_ids": [-1] * len(prompt) + list(range(len(chosen))) + [-1],
                     "rejected_segment_ids": [-1] * len(prompt) + list(range(len(rejected))) + [-1]})
    model = segment_rm.new_reward_model(model_dir, "token", None, seed=0)
    config = SegmentRewardConfig(output_dir=str(output_dir), variant="token", **{
        **dict(per_device_train_batch_size=2, report_to="none", use_cpu=True, bf16=False, save_strategy="no",
               logging_steps=1, max_steps=3, learning_rate=1e-2, disable_tqdm=True, seed=0), **overrides})
    return SegmentRewardTrainer(model, config, Dataset.from_list(rows), tokenizer)


def nan_scores_on(trainer, steps, row=0):
    """Make the reward model's scores of batch row ``row`` NaN while optimizer step k (1-based) in ``steps`` runs."""
    def hook(module, args, output):
        if trainer.state.global_step + 1 in steps and module.training:
            output.logits = output.logits.index_fill(0, torch.tensor([row]), math.nan)
        return output

    trainer.model.register_forward_hook(hook)


@pytest.fixture
def rm(random_model_dir, tokenizer, tmp_path):
    return lambda **overrides: rm_trainer(random_model_dir, tokenizer, tmp_path / "rm", **overrides)


def test_nonfinite_reward_model_score_skips_the_step_naming_the_response(rm, tokenizer, caplog):
    trainer = rm()
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    nan_scores_on(trainer, steps={2})  # the score of the first chosen response, on step 2 only
    with caplog.at_level(logging.WARNING, logger="segrl.trainers.guarded"):
        trainer.train()
    after = snapshots.after
    assert trainer.state.global_step == 3
    assert not same(after[1], after[0]) and same(after[2], after[1]) and not same(after[3], after[2])
    assert logged(trainer, "guards/skipped_steps") == [(1, 0.0), (2, 1.0), (3, 1.0)]
    assert "Step 2: non-finite loss, the optimizer step will be skipped" in caplog.text
    assert "non-finite reward-model scores in 1 responses: chosen response of pair 0:" in caplog.text


def test_consecutive_skips_stop_the_run(rm):
    trainer = rm(max_steps=5)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    nan_gradients_on(trainer, steps={1, 2, 3, 4, 5})
    with pytest.raises(NumericalError, match=r"Step 3: 3 optimizer steps in a row were skipped .* norm is nan"):
        trainer.train()
    assert same(snapshots.after[2], snapshots.after[0]) and trainer.skip_counter.total == 3


# ------------------------------------------------------------------------------------------------ DenseDPO


def test_nonfinite_dense_dpo_margin_skips_the_step_naming_the_pair(random_model_dir, tokenizer, tmp_path,
                                                                   monkeypatch, caplog):
    from segrl.trainers import dense_dpo

    eos = tokenizer.eos_token_id
    rows = [{"prompt_ids": [eos, 5, 6], "chosen_ids": [7, 8, eos], "rejected_ids": [9, 10, eos],
             "chosen_segment_ids": [0, 1, -1], "rejected_segment_ids": [0, 1, -1], "segment_labels": [1, -1]}] * 2
    config = dense_dpo.DenseDPOConfig(output_dir=str(tmp_path / "dpo"), per_device_train_batch_size=2, max_steps=3,
                                      learning_rate=1e-2, report_to="none", use_cpu=True, bf16=False,
                                      save_strategy="no", seed=0, logging_steps=1, disable_tqdm=True)
    trainer = dense_dpo.DenseDPOTrainer(model=AutoModelForCausalLM.from_pretrained(random_model_dir), args=config,
                                        train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    margins = dense_dpo.segment_margins

    def nan_in_pair_1_on_step_2(*args):
        out = margins(*args)
        return out.index_fill(0, torch.tensor([1]), math.nan) if trainer.state.global_step + 1 == 2 else out

    monkeypatch.setattr(dense_dpo, "segment_margins", nan_in_pair_1_on_step_2)
    snapshots = Snapshots()
    trainer.add_callback(snapshots)
    with caplog.at_level(logging.WARNING, logger="segrl.trainers.guarded"):
        trainer.train()
    after = snapshots.after
    assert not same(after[1], after[0]) and same(after[2], after[1]) and not same(after[3], after[2])
    assert logged(trainer, "guards/skipped_steps") == [(1, 0.0), (2, 1.0), (3, 1.0)]
    text = repr(tokenizer.decode([eos, 5, 6, 9, 10, eos], skip_special_tokens=True))
    assert ("Step 2: non-finite loss, the optimizer step will be skipped: non-finite segment margins in 1 pairs"
            in caplog.text)
    assert f"pair 1 second: text {text}" in caplog.text and "pair 0" not in caplog.text


# ------------------------------------------------------------------------------------------------ two processes


def _two_process_guards(model_dir: str, out_dir: str) -> None:
    """Run by ``accelerate launch`` on 2 CPU processes (gloo): reward-model runs whose scores turn NaN on process 1
    only. ``skip``: on step 2 (both processes must skip it); ``stop``: on every step, 2 skips in a row allowed (both
    must stop at step 2 with the same message). Writes ``rank<k>.json``."""
    rank = int(os.environ.get("RANK", 0))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    results = {}
    for case, bad_steps, limit in (("skip", {2}, 3), ("stop", {1, 2, 3}, 2)):
        trainer = rm_trainer(model_dir, tokenizer, Path(out_dir) / case, per_device_train_batch_size=1)
        trainer.max_consecutive_skips = limit
        snapshots = Snapshots()
        trainer.add_callback(snapshots)
        if rank == 1:
            nan_scores_on(trainer, bad_steps)
        error = None
        try:
            trainer.train()
        except NumericalError as err:
            error = str(err)
        after = snapshots.after
        results[case] = {"error": error, "skipped": logged(trainer, "guards/skipped_steps"),
                         "unchanged": [same(after[k], after[k - 1]) for k in sorted(after) if k > 0]}
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(results))


def test_two_processes_take_the_same_decisions(random_model_dir, tmp_path):
    """A non-finite score on one process: every process skips the same step, or every process stops, with the same
    message (no process waits alone in DDP's all-reduce)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
               str(Path(__file__).resolve()), str(random_model_dir), str(tmp_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    assert rank0["skip"]["error"] is None and rank0["skip"]["unchanged"] == [False, True, False]
    assert rank0["skip"]["skipped"] == [[1, 0.0], [2, 1.0], [3, 1.0]]
    assert rank0["stop"]["error"].startswith("Step 2: 2 optimizer steps in a row were skipped")
    assert "[process 1] non-finite reward-model scores" in rank0["stop"]["error"]
    assert rank0["stop"]["unchanged"] == [True]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    _two_process_guards(sys.argv[1], sys.argv[2])
