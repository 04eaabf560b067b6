"""HTML reports of runs: curves, the summary table, an example coloured by advantage, torn metrics files."""

import json
import re

import pytest

from segrl.errors import UserError
from segrl.report import final_row, read_metrics, write_report


def make_run(path, accuracies, tokens_per_step, example=None):
    path.mkdir()
    lines = []
    for step, accuracy in enumerate(accuracies):
        if step:
            lines.append({"step": step, "wall_seconds": 2.0 * step, "loss": 0.1, "tokens/generated": tokens_per_step * step})
        lines.append({"step": step, "wall_seconds": 2.0 * step, "eval/accuracy": accuracy,
                      "eval/accuracy_greedy": accuracy + 0.1, "tokens/generated": tokens_per_step * step})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 9, "wall')
    if example:
        (path / "example.json").write_text(json.dumps(example))
    return path


def test_torn_last_line_is_skipped_and_final_row_is_right(tmp_path):
    run = make_run(tmp_path / "grpo", [0.2, 0.25, 0.3], 100)
    records = read_metrics(run)
    assert len(records) == 5
    assert final_row(records) == {
        "steps": 2, "accuracy start": 0.2, "accuracy end": 0.3, "greedy start": 0.2 + 0.1, "greedy end": 0.3 + 0.1,
        "generated tokens": 200, "train seconds": 4.0,
    }


def test_report_has_both_plots_a_row_per_run_and_the_example(tmp_path):
    example = {"prompt": "Ann has <3> apples", "pieces": ["12", "+", "7", "=19\n"], "segment_ids": [0, 0, 1, 1],
               "advantages": [0.0, 0.5, -1.0, 0.0], "reward": 1.0}
    runs = {"GRPO": make_run(tmp_path / "grpo", [0.2, 0.3], 100),
            "SPO-chain": make_run(tmp_path / "spo", [0.2, 0.4], 500, example)}
    page = write_report(tmp_path / "out" / "report.html", runs, "test report").read_text()
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 2
    assert "<td>GRPO</td>" in page and "<td>SPO-chain</td>" in page and "<td>500</td>" in page
    assert "Ann has &lt;3&gt; apples" in page
    assert page.count('class="cut"') == 1  # one boundary between the two segments
    assert "advantage -1.000" in page and "rgba(210,50,50,1.00)" in page


def test_missing_metrics_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="No metrics.jsonl"):
        read_metrics(tmp_path)
