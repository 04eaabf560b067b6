"""One option, two spellings: every multi-word option of a typer command takes --dashed-name (shown first in --help)
and --underscored_name, as TRL's parser does for `segrl train` and `segrl remedy train`."""

import dataclasses
import json
from types import SimpleNamespace
from typing import Optional

import pytest
import typer
from typer.testing import CliRunner

from segrl.cli import _parse_trl, app

runner = CliRunner()

TYPER_COMMANDS = {"segment", "prepare-segments", "fit-normalizer", "quickstart", "decode", "remedy score",
                  "remedy meta-eval"}


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def commands(command=None, path=()):
    """(command path, click command) for the root callback and every command and subcommand of the app."""
    command = command or typer.main.get_command(app)
    yield " ".join(path) or "segrl", command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def spelling_problems(path, option):
    """What is wrong with one option's names: a multi-word long name without its twin, or an underscored name shown
    before the dashed one."""
    problems = []
    for names in (option.opts, option.secondary_opts):  # secondary: the --no-x half of a --x/--no-x flag
        long_names = [name for name in names if name.startswith("--")]
        for name in long_names:
            body = name[2:]
            for twin in ("--" + body.replace("_", "-"), "--" + body.replace("-", "_")):
                if twin not in long_names:
                    problems.append(f"{path}: {name} has no twin {twin}")
        if long_names and "_" in long_names[0]:
            problems.append(f"{path}: {long_names[0]} is listed before its dashed spelling")
    return problems


def test_every_multiword_option_takes_both_spellings():
    seen, problems, twins = set(), [], 0
    for path, command in commands():
        seen.add(path)
        for param in command.params:
            if param.param_type_name != "option":
                continue
            problems += spelling_problems(path, param)
            twins += sum("_" in name for name in (*param.opts, *param.secondary_opts))
    assert TYPER_COMMANDS <= seen, f"commands not found: {TYPER_COMMANDS - seen}"
    assert twins >= 30  # the walk really reached the options
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("opts, secondary, expected", [
    (["--output-dir", "-o"], [], ["--output-dir has no twin --output_dir"]),
    (["--output_dir", "--output-dir"], [], ["--output_dir is listed before its dashed spelling"]),
    (["--chat-template", "--chat_template"], ["--no-chat-template"], ["--no-chat-template has no twin"]),
    (["--seed", "--output-dir", "--output_dir"], ["--no-x", "--no_x"], []),
])
def test_the_spelling_check_catches_a_missing_twin(opts, secondary, expected):
    problems = spelling_problems("cmd", SimpleNamespace(opts=opts, secondary_opts=secondary))
    assert len(problems) == len(expected), problems
    for problem, needle in zip(problems, expected):
        assert needle in problem


def test_help_lists_both_spellings():
    result = runner.invoke(app, ["remedy", "score", "--help"], env={"COLUMNS": "160", "TERMINAL_WIDTH": "160"})
    assert result.exit_code == 0, result.output
    for name in ("--output-dir", "--output_dir", "-o", "--no-ref", "--no_ref", "--batch-size", "--batch_size"):
        assert name in result.output
    assert result.output.index("--output-dir") < result.output.index("--output_dir")
    result = runner.invoke(app, ["segment", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    for name in ("--max-new-tokens", "--max_new_tokens", "--no-chat-template", "--no_chat_template"):
        assert name in result.output


def test_meta_eval_takes_underscored_options(tmp_path):
    common = ["remedy", "meta-eval", "--metric", "chrf", "--permutations", "10", "--seed", "1"]
    dashed = run(*common, "--num-sources", "5", "--batch-size", "4", "--wmt-ref", "refA", "-o", tmp_path / "d.json")
    underscored = run(*common, "--num_sources", "5", "--batch_size", "4", "--wmt_ref", "refA",
                      "--output", tmp_path / "u.json")
    assert dashed.exit_code == 0, dashed.output
    assert underscored.exit_code == 0, underscored.output
    results = json.loads((tmp_path / "u.json").read_text())["results"]
    assert results == json.loads((tmp_path / "d.json").read_text())["results"]
    assert "average" in results


def test_score_takes_underscored_no_ref_and_output_dir(tmp_path):
    # Both --ref and --no_ref: the command's own usage error, so --no_ref was read as the flag (not "No such option").
    result = run("remedy", "score", "--model", tmp_path / "absent", "--src", tmp_path / "s", "--mt", tmp_path / "m",
                 "--lp", "en-de", "--ref", tmp_path / "r", "--no_ref", "--output_dir", tmp_path / "out",
                 "--batch_size", "2")
    assert result.exit_code == 2, result.output
    assert "give either --ref FILE or --no-ref" in result.output
    assert "No such option" not in result.output


def test_segment_takes_underscored_options(random_model_dir, tmp_path):
    page = tmp_path / "p.html"
    result = run("segment", "--model", random_model_dir, "--prompt", "Review:", "--method", "uncertainty",
                 "--tau_u", "2.5", "--min_len", "2", "--max_len", "8", "--max_new_tokens", "6",
                 "--no_chat_template", "--cache_dir", tmp_path / "cache", "--html", page)
    assert result.exit_code == 0, result.output
    assert page.exists()


@dataclasses.dataclass
class _Run:
    max_len: int = 3


@dataclasses.dataclass
class _Config:  # what _parse_trl may pass (--output_dir; --use_cpu, --bf16 on a CPU-only machine) and TRL's --seed
    output_dir: Optional[str] = None
    seed: int = 0
    use_cpu: bool = False
    bf16: bool = True


@pytest.mark.parametrize("flag", ["--output_dir", "--output-dir", "--output-dir="])
def test_trl_commands_take_either_spelling_and_keep_the_given_output_dir(flag, tmp_path):
    # HfArgumentParser registers --name and --name-with-dashes for every field; the default output directory must
    # not override a dashed --output-dir.
    given = ["--max-len", "5", *([flag + str(tmp_path)] if flag.endswith("=") else [flag, str(tmp_path)])]
    run_args, config = _parse_trl(given, _Run, _Config, "segrl train test", "runs/default")
    assert config.output_dir == str(tmp_path)
    assert run_args.max_len == 5
    run_args, config = _parse_trl(["--max_len", "4"], _Run, _Config, "segrl train test", "runs/default")
    assert (config.output_dir, run_args.max_len) == ("runs/default", 4)


def test_decode_takes_trls_names_for_its_sample_count_and_length():
    options = {param.name: set(param.opts) for path, command in commands() if path == "decode"
               for param in command.params}
    assert {"--num-generations", "--num_generations"} <= options["n"]
    assert {"--max-completion-length", "--max_completion_length"} <= options["max_new_tokens"]
