"""A user's own prompts and reward functions for `segrl train` (segrl.user_data): reading, refusing, and a run."""

import hashlib
import json
import math
import sys

import pytest
from typer.testing import CliRunner

from segrl.cli import app
from segrl.errors import UserError
from segrl.user_data import RewardEvaluation, load_prompts, load_reward_functions

REWARDS = '''
def has_target(prompts, completions, target, **kwargs):
    return [1.0 if t in c else 0.0 for c, t in zip(completions, target)]

def length_penalty(prompts, completions, **kwargs):
    return [-len(c) / 100 for c in completions]

NOT_A_FUNCTION = 3
'''
WORDS = ["soup", "bread", "window", "door", "cold", "hot", "back", "here"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def in_user_dir(tmp_path, monkeypatch):
    """A working directory holding the user's reward module and prompt files, as a user would run from."""
    (tmp_path / "user_rewards_module.py").write_text(REWARDS)
    write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"Say {w}:", "target": w} for w in WORDS])
    write_jsonl(tmp_path / "eval.jsonl", [{"prompt": f"Repeat {w}:", "target": w} for w in WORDS[:3]])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))  # import_function adds the working directory: undone after
    monkeypatch.delitem(sys.modules, "user_rewards_module", raising=False)
    return tmp_path


def test_prompts_from_jsonl_keep_every_column(in_user_dir):
    dataset = load_prompts("train.jsonl", "train", "--train_file")
    assert len(dataset) == 8 and dataset.column_names == ["prompt", "target"] and dataset[2]["target"] == "window"
    chat = write_jsonl(in_user_dir / "chat.jsonl", [{"prompt": [{"role": "user", "content": "Hi"}], "id": 1}])
    assert load_prompts(str(chat), "train", "--train_file")[0]["prompt"] == [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "x": 1}, {"x": 2}], "line 2: missing field 'prompt'"),
    ([{"prompt": "a"}, {"prompt": "  "}], "line 2: empty 'prompt'"),
    ([{"prompt": 7}], "line 1: 'prompt' must be text"),
    ([{"prompt": [{"role": "user"}]}], "line 1: 'prompt' must be text or a list of"),
    ([{"prompt": "a", "target": "x"}, {"prompt": "b"}], "line 2: columns ['prompt'] differ from the first row's"),
])
def test_unusable_prompt_rows_are_refused_by_line(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(UserError, match="--train_file .*" + message.replace("[", r"\[").replace("]", r"\]")):
        load_prompts(str(path), "train", "--train_file")


def test_prompts_from_a_dataset_directory_and_a_missing_source(tmp_path):
    data = tmp_path / "my_dataset"
    data.mkdir()
    write_jsonl(data / "train.jsonl", [{"prompt": "a", "y": 1}, {"prompt": "b", "y": 2}])
    write_jsonl(data / "test.jsonl", [{"prompt": "c", "y": 3}])
    assert load_prompts(str(data), "test", "--eval_file")["prompt"] == ["c"]
    write_jsonl(data / "train.jsonl", [{"text": "a"}])
    (data / "test.jsonl").unlink()
    with pytest.raises(UserError, match="no 'prompt' column"):
        load_prompts(str(data), "train", "--train_file")
    with pytest.raises(UserError, match="--train_file: cannot open 'no/such/dataset'"):
        load_prompts("no/such/dataset", "train", "--train_file")


def test_reward_functions_by_module_and_name(in_user_dir):
    # module:function, or TRL's dotted module.function
    first, second = load_reward_functions(["user_rewards_module:has_target", "user_rewards_module.length_penalty"])
    assert first(prompts=["p"], completions=["soup!"], target=["soup"]) == [1.0]
    assert second(prompts=["p"], completions=["abcd"]) == [-0.04]


@pytest.mark.parametrize("path, message", [
    ("no_such_module_xyz:reward", "cannot import 'reward' from 'no_such_module_xyz'"),
    ("user_rewards_module:missing", "cannot import 'missing' from 'user_rewards_module'"),
    ("user_rewards_module:NOT_A_FUNCTION", "'NOT_A_FUNCTION' is not callable"),
    ("user_rewards_module.missing", "cannot import 'missing' from 'user_rewards_module'"),
    ("reward", "expected module:function"),
])
def test_bad_reward_paths_are_refused(in_user_dir, path, message):
    with pytest.raises(UserError, match=message):
        load_reward_functions([path])


def test_held_out_reward_is_the_weighted_sum_of_the_functions():
    first = lambda prompts, completions, **k: [1.0, None, None, 0.0]  # noqa: E731
    second = lambda prompts, completions, **k: [0.5, 2.0, None, -1.0]  # noqa: E731
    evaluation = RewardEvaluation([first, second], [1.0, 2.0])
    assert evaluation.reward(["p"] * 4, ["c"] * 4) == [2.0, 4.0, None, -2.0]
    assert RewardEvaluation([first], None).reward(["p"] * 4, ["c"] * 4) == [1.0, None, None, 0.0]
    with pytest.raises(UserError, match="non-finite"):
        RewardEvaluation([lambda prompts, completions, **k: [math.nan]], None).reward(["p"], ["c"])


TRAIN = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
         "--max_completion_length", "8", "--eval_every", "1", "--logging_steps", "1", "--report_to", "none",
         "--save_strategy", "no"]


