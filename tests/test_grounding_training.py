"""The LENS recipe end to end: `segrl train grpo --config configs/grounding_grpo.yaml` sums the three rewards with
the recipe's weights, logs each one, and evaluates the held-out format rate and IoUs.

The policy is a 0.1M-parameter model fine-tuned to answer every scene with the whole grid, so that the numbers are
known in advance: greedy, its box IoU on a scene is area(target box) / 64², its mask IoU is |target mask| / 64²."""

import json
import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from segrl.cli import app
from segrl.rewards.lens import rle_decode
from segrl.tasks import get_task

RECIPE = Path(__file__).parents[1] / "configs" / "grounding_grpo.yaml"
WHOLE_GRID = "<think>the whole grid</think>\n<answer>[0,0,64,64]</answer>"
runner = CliRunner()


@pytest.fixture(scope="module")
def whole_grid_model(tmp_path_factory):
    from segrl.tiny import build_tiny

    grounding = get_task("grounding")
    task = types.ModuleType("whole_grid")
    task.make_dataset = lambda split, n, seed=0: grounding.make_dataset(split, n, seed).map(
        lambda row: {"completion": WHOLE_GRID})
    task.corpus, task.reward = grounding.corpus, grounding.reward
    path = tmp_path_factory.mktemp("whole-grid")
    torch.manual_seed(0)
    build_tiny(task, path, size="test", steps=100, batch_size=8, learning_rate=3e-3, eval_examples=0, log=None)
    return path


def train(model: Path, out: Path, *extra: str) -> list[dict]:
    args = ["train", "grpo", "--config", str(RECIPE), "--model", str(model), "--output_dir", str(out),
            "--max_steps", "2", "--per_device_train_batch_size", "8", "--num_generations", "4",
            "--max_completion_length", "40", "--train_examples", "16", "--eval_examples", "8", "--eval_every", "1",
            *extra]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_recipe_sums_and_logs_the_three_rewards_and_evaluates_iou(whole_grid_model, tmp_path):
    records = train(whole_grid_model, tmp_path / "lens")
    config = json.loads((tmp_path / "lens" / "config.json").read_text())
    assert config["run"]["task"] == "grounding"
    assert config["trainer"]["reward_weights"] == [1.0, 1.0, 1.0]
    assert (config["trainer"]["loss_type"], config["trainer"]["beta"], config["trainer"]["num_generations"]) == (
        "grpo", 0.04, 4)

    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2
    for r in steps:
        parts = [r[f"rewards/{name}/mean"] for name in ("format_reward", "box_iou_reward", "mask_iou_reward")]
        assert r["reward"] == pytest.approx(sum(parts), abs=1e-6)
    assert any(r["rewards/format_reward/mean"] > 0 and r["rewards/box_iou_reward/mean"] > 0 for r in steps)

    # greedy at the start the policy answers the whole grid: the IoUs are the targets' area fractions
    held_out = get_task("grounding").make_dataset("test", 8, seed=config["trainer"]["seed"])
    box_fraction = sum((b[2] - b[0]) * (b[3] - b[1]) / 64 ** 2 for b in held_out["box"]) / 8
    mask_fraction = sum(rle_decode(m).sum().item() / 64 ** 2 for m in held_out["mask"]) / 8
    start = next(r for r in records if "eval/accuracy" in r)
    assert start["step"] == 0
    assert start["eval/format_rate_greedy"] == 1.0
    assert start["eval/box_iou_greedy"] == pytest.approx(box_fraction, abs=1e-9)
    assert start["eval/mask_iou_greedy"] == pytest.approx(mask_fraction, abs=1e-9)
    assert start["eval/accuracy_greedy"] == start["eval/acc_at_0.5_greedy"] == 0.0
    assert {"eval/format_rate", "eval/box_iou", "eval/mask_iou", "eval/acc_at_0.5"} <= set(start)


def test_reward_weights_drop_the_mask_level_from_the_sum_but_keep_logging_it(whole_grid_model, tmp_path):
    records = train(whole_grid_model, tmp_path / "no-mask", "--reward_weights", "1", "1", "0")
    steps = [r for r in records if "loss" in r]
    assert any(r["rewards/mask_iou_reward/mean"] > 0 for r in steps)
    for r in steps:
        assert r["reward"] == pytest.approx(
            r["rewards/format_reward/mean"] + r["rewards/box_iou_reward/mean"], abs=1e-6)
