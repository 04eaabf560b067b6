"""The quickstart end to end on a tiny random model and a small budget: three runs and one report."""

import json
import re

from segrl.quickstart import METHODS, quickstart


def test_quickstart_runs_every_method_at_the_budget_and_reports(random_model_dir, tmp_path):
    report = quickstart(tmp_path / "qs", token_budget=300, eval_examples=4, eval_every=1, model=str(random_model_dir),
                        per_device_train_batch_size=8, num_generations=4, max_completion_length=8)
    page = report.read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 2
    for name in METHODS:
        assert f"<td>{name}</td>" in page
        records = [json.loads(line) for line in (tmp_path / "qs" / name.lower() / "metrics.jsonl").open()]
        steps = [r for r in records if "loss" in r]
        assert steps[-1]["tokens/generated"] >= 300 and (len(steps) == 1 or steps[-2]["tokens/generated"] < 300)
