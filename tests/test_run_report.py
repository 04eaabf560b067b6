"""report.html of one training run: written by every training command at the end, a plot per metric namespace, text
escaped, damaged metrics still give a page, and a report that fails is a warning that leaves the run complete."""

import json
import logging
import math
import re

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from segrl import report
from segrl.cli import app
from segrl.report import metric_namespace, metric_series, write_run_report

pytestmark = pytest.mark.usefixtures("one_thread")

SHORT = ["--max_steps", "2", "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no"]
HOSTILE = "<script>alert(1)</script>"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def plotted_namespaces(page: str) -> list[str]:
    """The namespaces with a figure in ``page``, in page order ("top" for metrics without one)."""
    figures = re.findall(r'<h3 id="ns-([^"]+)">[^<]*</h3><img class="plots" alt="[^"]*" '
                         r'src="data:image/png;base64,[A-Za-z0-9+/=]{500,}">', page)
    return figures


def namespaces_over_steps(run_dir) -> set[str]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {metric_namespace(name) or "top" for name, (steps, _) in metric_series(records).items() if len(steps) >= 2}


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page and "http://" not in page and "https://" not in page


def make_run(path, records, config=None, example=None, tail=""):
    path.mkdir(parents=True)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    if example is not None:
        (path / "example.json").write_text(json.dumps(example))
    return path


def rl_records(steps=3):
    records = [{"step": 0, "wall_seconds": 0.0, "eval/accuracy": 0.1, "eval/accuracy_greedy": 0.2,
                "tokens/generated": 0}]
    for step in range(1, steps + 1):
        records.append({"step": step, "wall_seconds": 1.5 * step, "loss": 0.5 / step, "reward": 0.1 * step,
                        "segments/per_completion": 4.0, "segments/time/mc_seconds": 0.2, "guards/skipped_steps": 0.0,
                        "tokens/generated": 100 * step, f"rewards/{HOSTILE}/mean": 0.3, "epoch": 0.1 * step})
        records.append({"step": step, "wall_seconds": 1.5 * step, "eval/accuracy": 0.1 + 0.1 * step,
                        "eval/accuracy_greedy": 0.2, "tokens/generated": 100 * step})
    records.append({"step": steps, "wall_seconds": 1.5 * steps, "train_runtime": 4.5, "train_loss": 0.3})
    return records


RL_CONFIG = {"method": "spo", "run": {"task": "arith", "model": f"models/{HOSTILE}", "eval_every": 1},
             "trainer": {"learning_rate": 1e-5, "max_steps": 3, "num_train_epochs": 3.0, "spo_mode": "tree",
                         "tree_branching": [3, 3, 3], "num_mc_samples": 9, "seed": 7},
             "versions": {"segrl": "0.1.0", "trl": "1.16.0"}, "git_commit": "abc123"}
EXAMPLE = {"prompt": f"Ann has {HOSTILE} apples", "pieces": ["12", "+", "7", "=19\n"], "segment_ids": [0, 0, 1, 1],
           "advantages": [0.0, 0.5, -1.0, 0.0], "reward": 1.0}


def test_page_has_the_header_a_plot_per_namespace_a_table_and_the_example(tmp_path):
    run_dir = make_run(tmp_path / "spo", rl_records(), RL_CONFIG, EXAMPLE)
    path = write_run_report(run_dir)
    assert path == run_dir / "report.html"
    page = path.read_text()
    assert_self_contained(page)
    assert "<title>segrl train spo (tree): spo</title>" in page
    assert "<td class=\"name\">arith</td>" in page and "<td class=\"name\">1e-05</td>" in page
    assert "<th>--tree_branching</th><td class=\"name\">[3, 3, 3]</td>" in page
    assert "--num_mc_samples" not in page.split("<details>")[0]  # a chain-only field: not in the header of a tree run
    assert "--num_train_epochs" not in page.split("<details>")[0]  # max_steps decides
    assert "segrl 0.1.0, trl 1.16.0" in page and "abc123" in page
    # top level, then eval, then the others in order of appearance; epoch and the one-off summary are not plotted
    assert plotted_namespaces(page) == ["top", "eval", "segments", "guards", "tokens", "rewards"]
    assert '<td class="name">train_runtime</td><td>1</td>' in page  # one value: in the table, not plotted
    # evaluation records are their own series: the tokens/generated they repeat is not counted twice
    assert '<td class="name">tokens/generated</td><td>3</td><td>100</td><td>300</td>' in page
    assert '<td class="name">eval/accuracy</td><td>4</td>' in page
    # text from the data is escaped: the prompt, the model name, a metric name
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 3
    assert "Ann has &lt;script&gt;" in page and "models/&lt;script&gt;" in page
    assert page.count('class="cut"') == 1 and "advantage -1.000" in page  # the coloured example of report.py


