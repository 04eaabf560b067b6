"""`segrl train grpo|spo` end to end on a tiny random model: the run directory holds what it promises."""

import json

import pytest
from typer.testing import CliRunner

from segrl.cli import app

runner = CliRunner()


@pytest.mark.parametrize("method, extra", [("grpo", []), ("spo", ["--num_mc_samples", "2", "--cutpoint_interval", "2"])])
def test_train_writes_config_metrics_and_model(random_model_dir, tmp_path, method, extra):
    out = tmp_path / method
    args = ["train", method, "--model", str(random_model_dir), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
            "--train_examples", "16", "--eval_examples", "4", "--eval_every", "1", "--report_to", "none",
            "--logging_steps", "1", "--save_strategy", "no", *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["trainer"]["max_steps"] == 2 and config["versions"]["trl"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 1, 2]
    assert all(0.0 <= r["eval/accuracy"] <= 1.0 for r in evals)
    assert evals[0]["tokens/generated"] == 0 and evals[2]["tokens/generated"] > evals[1]["tokens/generated"] > 0
    assert any("loss" in r for r in records)
    if method == "spo":
        assert any("segments/per_completion" in r for r in records)
        example = json.loads((out / "example.json").read_text())
        assert len(example["pieces"]) == len(example["segment_ids"]) == len(example["advantages"]) > 0
    assert (out / "final" / "model.safetensors").exists()


def test_unknown_method_and_bad_flag():
    result = runner.invoke(app, ["train", "ppo"])
    assert result.exit_code == 2 and "Unknown method 'ppo'" in result.output
    result = runner.invoke(app, ["train", "spo", "--partition", "sentences"])
    assert result.exit_code == 2 and "partition" in result.output
    result = runner.invoke(app, ["train", "grpo", "--eval_every", "3", "--logging_steps", "2"])
    assert result.exit_code == 2 and "must be a multiple of --logging_steps" in result.output
    result = runner.invoke(app, ["train", "grpo", "--eval_every", "0"])
    assert result.exit_code == 2 and "--eval_every must be >= 1, got 0" in result.output


def test_generated_token_budget_stops_training(random_model_dir, tmp_path):
    out = tmp_path / "budget"
    args = ["train", "grpo", "--model", str(random_model_dir), "--output_dir", str(out), "--max_steps", "50",
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
            "--train_examples", "16", "--eval_examples", "2", "--eval_every", "5", "--report_to", "none",
            "--logging_steps", "1", "--save_strategy", "no", "--max_generated_tokens", "40"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    # 4 completions of at most 8 tokens per step: the budget of 40 is reached after 2 to 10 steps, not 50
    assert 2 <= len(steps) <= 10
    assert steps[-1]["tokens/generated"] >= 40 > steps[-2]["tokens/generated"]
    assert records[-1]["step"] == steps[-1]["step"] and "eval/accuracy" in records[-1]


@pytest.mark.parametrize("method, extra", [("grpo", []), ("spo", ["--num_mc_samples", "2", "--beta", "0.04"]),
                                           ("dense", ["--advantage_estimator", "gae"])])
def test_train_a_lora_adapter(random_model_dir, tmp_path, method, extra):
    """--use_peft: only the adapter trains (the base weights stay), the reference is the model with the adapter
    off, and final/ holds the merged model, which differs from the start and loads as a plain model."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / method
    args = ["train", method, "--model", str(random_model_dir), "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
            "--train_examples", "16", "--eval_examples", "4", "--eval_every", "2", "--report_to", "none",
            "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "1e-2", "--use_peft",
            "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
            "--reward_funcs", "signal_cli:char_reward", *extra]  # a reward that random text earns: gradients
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    start, final = load_file(random_model_dir / "model.safetensors"), load_file(out / "final" / "model.safetensors")
    assert final.keys() == start.keys()  # merged: no adapter tensors left
    changed = {name for name in start if not torch.equal(start[name], final[name])}
    assert changed and all("q_proj" in name or "v_proj" in name for name in changed)
    assert AutoModelForCausalLM.from_pretrained(out / "final").num_parameters() == sum(t.numel() for t in start.values())
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(steps) == 2 and all(r["grad_norm"] > 0 for r in steps)
    # The KL against the adapter-off reference: 0 before the first update (LoRA starts as the identity), then not.
    kl = {"spo": "kl", "dense": "dense/kl"}.get(method)
    if kl:
        assert steps[0][kl] == pytest.approx(0.0, abs=1e-6) and steps[1][kl] != 0


def test_the_evaluation_line_says_how_much_training_is_left(tmp_path):
    import time
    from types import SimpleNamespace

    from segrl.training import RunLogger

    logger = RunLogger(tmp_path / "m.jsonl", None, None, 10, 1.0, 8, max_generated_tokens=1000)
    logger.start = time.perf_counter() - 30  # 30 s of training so far
    assert logger._left(SimpleNamespace(global_step=5, max_steps=20)) == ", about 1m30s of training left"
    logger.generated_tokens = 500  # the budget is further along than the steps: it decides
    assert logger._left(SimpleNamespace(global_step=5, max_steps=20)) == ", about 30s of training left"
    logger.start, logger.generated_tokens = time.perf_counter() - 7200, 0
    assert logger._left(SimpleNamespace(global_step=1, max_steps=3)) == ", about 4h00m of training left"
    assert logger._left(SimpleNamespace(global_step=0, max_steps=3)) == ""  # nothing to extrapolate from yet
