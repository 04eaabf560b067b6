"""The `segrl` command line: the segment command end to end, and one clear error per kind of bad input."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from segrl.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_help_explains_the_segment_command():
    result = run("segment", "--help")
    assert result.exit_code == 0
    for option in ("--method", "--threshold", "--tau-u", "--rho", "--interval", "--delimiter", "--input", "--html"):
        assert option in result.output


def test_segment_flags_write_an_html_page(random_model_dir, tmp_path):
    page = tmp_path / "out" / "segments.html"
    result = run("segment", "--model", random_model_dir, "--prompt", "Review:", "--response", "The soup was hot. Yes.",
                 "--method", "delimiter", "--html", page)
    assert result.exit_code == 0, result.output
    assert "2 segments" in result.output
    assert page.read_text().count('class="seg"') == 2


def test_segment_samples_a_response_when_none_is_given(random_model_dir, tmp_path):
    result = run("segment", "--model", random_model_dir, "--prompt", "Review:", "--max-new-tokens", "8",
                 "--html", tmp_path / "p.html")
    assert result.exit_code == 0, result.output
    assert "tokens," in result.output


def test_segment_reads_jsonl(random_model_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": "Review:", "completion": "The soup was hot."}, {"prompt": "Q?", "completion": "Yes, we would."}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run("segment", "--model", random_model_dir, "--input", data, "--method", "fixed", "--length", "2",
                 "--html", tmp_path / "p.html")
    assert result.exit_code == 0, result.output
    assert "1/2" in result.output and "2/2" in result.output


@pytest.mark.parametrize(
    "lines, args, message",
    [
        (['{"prompt": "a", "completion": "b"}', '{"prompt": "a" "completion": "b"}'], [], "line 2: not valid JSON"),
        (['{"prompt": "a"}'], [], "line 1: missing field 'completion'"),
        (['{"prompt": "a", "completion": ""}'], [], "row 1: The response is empty"),
        (['{"prompt": "a", "completion": "' + "The soup was hot. " * 20 + '"}'], [], "longer than the model's context"),
        (['{"prompt": "a", "completion": "b"}'], ["--method", "bogus"], "Unknown --method 'bogus'"),
        (['{"prompt": "a", "completion": "b"}'], ["--prompt", "x"], "not both"),
    ],
)
def test_bad_input_is_one_clear_message(random_model_dir, tmp_path, lines, args, message):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = run("segment", "--model", random_model_dir, "--input", data, "--html", tmp_path / "p.html", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "p.html").exists()


@pytest.mark.parametrize("model, message", [("./missing/model", "Model directory not found"), ("tiny-nope", "Unknown task")])
def test_bad_model_is_one_clear_message(tmp_path, model, message):
    result = run("segment", "--model", model, "--response", "hi", "--cache-dir", tmp_path)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_error_text_with_brackets_is_printed_verbatim():
    result = run("segment", "--response", "hi", "--method", "[bold]x[/bold]")
    assert result.exit_code == 2 and "Unknown --method '[bold]x[/bold]'" in result.output


def test_segrl_defaults_give_way_to_a_config_file_and_to_flags(tmp_path):
    """segrl's defaults (seed 0 where TRL's is 42, as it also names the tiny-<task> preset; the output directory;
    use_cpu on a machine without CUDA) are defaults: a --config file overrides them, and a flag overrides both."""
    from trl import GRPOConfig

    from segrl.cli import _parse_trl
    from segrl.training import RunArguments

    config_file = tmp_path / "run.yaml"
    config_file.write_text(f"seed: 7\noutput_dir: {tmp_path / 'from-yaml'}\n")
    seen = {}
    for name, args in {"default": [], "flag": ["--seed", "5", "--output-dir", str(tmp_path / "flag")],
                       "config": ["--config", str(config_file)],
                       "both": ["--config", str(config_file), "--seed", "9"]}.items():
        _, config = _parse_trl(args, RunArguments, GRPOConfig, "segrl train grpo", str(tmp_path / "default"))
        seen[name] = (config.seed, Path(config.output_dir).name, config.use_cpu)
    assert seen == {"default": (0, "default", True), "flag": (5, "flag", True), "config": (7, "from-yaml", True),
                    "both": (9, "from-yaml", True)}
