"""`segrl train dpo` and `segrl train densedpo` on a tiny random model: outputs, metrics and bad input."""

import json

from transformers import AutoTokenizer
from typer.testing import CliRunner

from segrl.cli import app

COMMON = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--logging_steps", "1", "--report_to", "none",
          "--save_strategy", "no", "--learning_rate", "1e-3"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_train_dpo_on_text_pairs(random_model_dir, tmp_path):
    rows = [{"prompt": "The soup was", "chosen": " hot.", "rejected": " cold."},
            {"prompt": "We sat by the", "chosen": " window.", "rejected": " door."}] * 2
    result = CliRunner().invoke(app, ["train", "dpo", "--train_file", write_jsonl(tmp_path / "p.jsonl", rows),
                                      "--model", str(random_model_dir), "--output_dir", str(tmp_path / "dpo"), *COMMON])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (tmp_path / "dpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/margins" in s for s in steps)
    assert json.loads((tmp_path / "dpo" / "config.json").read_text())["pairs"] == 4
    assert (tmp_path / "dpo" / "final" / "model.safetensors").is_file()


def test_train_densedpo_on_aligned_pairs(random_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, a, b = ids("The soup was"), ids(" hot."), ids(" cold.")
    row = {"prompt_ids": prompt, "chosen_ids": a + [tokenizer.eos_token_id], "rejected_ids": b + [tokenizer.eos_token_id],
           "chosen_segment_ids": [0] * len(a) + [-1], "rejected_segment_ids": [0] * len(b) + [-1],
           "segment_labels": [1]}
    path = write_jsonl(tmp_path / "aligned.jsonl", [row, dict(row, segment_labels=[0])] * 2)
    result = CliRunner().invoke(app, ["train", "densedpo", "--train_file", path, "--model", str(random_model_dir),
                                      "--output_dir", str(tmp_path / "ddpo"), *COMMON])
    assert result.exit_code == 0, result.output
    steps = [json.loads(line) for line in (tmp_path / "ddpo" / "metrics.jsonl").read_text().splitlines()]
    logged = [s for s in steps if "dense_dpo/tied_pairs" in s]
    # 2 steps x 2 pairs go through the 4 rows once, whatever the order: the two tied pairs are counted
    assert len(logged) == 2 and sum(s["dense_dpo/tied_pairs"] for s in logged) == 2

    bad = write_jsonl(tmp_path / "bad.jsonl", [dict(row, segment_labels=[2])])
    result = CliRunner().invoke(app, ["train", "densedpo", "--train_file", bad, "--model", str(random_model_dir),
                                      "--output_dir", str(tmp_path / "bad"), *COMMON])
    assert result.exit_code == 2 and "segment_labels" in result.output
    text_rows = write_jsonl(tmp_path / "text.jsonl", [{"prompt": "a", "chosen": "b", "rejected": "c"}])
    result = CliRunner().invoke(app, ["train", "densedpo", "--train_file", text_rows, "--model",
                                      str(random_model_dir), *COMMON])
    assert result.exit_code == 2 and "missing field 'prompt_ids'" in result.output