def test_segrl_train_on_user_prompts_and_rewards(random_model_dir, in_user_dir):
    out = in_user_dir / "run"
    result = CliRunner().invoke(app, [
        "train", "spo", "--model", str(random_model_dir), "--train_file", "train.jsonl", "--eval_file", "eval.jsonl",
        "--reward_funcs", "user_rewards_module:has_target", "user_rewards_module:length_penalty",
        "--reward_weights", "1", "0.5", "--num_mc_samples", "2", "--output_dir", str(out), *TRAIN])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/reward" in r]
    assert [r["step"] for r in evals] == [0, 1, 2] and not any("eval/accuracy" in r for r in records)
    # A random model never writes the target: the held-out reward is 0.5 x the length penalty, at most 0.
    assert all(-0.5 * 8 * 8 / 100 <= r["eval/reward"] < 0 for r in evals)
    steps = [r for r in records if "loss" in r]
    assert {"rewards/has_target/mean", "rewards/length_penalty/mean"} <= set(steps[0])
    config = json.loads((out / "config.json").read_text())
    digest = hashlib.sha256((in_user_dir / "train.jsonl").read_bytes()).hexdigest()
    assert config["inputs"]["train_file"] == {"path": "train.jsonl", "sha256": digest}
    assert config["run"]["reward_funcs"] == ["user_rewards_module:has_target", "user_rewards_module:length_penalty"]


def test_user_prompts_without_held_out_prompts_train_without_evaluation(random_model_dir, in_user_dir):
    out = in_user_dir / "run"
    result = CliRunner().invoke(app, ["train", "grpo", "--model", str(random_model_dir), "--train_file",
                                      "train.jsonl", "--reward_funcs", "user_rewards_module:has_target",
                                      "--output_dir", str(out), *TRAIN])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if "loss" in r]) == 2 and not any(k.startswith("eval/") for r in records for k in r)


def test_user_prompts_need_a_model(in_user_dir):
    result = CliRunner().invoke(app, ["train", "grpo", "--train_file", "train.jsonl", "--output_dir",
                                      str(in_user_dir / "run"), *TRAIN])
    assert result.exit_code == 2 and "--train_file needs --model" in result.output


def test_reward_weights_must_match_the_functions(random_model_dir, in_user_dir):
    result = CliRunner().invoke(app, ["train", "grpo", "--model", str(random_model_dir), "--reward_funcs",
                                      "user_rewards_module:has_target", "--reward_weights", "1", "2",
                                      "--output_dir", str(in_user_dir / "run"), *TRAIN])
    assert result.exit_code == 2 and "--reward_weights has 2 weights for 1 reward function(s)" in result.output
    assert not (in_user_dir / "run").exists()