def test_nan_infinity_and_a_torn_last_line_still_give_a_page(tmp_path):
    records = rl_records()
    records[1]["loss"] = math.nan
    records[3]["reward"] = math.inf
    records[5]["segments/per_completion"] = True  # not a number: left out
    run_dir = make_run(tmp_path / "torn", records, RL_CONFIG, tail='[1, 2]\n{"step": 4, "loss": 0.')
    page = write_run_report(run_dir).read_text()
    assert_self_contained(page)
    assert "2 line(s) of metrics.jsonl were not JSON objects" in page
    assert "NaN or infinite values (left out of the plots) in: loss, reward." in page
    assert '<td class="name">loss</td><td>3</td><td>nan</td><td>0.1667</td><td>0.1667</td><td>0.25</td>' in page
    assert '<td class="name">segments/per_completion</td><td>2</td>' in page
    assert plotted_namespaces(page)[:2] == ["top", "eval"]


def test_a_run_directory_with_little_in_it_still_gets_a_page(tmp_path):
    only_nan = make_run(tmp_path / "nan", [{"step": 1, "loss": math.nan}, {"step": 2, "loss": math.nan}])
    page = write_run_report(only_nan).read_text()
    assert "no config.json" in page and "segrl training run: nan" in page
    assert plotted_namespaces(page) == ["top"]  # a plot that says "no finite value"
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("[1, 2")
    page = write_run_report(tmp_path / "empty").read_text()
    assert "No metrics.jsonl in" in page and "config.json could not be read" in page
    assert "No metric was logged." in page and plotted_namespaces(page) == []


def test_only_the_main_process_writes(tmp_path):
    run_dir = make_run(tmp_path / "r", rl_records())
    assert write_run_report(run_dir, main_process=False) is None
    assert not (run_dir / "report.html").exists()


def test_a_failing_report_is_a_warning_and_changes_nothing(tmp_path, monkeypatch, caplog):
    run_dir = make_run(tmp_path / "r", rl_records(), RL_CONFIG, EXAMPLE)
    (run_dir / "report.html").write_text("earlier report")
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}

    def broken(*args, **kwargs):
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(report, "plot_metrics", broken)
    with caplog.at_level(logging.WARNING, logger="segrl.report"):
        assert write_run_report(run_dir) is None
    assert "Could not write" in caplog.text and "RuntimeError: plotting broke" in caplog.text
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before  # no temporary file left either

    monkeypatch.undo()
    blocked = make_run(tmp_path / "blocked", rl_records())
    (blocked / "report.html").mkdir()  # the rename cannot replace a directory
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="segrl.report"):
        assert write_run_report(blocked) is None
    assert "Could not write" in caplog.text and sorted(p.name for p in blocked.iterdir()) == ["metrics.jsonl",
                                                                                              "report.html"]


# Every training command writes the page at the end of a short run.


def check_run_page(out, title):
    page = (out / "report.html").read_text()
    assert_self_contained(page)
    assert f"<title>{title}: {out.name}</title>" in page
    assert set(plotted_namespaces(page)) == namespaces_over_steps(out) != set()
    assert (out / "final" / "model.safetensors").is_file()
    return page


def test_rl_run_writes_the_report(random_model_dir, tmp_path):
    """`segrl train spo` (every RL method ends in the same `train()`): segments/*, eval/*, the example."""
    out = tmp_path / "spo"
    result = run("train", "spo", "--model", random_model_dir, "--output_dir", out, "--per_device_train_batch_size", 4,
                 "--num_generations", 4, "--max_completion_length", 8, "--train_examples", 8, "--eval_examples", 2,
                 "--eval_every", 1, "--num_mc_samples", 2, "--cutpoint_interval", 2, *SHORT)
    assert result.exit_code == 0, result.output
    page = check_run_page(out, "segrl train spo (chain)")
    assert {"top", "eval", "segments", "tokens", "guards"} <= set(plotted_namespaces(page))
    assert "An example completion, coloured by segment advantage" in page and 'class="example"' in page


