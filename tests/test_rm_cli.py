"""The segment reward model pipeline through the CLI: prepare-segments, train rm, fit-normalizer, train dense."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from segrl.cli import app

runner = CliRunner()

PAIRS = [
    {"prompt": p, "chosen": c, "rejected": r}
    for p in ["The soup was", "We sat by the", "Would we", "The waiter"]
    for c, r in [(" hot. The bread was fresh!", " cold."), (" the window.", " by the door and smiled.")]
]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def pipeline(random_model_dir, tmp_path_factory):
    """prepare-segments -> train rm -> fit-normalizer, once for the module."""
    tmp = tmp_path_factory.mktemp("rm-pipeline")
    pairs = write_jsonl(tmp / "pairs.jsonl", PAIRS + [dict(PAIRS[0], rejected=PAIRS[0]["chosen"])])
    prepared = tmp / "prepared.jsonl"
    result = run("prepare-segments", pairs, "--output", prepared, "--model", random_model_dir, "--threshold", "4.5")
    assert result.exit_code == 0, result.output
    assert "Wrote 8 of 9 pairs" in result.output and "1 chosen equals rejected" in result.output
    result = run("train", "rm", "--model", random_model_dir, "--train_file", prepared, "--eval_file", prepared,
                 "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1",
                 "--output_dir", tmp / "rm", "--report_to", "none", "--save_strategy", "no")
    assert result.exit_code == 0, result.output
    result = run("fit-normalizer", tmp / "rm" / "final", prepared, "--output", tmp / "norm.json")
    assert result.exit_code == 0, result.output
    return tmp


def test_prepared_rows_keep_their_columns(pipeline):
    rows = [json.loads(line) for line in (pipeline / "prepared.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(row["segment_threshold"] == 4.5 for row in rows)
    assert rows[0]["chosen"] == PAIRS[0]["chosen"]


def test_train_rm_writes_model_metrics_and_config(pipeline):
    final = pipeline / "rm" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    config = json.loads((final / "config.json").read_text())
    assert config["segrl_segmentation"] == {"variant": "segment", "threshold": 4.5}
    records = [json.loads(line) for line in (pipeline / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert any("eval_accuracy" in r for r in records)


def test_prepared_rows_name_their_reference_and_train_rm_checks_it(pipeline, random_model_dir, tmp_path):
    rows = [json.loads(line) for line in (pipeline / "prepared.jsonl").read_text().splitlines()]
    assert rows[0]["segment_reference"] == str(random_model_dir.resolve())
    other = tmp_path / "other-model"
    shutil.copytree(random_model_dir, other)
    result = run("train", "rm", "--model", other, "--train_file", pipeline / "prepared.jsonl", "--max_steps", "1",
                 "--output_dir", tmp_path / "rm", "--report_to", "none")
    assert result.exit_code == 2
    assert f"was segmented by {random_model_dir.resolve()}, but the reward model would start from" in result.output


def test_fit_normalizer_writes_a_location_normalizer(pipeline):
    data = json.loads((pipeline / "norm.json").read_text())
    assert data["kind"] == "location"


def test_train_dense_with_the_reward_model(pipeline, random_model_dir, tmp_path):
    result = run("train", "dense", "--model", random_model_dir, "--task", "arith",
                 "--reward_model", pipeline / "rm" / "final", "--normalizer", pipeline / "norm.json",
                 "--max_steps", "1", "--per_device_train_batch_size", "4", "--num_generations", "4",
                 "--max_completion_length", "6", "--eval_examples", "4", "--eval_every", "1", "--logging_steps", "1",
                 "--train_examples", "8", "--output_dir", tmp_path / "dense", "--report_to", "none",
                 "--save_strategy", "no")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "dense" / "config.json").read_text())
    assert config["trainer"]["reward_weights"] == [0.0]  # the task's reward is logged, not trained on
    records = [json.loads(line) for line in (tmp_path / "dense" / "metrics.jsonl").read_text().splitlines()]
    step = next(r for r in records if "loss" in r)
    assert "dense/reward" in step and "value/loss" in step and "rewards/reward/mean" in step
    assert (tmp_path / "dense" / "value_model" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "rm"], "--train_file is required"),
        (["train", "rm", "--train_file", "PAIRS"], "missing field 'chosen_ids' (prepare the file with `segrl"),
        (["fit-normalizer", "./missing", "x.jsonl", "--output", "n.json"], "Cannot load the reward model"),
        (["train", "dense", "--beta", "0.1"], "leave TRL's beta at 0"),
        (["train", "bogus"], "Unknown method 'bogus'"),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path, args, message):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)  # not prepared
    result = run(*[str(pairs) if a == "PAIRS" else a for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