def test_rm_run_writes_the_report(random_model_dir, tmp_path):
    pairs = [{"prompt": p, "chosen": " hot. The bread was fresh!", "rejected": " cold."}
             for p in ["The soup was", "We sat by the", "Would we", "The waiter"]]
    prepared = tmp_path / "prepared.jsonl"
    result = run("prepare-segments", write_jsonl(tmp_path / "pairs.jsonl", pairs), "--output", prepared, "--model",
                 random_model_dir, "--threshold", "4.5")
    assert result.exit_code == 0, result.output
    out = tmp_path / "rm"
    result = run("train", "rm", "--model", random_model_dir, "--train_file", prepared, "--eval_file", prepared,
                 "--per_device_train_batch_size", 2, "--output_dir", out, *SHORT)
    assert result.exit_code == 0, result.output
    page = check_run_page(out, "segrl train rm")
    assert '<td class="name">eval_accuracy</td><td>1</td>' in page  # one evaluation at the end: in the table


@pytest.mark.parametrize("method", ["dpo", "densedpo"])
def test_preference_run_writes_the_report(random_model_dir, tmp_path, method):
    if method == "dpo":
        rows = [{"prompt": f"The soup {HOSTILE} was", "chosen": " hot.", "rejected": " cold."}] * 4
    else:
        tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
        ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        a, b, eos = ids(" hot."), ids(" cold."), tokenizer.eos_token_id
        row = {"prompt_ids": ids("The soup was"), "chosen_ids": a + [eos], "rejected_ids": b + [eos],
               "chosen_segment_ids": [0] * len(a) + [-1], "rejected_segment_ids": [0] * len(b) + [-1],
               "segment_labels": [1]}
        rows = [row] * 4
    out = tmp_path / method
    result = run("train", method, "--train_file", write_jsonl(tmp_path / "pairs.jsonl", rows), "--model",
                 random_model_dir, "--output_dir", out, "--per_device_train_batch_size", 2, *SHORT)
    assert result.exit_code == 0, result.output
    page = check_run_page(out, f"segrl train {method}")
    assert "rewards" in plotted_namespaces(page)  # TRL's rewards/chosen, rewards/margins, ...


def test_remedy_run_writes_the_report(random_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    torch.manual_seed(0)
    backbone = tmp_path / "backbone"  # translation requests need more than the fixture's 64 positions
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
                     ).save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    ratings = [{"lp": "en-de", "src": f"The soup {i} was hot.", "ref": f"Die Suppe {i} war heiss.",
                "mt": f"{system} soup {i}", "system": system, "score": score}
               for i in range(4) for system, score in (("good", 0.0), ("poor", -5.0))]
    out = tmp_path / "remedy"
    result = run("remedy", "train", "--train_file", write_jsonl(tmp_path / "ratings.jsonl", ratings), "--model",
                 backbone, "--test_fraction", "0.25", "--per_device_train_batch_size", 2, "--output_dir", out, *SHORT)
    assert result.exit_code == 0, result.output
    page = check_run_page(out, "segrl remedy train")
    assert "top" in plotted_namespaces(page)  # TRL's loss, accuracy, margin, ...


def test_a_failing_report_leaves_the_run_complete(random_model_dir, tmp_path, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise MemoryError("no memory left for the plots")

    monkeypatch.setattr(report, "render_run_report", broken)
    rows = [{"prompt": "The soup was", "chosen": " hot.", "rejected": " cold."}] * 4
    out = tmp_path / "dpo"
    with caplog.at_level(logging.WARNING, logger="segrl.report"):
        result = run("train", "dpo", "--train_file", write_jsonl(tmp_path / "pairs.jsonl", rows), "--model",
                     random_model_dir, "--output_dir", out, "--per_device_train_batch_size", 2, *SHORT)
    assert result.exit_code == 0, result.output
    assert f"Could not write {out / 'report.html'} (MemoryError: no memory left for the plots)" in caplog.text
    assert not (out / "report.html").exists()
    assert (out / "final" / "model.safetensors").is_file() and (out / "config.json").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
