"""Bad input everywhere (docs/RELIABILITY.md, "Bad input"): every command x the bad inputs that apply to it.

The contract: a user error exits non-zero with ONE line ``error: ...`` naming the file, the line or row, the field
and what was expected; no traceback; nothing written before is lost or corrupted. One test per row family of the
table in docs/RELIABILITY.md; every model is a tiny one built here (conftest's ``random_model_dir``: 64 positions).
"""

import errno
import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification
from typer.testing import CliRunner

from segrl.cli import app

runner = CliRunner()
PREVIOUS = "PREVIOUS OUTPUT\n"
UNKNOWN = "no-such-org/no-such-model"


def run(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def assert_one_clear_line(result, *needles, code=2):
    """Exit status ``code``, one ``error:`` line holding every needle, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = error_lines(result)
    assert len(lines) == 1, result.output
    # rich wraps nothing (soft_wrap), but the runner's terminal is narrow: compare without line breaks
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def seed_outputs(paths):
    """Write PREVIOUS into each output path (creating parents) so that a test can check it survives."""
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PREVIOUS)


def assert_untouched(paths):
    for path in paths:
        assert path.read_text() == PREVIOUS, path
        assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"


# ----------------------------------------------------------------------------------------------------------------
# fixtures: a tiny model, a segment reward model, a ReMedy model, good data files


@pytest.fixture(scope="module")
def env(random_model_dir, tmp_path_factory):
    from segrl.reward_training import prepare
    from segrl.segment_rm import new_reward_model

    root = tmp_path_factory.mktemp("bad-input")
    model = Path(random_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model)
    rm = new_reward_model(model, "segment", 4.5)
    rm.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    torch.manual_seed(0)  # a ReMedy model: a one-label classifier with room for translation requests
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, num_labels=1,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForSequenceClassification(config).save_pretrained(root / "remedy")
    tokenizer.save_pretrained(root / "remedy")
    (root / "remedy" / "remedy.json").write_text(json.dumps({"reference_free": False}))

    pair = {"prompt": "The soup was", "chosen": " hot. The bread was fresh!", "rejected": " cold."}
    pairs = write_jsonl(root / "pairs.jsonl", [pair, dict(pair, prompt="We sat by the")])
    prepare(str(pairs), root / "prepared.jsonl", str(model), 4.5)
    prepared = json.loads((root / "prepared.jsonl").read_text().splitlines()[0])
    ids = lambda text: tokenizer(text=text, add_special_tokens=False)["input_ids"]  # noqa: E731
    a, b, eos = ids(" hot."), ids(" cold."), tokenizer.eos_token_id
    aligned = {"prompt_ids": ids("The soup was"), "chosen_ids": a + [eos], "rejected_ids": b + [eos],
               "chosen_segment_ids": [0] * len(a) + [-1], "rejected_segment_ids": [0] * len(b) + [-1],
               "segment_labels": [1]}
    rating = {"lp": "en-de", "src": "The soup", "ref": "Die Suppe", "mt": "Die Suppe", "system": "a", "score": 1.0}
    ratings = [dict(rating, src=f"The soup {i}", system=s, mt=mt, score=q + i) for i in range(3) for s, mt, q in
               (("a", "Die Suppe", 1.0), ("b", "Die Supe", 0.0), ("c", "Das Brot", -1.0))]
    write_jsonl(root / "ratings.jsonl", ratings)
    (root / "src.txt").write_text("The soup\nThe bread\n")
    (root / "mt.txt").write_text("Die Suppe\nDas Brot\n")
    (root / "ref.txt").write_text("Die Suppe\nDas Brot\n")
    return SimpleNamespace(root=root, model=model, tokenizer=tokenizer, rm=root / "rm", remedy=root / "remedy",
                           pair=pair, prepared=prepared, prepared_file=root / "prepared.jsonl", aligned=aligned,
                           rating=rating, ratings=root / "ratings.jsonl")


TRAIN = ["--max_steps", "1", "--report_to", "none", "--save_strategy", "no", "--per_device_train_batch_size", "1"]
GRPO = ["--train_examples", "4", "--eval_examples", "2", "--per_device_train_batch_size", "2", "--num_generations",
        "2", "--max_completion_length", "4", "--max_steps", "1", "--report_to", "none", "--save_strategy", "no"]


def jsonl_commands(env, out):
    """command -> (a good row, the field to corrupt, argv for a data file, the outputs that must survive)."""
    m = env.model
    return {
        "segment": ({"prompt": "Review:", "completion": "The soup was hot."}, "completion",
                    lambda p: ["segment", "--model", m, "--input", p, "--html", out / "p.html", "--method", "fixed"],
                    [out / "p.html"]),
        "prepare-segments": (env.pair, "chosen",
                             lambda p: ["prepare-segments", p, "-o", out / "p.jsonl", "--model", m], [out / "p.jsonl"]),
        "decode": ({"prompt": "The soup"}, "prompt",
                   lambda p: ["decode", "--model", m, "--prompts", p, "--method", "vanilla", "--reward", "sentiment",
                              "--max-new-tokens", "2", "-o", out / "d.jsonl"], [out / "d.jsonl"]),
        "train rm": (env.prepared, "chosen_ids",
                     lambda p: ["train", "rm", "--model", m, "--train_file", p, "--output_dir", out / "rm", *TRAIN],
                     [out / "rm" / "config.json", out / "rm" / "metrics.jsonl"]),
        "fit-normalizer": (env.prepared, "chosen_segment_ids",
                           lambda p: ["fit-normalizer", env.rm, p, "-o", out / "n.json"], [out / "n.json"]),
        "train dpo": (env.pair, "rejected",
                      lambda p: ["train", "dpo", "--model", m, "--train_file", p, "--output_dir", out / "dpo", *TRAIN],
                      [out / "dpo" / "config.json"]),
        "train densedpo": (env.aligned, "segment_labels",
                           lambda p: ["train", "densedpo", "--model", m, "--train_file", p, "--output_dir",
                                      out / "ddpo", *TRAIN], [out / "ddpo" / "config.json"]),
        "remedy train": (env.rating, "score",
                         lambda p: ["remedy", "train", "--train_file", p, "--model", m, "--output_dir", out / "rem",
                                    *TRAIN], [out / "rem" / "config.json"]),
        "remedy meta-eval": (env.rating, "mt",
                             lambda p: ["remedy", "meta-eval", "--metric", "chrf", "--ratings", p, "-o",
                                        out / "m.json"], [out / "m.json"]),
    }


HUGE_INT = "9" * 5000  # beyond Python's 4300-digit limit for int(str)


def bad_jsonl(kind, row, field):
    """(file bytes, the line the error must name, the words it must hold)."""
    good = json.dumps(row)
    without = {k: v for k, v in row.items() if k != field}
    raw = lambda value: json.dumps(dict(row, **{field: "@@"})).replace('"@@"', value)  # noqa: E731
    return {
        "malformed JSON": ((good + "\n" + '{"' + field + '": \n').encode(), 2, ["not valid JSON"]),
        "missing column": ((json.dumps(without) + "\n").encode(), 1, [field]),
        "empty file": (b"\n\n", None, []),
        "wrong type": ((raw('{"x": 1}') + "\n").encode(), 1, [field]),
        "NaN value": ((raw("NaN") + "\n").encode(), 1, [field]),
        "infinite value": ((raw("-Infinity") + "\n").encode(), 1, [field]),
        "not UTF-8": ((good + "\n").encode() + b'{"x": "\xff\xfe"}\n', 2, ["UTF-8"]),
        "huge number": ((raw(HUGE_INT) + "\n").encode(), 1, ["not valid JSON"]),
        "too deeply nested": ((raw("[" * 100_000 + "]" * 100_000) + "\n").encode(), 1, []),
    }[kind]


JSONL_COMMANDS = ["segment", "prepare-segments", "decode", "train rm", "fit-normalizer", "train dpo", "train densedpo",
                  "remedy train", "remedy meta-eval"]
JSONL_KINDS = ["malformed JSON", "missing column", "empty file", "wrong type", "NaN value", "infinite value",
               "not UTF-8", "huge number", "too deeply nested"]


@pytest.mark.parametrize("kind", JSONL_KINDS)
@pytest.mark.parametrize("command", JSONL_COMMANDS)
def test_bad_jsonl_rows(env, tmp_path, command, kind):
    row, field, argv, outputs = jsonl_commands(env, tmp_path)[command]
    data, line, words = bad_jsonl(kind, row, field)
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    seed_outputs(outputs)
    result = run(*argv(path))
    message = assert_one_clear_line(result, path, *words)
    if line is not None:
        assert any(where in message for where in (f"line {line}", f":{line}", f"row {line}")), message
    assert_untouched(outputs)


# ----------------------------------------------------------------------------------------------------------------
# TSV ratings and the plain-text files of `remedy score`

TSV_HEADER = "lp\tsrc\tmt\tsystem\tscore\tref\n"


@pytest.mark.parametrize("kind, text, needles", [
    ("no header", b"en-de\ta\tb\tc\t1\td\n", [":1:", "header"]),
    ("missing column", b"lp\tsrc\tmt\tscore\nen-de\ta\tb\t1\n", [":1:", "system"]),
    ("short row", (TSV_HEADER + "en-de\ta\n").encode(), [":2:", "missing field(s)"]),
    ("extra field", (TSV_HEADER + "en-de\ta\tb\tc\t1\td\textra\n").encode(), [":2:", "more fields"]),
    ("NaN score", (TSV_HEADER + "en-de\ta\tb\tc\tnan\td\n").encode(), [":2:", "'score'", "finite"]),
    ("huge score", (TSV_HEADER + f"en-de\ta\tb\tc\t{HUGE_INT}\td\n").encode(), [":2:", "'score'", "finite"]),
    ("unknown language", (TSV_HEADER + "xx-de\ta\tb\tc\t1\td\n").encode(), [":2:", "'xx'"]),
    ("empty file", b"", [":1:", "header"]),
    ("not UTF-8", (TSV_HEADER + "en-de\ta\t\xff\tc\t1\td\n").encode("latin-1"), [":2:", "UTF-8"]),
])
def test_bad_tsv_ratings(env, tmp_path, kind, text, needles):
    path = tmp_path / "ratings.tsv"
    path.write_bytes(text)
    seed_outputs([tmp_path / "rem" / "config.json", tmp_path / "m.json"])
    result = run("remedy", "train", "--train_file", path, "--model", env.model, "--output_dir", tmp_path / "rem",
                 *TRAIN)
    assert_one_clear_line(result, path, *needles)
    result = run("remedy", "meta-eval", "--metric", "chrf", "--ratings", path, "-o", tmp_path / "m.json")
    assert_one_clear_line(result, path, *needles)
    assert_untouched([tmp_path / "rem" / "config.json", tmp_path / "m.json"])


@pytest.mark.parametrize("kind, which, content, needles", [
    ("empty file", "mt", b"", ["hypothesis file is empty"]),
    ("line counts differ", "mt", b"only one line\n", ["different line counts"]),
    ("empty line", "mt", b"Die Suppe\n  \n", [":2:", "empty hypothesis"]),
    ("not UTF-8", "mt", b"Die Suppe\nDas \xff Brot\n", [":2:", "UTF-8"]),
    ("huge line", "mt", b"x" * 20_000 + b"\nDas Brot\n", [":1:", "longer than the model's context of 512"]),
    ("missing file", "ref", None, ["cannot read the reference file"]),
])
def test_bad_remedy_score_files(env, tmp_path, kind, which, content, needles):
    files = {name: env.root / f"{name}.txt" for name in ("src", "mt", "ref")}
    files[which] = tmp_path / f"{which}.txt"
    if content is not None:
        files[which].write_bytes(content)
    out = tmp_path / "scores"
    seed_outputs([out / "scores.tsv", out / "result.json"])
    result = run("remedy", "score", "-m", env.remedy, "--src", files["src"], "--mt", files["mt"], "--ref",
                 files["ref"], "--lp", "en-de", "-o", out)
    assert_one_clear_line(result, *needles)
    assert_untouched([out / "scores.tsv", out / "result.json"])


@pytest.mark.parametrize("lp", ["en_de", "../../etc", "xx-de", "en-de-fr"])
def test_bad_language_pair_flag(env, tmp_path, lp):
    result = run("remedy", "score", "-m", env.remedy, "--src", env.root / "src.txt", "--mt", env.root / "mt.txt",
                 "--ref", env.root / "ref.txt", "--lp", lp, "-o", tmp_path)
    assert_one_clear_line(result, "--lp")
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------------------------
# a huge line: refused, skipped with a reason, or truncated, per command, never an out-of-memory crash


def test_huge_lines(env, tmp_path):
    long_text = "The soup was hot. " * 400  # ~7,000 characters, far beyond the model's 64 positions
    # segment: one clear error naming the row
    data = write_jsonl(tmp_path / "seg.jsonl", [{"prompt": "Review:", "completion": long_text}])
    result = run("segment", "--model", env.model, "--input", data, "--html", tmp_path / "p.html")
    assert_one_clear_line(result, data, "row 1", "longer than the model's context of 64")
    # prepare-segments: the pair is skipped and counted, the others are written
    data = write_jsonl(tmp_path / "pairs.jsonl", [dict(env.pair, chosen=long_text), env.pair])
    result = run("prepare-segments", data, "-o", tmp_path / "p.jsonl", "--model", env.model)
    assert result.exit_code == 0, result.output
    assert "Wrote 1 of 2 pairs" in result.output and "longer than the model's context of 64" in result.output
    # ... and only too-long pairs: a clear error
    data = write_jsonl(tmp_path / "long.jsonl", [dict(env.pair, chosen=long_text)])
    assert_one_clear_line(run("prepare-segments", data, "-o", tmp_path / "q.jsonl", "--model", env.model),
                          "every row was skipped", "longer than the model's context")
    # decode: the prompt is skipped with its reason in the output row
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": long_text}, {"prompt": "The soup"}])
    result = run("decode", "--model", env.model, "--prompts", data, "--method", "vanilla", "--reward", "sentiment",
                 "--max-new-tokens", "2", "-o", tmp_path / "d.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert "exceeds the model's context of 64" in rows[0]["error"] and rows[1]["error"] is None
    # train rm: a prepared row longer than the model's context is refused, naming its line
    row = dict(env.prepared, chosen_ids=env.prepared["chosen_ids"] * 20,
               chosen_segment_ids=env.prepared["chosen_segment_ids"] * 20)
    data = write_jsonl(tmp_path / "prepared.jsonl", [env.prepared, row])
    result = run("train", "rm", "--model", env.model, "--train_file", data, "--output_dir", tmp_path / "rm", *TRAIN)
    assert_one_clear_line(result, data, "line 2", "'chosen_ids'", "more than the model's context of 64")
    # densedpo: longer than max_length is refused (a cut segment would be compared with a whole one)
    ids = env.aligned["prompt_ids"] * 500
    data = write_jsonl(tmp_path / "aligned.jsonl", [dict(env.aligned, prompt_ids=ids)])
    result = run("train", "densedpo", "--model", env.model, "--train_file", data, "--output_dir", tmp_path / "dd",
                 *TRAIN)
    assert_one_clear_line(result, data, "line 1", "max_length")


def test_huge_dpo_pair_is_truncated_by_trl(env, tmp_path):
    """TRL's DPO cuts prompt + response to max_length: a huge pair trains (slowly, for a huge max_length)."""
    data = write_jsonl(tmp_path / "pairs.jsonl", [dict(env.pair, chosen="The soup was hot. " * 400)])
    result = run("train", "dpo", "--model", env.model, "--train_file", data, "--output_dir", tmp_path / "dpo",
                 "--max_length", "48", *TRAIN)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "dpo" / "final" / "model.safetensors").is_file()


def test_prompts_that_are_markup_or_conversations(env, tmp_path):
    """A prompt is shown as text, never as rich markup; a conversation needs the tokenizer's chat template."""
    result = run("segment", "--model", env.model, "--prompt", "a [/] b [bold]x", "--response", "hi", "--method",
                 "fixed", "--html", tmp_path / "p.html")
    assert result.exit_code == 0, result.output
    assert "a [/] b [bold]x" in result.output
    conversation = [{"role": "user", "content": "The soup"}]
    data = write_jsonl(tmp_path / "pairs.jsonl", [dict(env.pair, prompt=conversation)])
    assert_one_clear_line(run("prepare-segments", data, "-o", tmp_path / "p.jsonl", "--model", env.model),
                          data, "row 1", "field 'prompt'", "no chat template")
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": conversation}, {"prompt": [{"content": "x"}]},
                                                    {"prompt": "The soup"}])
    result = run("decode", "--model", env.model, "--prompts", data, "--method", "vanilla", "--reward", "sentiment",
                 "--max-new-tokens", "2", "-o", tmp_path / "d.jsonl")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert all("no chat template" in row["error"] for row in rows[:2]) and rows[2]["error"] is None


@pytest.mark.parametrize("damage, needle", [
    ("remedy.json not JSON", "cannot load the ReMedy model"),
    ("remedy.json a list", "expected a JSON object"),
    ("calibration.json not JSON", "not a valid JSON calibration file"),
    ("calibration.json of another kind", "field 'kind'"),
    ("truncated weights", "cannot load the ReMedy model"),
])
def test_damaged_remedy_model(env, tmp_path, damage, needle):
    model = tmp_path / "remedy"
    shutil.copytree(env.remedy, model)
    if damage.startswith("remedy.json"):
        (model / "remedy.json").write_text("{not json" if "JSON" in damage else "[]")
    elif damage.startswith("calibration.json"):
        (model / "calibration.json").write_text("{not json" if "JSON" in damage else '{"kind": "pickle"}')
    else:
        (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:500])
    result = run("remedy", "score", "-m", model, "--src", env.root / "src.txt", "--mt", env.root / "mt.txt", "--ref",
                 env.root / "ref.txt", "--lp", "en-de", "-o", tmp_path / "s")
    assert_one_clear_line(result, needle)
    assert_one_clear_line(run("remedy", "meta-eval", "--metric", model, "--ratings", env.ratings), needle)
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("command", ["fit-normalizer", "decode --reward"])
def test_damaged_reward_model(env, tmp_path, command):
    model = tmp_path / "rm"
    shutil.copytree(env.rm, model)
    (model / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:500])
    argv = {"fit-normalizer": ["fit-normalizer", model, env.prepared_file, "-o", tmp_path / "n.json"],
            "decode --reward": ["decode", "--model", env.model, "--reward", model, "-o", tmp_path / "d.jsonl"]}[command]
    assert_one_clear_line(run(*argv), model, "damaged weights")


# ----------------------------------------------------------------------------------------------------------------
# an unknown model, a damaged preset cache


def model_commands(env, out, name):
    """command -> argv that loads the model ``name`` (in the role the command gives a model)."""
    m, prompts = env.model, write_jsonl(out / "prompts.jsonl", [{"prompt": "The soup"}])
    return {
        "segment": ["segment", "--model", name, "--response", "hi", "--html", out / "p.html"],
        "prepare-segments": ["prepare-segments", env.root / "pairs.jsonl", "-o", out / "p.jsonl", "--model", name],
        "decode --model": ["decode", "--model", name, "--prompts", prompts, "--reward", "sentiment", "-o",
                           out / "d.jsonl"],
        "decode --reward": ["decode", "--model", m, "--prompts", prompts, "--reward", name, "-o", out / "d.jsonl"],
        "train grpo": ["train", "grpo", "--model", name, "--task", "arith", "--output_dir", out / "g", *GRPO],
        "train spo": ["train", "spo", "--model", name, "--task", "arith", "--output_dir", out / "spo", *GRPO],
        "train dense": ["train", "dense", "--model", name, "--task", "sentiment", "--output_dir", out / "dense",
                        *GRPO],
        "train drlc --critic": ["train", "drlc", "--model", m, "--task", "sentiment", "--critic", name,
                                "--output_dir", out / "drlc", *GRPO],
        "train rm": ["train", "rm", "--model", name, "--train_file", env.prepared_file, "--output_dir", out / "rm",
                     *TRAIN],
        "train dpo": ["train", "dpo", "--model", name, "--train_file", env.root / "pairs.jsonl", "--output_dir",
                      out / "dpo", *TRAIN],
        "fit-normalizer": ["fit-normalizer", name, env.prepared_file, "-o", out / "n.json"],
        "remedy train": ["remedy", "train", "--model", name, "--train_file", env.ratings, "--output_dir",
                         out / "rem", *TRAIN],
        "remedy score": ["remedy", "score", "-m", name, "--src", env.root / "src.txt", "--mt", env.root / "mt.txt",
                         "--ref", env.root / "ref.txt", "--lp", "en-de", "-o", out / "s"],
        "remedy meta-eval": ["remedy", "meta-eval", "--metric", name, "--ratings", env.ratings],
        "quickstart": ["quickstart", "--model", name, "--output-dir", out / "qs", "--token-budget", "10",
                       "--eval-examples", "2"],
    }


MODEL_COMMANDS = ["segment", "prepare-segments", "decode --model", "decode --reward", "train grpo", "train spo",
                  "train dense", "train drlc --critic", "train rm", "train dpo", "fit-normalizer", "remedy train",
                  "remedy score",
                  "remedy meta-eval", "quickstart"]


@pytest.mark.parametrize("name", [UNKNOWN, "./missing/model-dir"])
@pytest.mark.parametrize("command", MODEL_COMMANDS)
def test_unknown_model(env, tmp_path, command, name):
    result = run(*model_commands(env, tmp_path, name)[command])
    assert_one_clear_line(result, name)


@pytest.fixture
def damaged_cache(env, tmp_path):
    from segrl import tiny

    def make(how):
        cache = tmp_path / f"cache-{how.replace(' ', '-')}"
        preset = cache / f"tiny-arith-small-seed0-v{tiny.RECIPE_VERSION}"
        if how == "cache is a file":
            cache.write_text("not a directory")
            return cache, cache
        shutil.copytree(env.model, preset)
        if how == "config not JSON":
            (preset / "config.json").write_text("{not json")
        elif how == "truncated weights":
            weights = preset / "model.safetensors"
            weights.write_bytes(weights.read_bytes()[:1000])
        elif how == "weights missing":
            (preset / "model.safetensors").unlink()
        elif how == "tokenizer not JSON":
            (preset / "tokenizer.json").write_text("{not json")
        return cache, preset

    return make


CACHE_DAMAGE = ["config not JSON", "truncated weights", "weights missing", "tokenizer not JSON", "cache is a file"]
CACHE_CASES = ([(command, "truncated weights") for command in ("segment", "prepare-segments", "decode", "train grpo",
                                                               "train dpo", "remedy train", "quickstart")]
               + [(command, how) for how in CACHE_DAMAGE if how != "truncated weights"
                  for command in ("segment", "train grpo")])


@pytest.mark.parametrize("command, how", CACHE_CASES)
def test_damaged_preset_cache(env, tmp_path, damaged_cache, command, how):
    cache, preset = damaged_cache(how)
    argv = {
        "segment": ["segment", "--model", "tiny-arith", "--cache-dir", cache, "--response", "hi", "--html",
                    tmp_path / "p.html"],
        "prepare-segments": ["prepare-segments", env.root / "pairs.jsonl", "-o", tmp_path / "p.jsonl", "--model",
                             "tiny-arith", "--cache-dir", cache],
        "decode": ["decode", "--model", "tiny-arith", "--cache-dir", cache, "--reward", "sentiment", "-o",
                   tmp_path / "d.jsonl"],
        # --seed 0: TRL's default seed (42) names another preset, which would be built (minutes)
        "train grpo": ["train", "grpo", "--model", "tiny-arith", "--cache_dir", cache, "--seed", "0", "--output_dir",
                       tmp_path / "g", *GRPO],
        "train dpo": ["train", "dpo", "--model", "tiny-arith", "--cache_dir", cache, "--seed", "0", "--train_file",
                      env.root / "pairs.jsonl", "--output_dir", tmp_path / "dpo", *TRAIN],
        "remedy train": ["remedy", "train", "--model", "tiny-arith", "--cache_dir", cache, "--seed", "0",
                         "--train_file", env.ratings, "--output_dir", tmp_path / "rem", *TRAIN],
        "quickstart": ["quickstart", "--cache-dir", cache, "--output-dir", tmp_path / "qs", "--token-budget", "10"],
    }[command]
    result = run(*argv)
    if how == "cache is a file":  # an OSError from the file system: one line, status 1
        assert_one_clear_line(result, cache, code=1)
    else:
        assert_one_clear_line(result, "cached preset 'tiny-arith'", preset, "damaged", "delete that directory")


# ----------------------------------------------------------------------------------------------------------------
# the disk fills up while an output is written; the output path is blocked


class _FullDisk:
    """A file handle on a full disk: every write fails with ENOSPC."""

    def __init__(self, handle):
        self.handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False

    def write(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
    """Make the atomic writer's temporary file for any of the returned list's file names hit a full disk."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file a descriptor is")
    names: list[str] = []
    real = os.fdopen

    def fdopen(fd, *args, **kwargs):
        target = Path(os.readlink(f"/proc/self/fd/{fd}")).name
        handle = real(fd, *args, **kwargs)
        if target.endswith(".tmp") and any(target.startswith(name + ".") for name in names):
            return _FullDisk(handle)
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen)
    return names


def output_commands(env, out, data):
    """command -> (argv writing under ``out``, the file whose write fails, every output that must survive)."""
    m, prompts = env.model, write_jsonl(data / "prompts.jsonl", [{"prompt": "The soup"}])
    return {
        "segment": (["segment", "--model", m, "--prompt", "Review:", "--response", "hi", "--method", "fixed", "--html",
                     out / "p.html"],
                    out / "p.html", [out / "p.html"]),
        "prepare-segments": (["prepare-segments", env.root / "pairs.jsonl", "-o", out / "p.jsonl", "--model", m],
                             out / "p.jsonl", [out / "p.jsonl"]),
        "fit-normalizer": (["fit-normalizer", env.rm, env.prepared_file, "-o", out / "n.json"], out / "n.json",
                           [out / "n.json"]),
        "decode": (["decode", "--model", m, "--prompts", prompts, "--method", "vanilla", "--reward", "sentiment",
                    "--max-new-tokens", "2", "-o", out / "d.jsonl"], out / "d.jsonl",
                   [out / "d.jsonl", out / "d.summary.json"]),
        "remedy score": (["remedy", "score", "-m", env.remedy, "--src", env.root / "src.txt", "--mt",
                          env.root / "mt.txt", "--ref", env.root / "ref.txt", "--lp", "en-de", "-o", out / "s"],
                         out / "s" / "scores.tsv", [out / "s" / "scores.tsv", out / "s" / "result.json"]),
        "remedy meta-eval": (["remedy", "meta-eval", "--metric", "chrf", "--ratings", env.ratings, "-o",
                              out / "m.json"], out / "m.json", [out / "m.json"]),
        "train rm": (["train", "rm", "--model", m, "--train_file", env.prepared_file, "--output_dir", out / "rm",
                      *TRAIN], out / "rm" / "config.json", [out / "rm" / "config.json", out / "rm" / "metrics.jsonl"]),
        "train dpo": (["train", "dpo", "--model", m, "--train_file", env.root / "pairs.jsonl", "--output_dir",
                       out / "dpo", *TRAIN], out / "dpo" / "config.json",
                      [out / "dpo" / "config.json", out / "dpo" / "metrics.jsonl"]),
        "remedy train": (["remedy", "train", "--model", m, "--train_file", env.ratings, "--output_dir", out / "rem",
                          *TRAIN], out / "rem" / "config.json",
                         [out / "rem" / "config.json", out / "rem" / "metrics.jsonl"]),
        "train grpo": (["train", "grpo", "--model", m, "--task", "arith", "--output_dir", out / "g", *GRPO],
                       out / "g" / "config.json", [out / "g" / "config.json"]),
    }


OUTPUT_COMMANDS = ["segment", "prepare-segments", "fit-normalizer", "decode", "remedy score", "remedy meta-eval",
                   "train rm", "train dpo", "remedy train", "train grpo"]


@pytest.mark.parametrize("command", OUTPUT_COMMANDS)
def test_disk_full_keeps_the_previous_output(env, tmp_path, full_disk, command):
    argv, failing, outputs = output_commands(env, tmp_path, tmp_path)[command]
    seed_outputs(outputs)
    full_disk.append(failing.name)
    result = run(*argv)
    assert_one_clear_line(result, f"cannot write {failing}", "No space left on device", "unchanged")
    assert_untouched(outputs)
    if command == "decode":  # the prompts decoded so far stay in the .partial file, whole lines
        partial = tmp_path / "d.jsonl.partial"
        assert [json.loads(line)["index"] for line in partial.read_text().splitlines()] == [0]


def test_disk_full_keeps_the_previous_quickstart_report(tmp_path, full_disk):
    """quickstart's last step, the report, goes through the same writer (the training runs are too slow here)."""
    from segrl.errors import UserError
    from segrl.report import write_report

    run_dir = tmp_path / "grpo"
    write_jsonl(run_dir.mkdir() or run_dir / "metrics.jsonl",
                [{"step": s, "wall_seconds": s, "eval/accuracy": 0.1, "eval/accuracy_greedy": 0.2} for s in (0, 1)])
    seed_outputs([tmp_path / "report.html"])
    full_disk.append("report.html")
    with pytest.raises(UserError, match="No space left on device"):
        write_report(tmp_path / "report.html", {"GRPO": run_dir}, "t")
    assert_untouched([tmp_path / "report.html"])


@pytest.mark.parametrize("command", OUTPUT_COMMANDS + ["quickstart"])
def test_output_path_blocked_by_a_file(env, tmp_path, command):
    """An output path whose parent is a file (what a read-only directory is to root, who can write anywhere)."""
    blocker = tmp_path / "blocker"
    blocker.write_text(PREVIOUS)
    if command == "quickstart":
        argv = ["quickstart", "--model", env.model, "--output-dir", blocker / "qs", "--token-budget", "10"]
    else:
        argv = output_commands(env, blocker / "out", tmp_path)[command][0]
    result = run(*argv)
    assert result.exit_code in (1, 2), result.output
    assert_one_clear_line(result, blocker, code=result.exit_code)
    assert blocker.read_text() == PREVIOUS


# ----------------------------------------------------------------------------------------------------------------
# NaN and infinite flags; TRL-style flags that do not parse


@pytest.mark.parametrize("argv, needle", [
    (["segment", "--response", "hi", "--threshold", "nan"], "--threshold must be a finite number"),
    (["segment", "--response", "hi", "--method", "cutpoint", "--rho", "inf"], "--rho must be a finite number"),
    (["prepare-segments", "{pairs}", "-o", "{out}/p.jsonl", "--threshold", "inf"], "threshold must be a finite"),
    (["fit-normalizer", "{rm}", "{prepared}", "-o", "{out}/n.json", "--sigma-floor", "nan"], "--sigma-floor"),
    (["decode", "--method", "vanilla", "--temperature", "inf"], "temperature must be a finite number > 0"),
    (["decode", "--method", "cards", "--target-reward", "nan"], "target_reward (r*) must be a finite number"),
    (["decode", "--method", "cards", "--target-reward", "0", "--alpha", "nan"], "alpha must be in [0, 1]"),
    (["decode", "--method", "cards", "--target-reward", "0", "--beta", "inf"], "beta and temperature must be"),
    (["train", "grpo", "--learning_rate", "nan"], "--learning_rate must be a finite number"),
    (["train", "rm", "--train_file", "{prepared}", "--learning_rate", "inf"], "--learning_rate must be a finite"),
    (["train", "dpo", "--train_file", "{pairs}", "--beta", "nan"], "--beta must be a finite number"),
    (["remedy", "train", "--min_gap", "nan"], "--min_gap must be a finite number"),
])
def test_nan_and_infinite_flags(env, tmp_path, argv, needle):
    values = {"pairs": env.root / "pairs.jsonl", "out": tmp_path, "rm": env.rm, "prepared": env.prepared_file}
    argv = [a.format(**values) for a in argv]
    if argv[0] in ("segment", "prepare-segments", "decode"):
        argv += ["--model", str(env.model)]
    if argv[0] == "decode":
        argv += ["--reward", "sentiment", "-o", str(tmp_path / "d.jsonl")]
    if argv[0] in ("train", "remedy"):
        argv += ["--model", str(env.model), "--output_dir", str(tmp_path / "run")]
    assert_one_clear_line(run(*argv), needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("problem", ["unknown flag", "config not YAML", "config missing", "config not a mapping",
                                     "flag of the wrong type"])
@pytest.mark.parametrize("command", [["train", "grpo"], ["train", "rm"], ["train", "dpo"], ["remedy", "train"]])
def test_trl_flags_that_do_not_parse(tmp_path, command, problem):
    config = tmp_path / "run.yaml"
    extra = {"unknown flag": ["--no_such_flag", "1"],
             "config not YAML": ["--config", config],
             "config missing": ["--config", tmp_path / "missing.yaml"],
             "config not a mapping": ["--config", config],
             "flag of the wrong type": ["--seed", "seven"]}[problem]
    config.write_text("a: [1,\n" if problem == "config not YAML" else "- just\n- a list\n")
    result = run(*command, *extra, "--output_dir", tmp_path / "run")
    needle = {"unknown flag": "unknown flag(s)", "config not YAML": "not valid YAML", "config missing": "missing.yaml",
              "config not a mapping": "must contain a YAML mapping", "flag of the wrong type": "seven"}[problem]
    if problem == "flag of the wrong type":  # argparse's own usage message, status 2
        assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output
    else:
        assert_one_clear_line(result, f"segrl {' '.join(command)}", needle)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------------------------
# decode --reward package.module:function: a function that raises, returns junk, or hangs

REWARDS = '''
import math


def raises(prompts, completions, **kwargs):
    raise RuntimeError("boom")


def nan(prompts, completions, **kwargs):
    return [math.nan] * len(completions)


def text(prompts, completions, **kwargs):
    return ["high"] * len(completions)


def wrong_length(prompts, completions, **kwargs):
    return [1.0]


def interrupted(prompts, completions, **kwargs):
    raise KeyboardInterrupt  # what Ctrl-C raises inside a reward function that hangs


not_callable = 3
'''


@pytest.fixture(scope="module")
def rewards_module(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewards")
    (root / "segrl_test_bad_rewards.py").write_text(REWARDS)
    sys.path.insert(0, str(root))
    yield "segrl_test_bad_rewards"
    sys.path.remove(str(root))
    sys.modules.pop("segrl_test_bad_rewards", None)


@pytest.mark.parametrize("function, method, expected", [
    ("raises", "vanilla", "every reward null"),
    ("raises", "bon", "every reward null"),
    ("nan", "vanilla", "every reward null"),
    ("text", "bon", "every reward null"),
    ("raises", "cards", "cannot estimate the target reward"),
    ("wrong_length", "vanilla", "returned 1 scores for 2 responses"),
    ("not_callable", "vanilla", "'not_callable' is not callable"),
    ("missing", "vanilla", "cannot import 'missing'"),
])
def test_decode_reward_function_failures(env, tmp_path, rewards_module, function, method, expected):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "The soup"}, {"prompt": "We sat"}])
    out = tmp_path / "d.jsonl"
    result = run("decode", "--model", env.model, "--prompts", prompts, "--method", method, "--reward",
                 f"{rewards_module}:{function}", "--max-new-tokens", "3", "--n", "2", "-o", out)
    if expected == "every reward null":  # a failing reward never stops the job: it is counted, and the row kept
        assert result.exit_code == 0, result.output
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 2 and all(row["reward"] is None and row["text"] is not None for row in rows)
        summary = json.loads((tmp_path / "d.summary.json").read_text())
        assert summary["scored"] == 0 and summary["mean_reward"] is None
        assert summary["reward_errors"] >= (2 if method == "bon" else 0)
    else:
        assert_one_clear_line(result, expected)
        assert not out.exists()


def test_interrupting_a_hanging_reward_loses_nothing(env, tmp_path, rewards_module):
    """There is no timeout: a hanging reward function hangs decode until the user presses Ctrl-C. The interrupt
    leaves the previous output whole, and the prompts finished so far as whole lines in ``<out>.partial``."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "The soup"}, {"prompt": "We sat"}])
    out = tmp_path / "d.jsonl"
    seed_outputs([out, tmp_path / "d.summary.json"])
    result = run("decode", "--model", env.model, "--prompts", prompts, "--method", "bon", "--reward",
                 f"{rewards_module}:interrupted", "--max-new-tokens", "2", "-o", out)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert_untouched([out, tmp_path / "d.summary.json"])
    partial = out.with_name(out.name + ".partial")
    assert all(json.loads(line) for line in partial.read_text().splitlines())


# ----------------------------------------------------------------------------------------------------------------
# a training run's earlier outputs survive a later run's bad input


def test_training_outputs_survive_bad_input(env, tmp_path):
    bad_pairs = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "chosen": 1, "rejected": "b"}])
    oov = write_jsonl(tmp_path / "oov.jsonl", [dict(env.aligned, chosen_ids=[99_999] + env.aligned["chosen_ids"][1:])])
    huge = write_jsonl(tmp_path / "huge.jsonl",
                       [dict(env.aligned, chosen_ids=[10**30] + env.aligned["chosen_ids"][1:])])
    bad_prepared = write_jsonl(tmp_path / "prep.jsonl", [dict(env.prepared, chosen_ids=[-1] * 3)])
    threshold = write_jsonl(tmp_path / "threshold.jsonl", [dict(env.prepared, segment_threshold="high")])
    cases = [
        (["train", "rm", "--model", env.model, "--train_file", bad_prepared], "line 1"),
        (["train", "rm", "--model", UNKNOWN, "--train_file", env.prepared_file], UNKNOWN),
        (["train", "dpo", "--model", env.model, "--train_file", bad_pairs], "line 1"),
        (["train", "dpo", "--model", UNKNOWN, "--train_file", env.root / "pairs.jsonl"], UNKNOWN),
        (["train", "densedpo", "--model", env.model, "--train_file", oov], "token id 99999"),
        (["train", "densedpo", "--model", env.model, "--train_file", huge], "token id 1000000000000000000000000000000"),
        (["train", "rm", "--model", env.model, "--train_file", threshold], "'segment_threshold'"),
        (["remedy", "train", "--model", UNKNOWN, "--train_file", env.ratings], UNKNOWN),
        (["train", "grpo", "--model", UNKNOWN, *GRPO], UNKNOWN),
        (["train", "spo", "--task", "no-such-task", *GRPO], "Unknown task"),
    ]
    out = tmp_path / "run"
    outputs = [out / "config.json", out / "metrics.jsonl", out / "final" / "model.safetensors"]
    for argv, needle in cases:
        seed_outputs(outputs)
        assert_one_clear_line(run(*argv, "--output_dir", out, *TRAIN[:2]), needle)
        assert_untouched(outputs)


@pytest.mark.parametrize("method, flags", [("dense", ["--reward_model", "{root}"]),
                                           ("dense", ["--reward_model", "{rm}", "--normalizer", "{root}/none.json"]),
                                           ("drlc", ["--critic", UNKNOWN])])
def test_rl_outputs_survive_a_bad_reward_source(env, tmp_path, method, flags):
    out = tmp_path / "run"
    outputs = [out / "config.json", out / "metrics.jsonl"]
    seed_outputs(outputs)
    flags = [f.format(root=env.root, rm=env.rm) for f in flags]
    result = run("train", method, "--model", env.model, "--task", "sentiment", *flags, "--output_dir", out, *GRPO)
    assert_one_clear_line(result)
    assert_untouched(outputs)


@pytest.mark.parametrize("method, flags, needle", [
    ("dense", ["--reward_model", "./missing/rm"], "./missing/rm"),
    ("dense", ["--reward_model", "{rm}", "--normalizer", "{root}/missing.json"], "normalizer file not found"),
    ("dense", ["--reward_model", "{rm}", "--normalizer", "{bad_json}"], "not a valid JSON normalizer file"),
    ("dense", ["--reward_model", "{rm}", "--normalizer", "{nan}"], "field 'mu_slope' should be a finite number"),
    ("dense", ["--reward_model", "{rm}", "--normalizer", "{kind}"], "field 'kind' should be one of"),
    ("drlc", ["--critic", "self", "--critic_template", "{bad_json}"], "cannot read the critic template"),
    ("drlc", ["--critic", "self", "--critic_template", "{kind}"], "a critic template is a JSON object"),
    ("drlc", ["--critic", "./missing/critic"], "./missing/critic"),
])
def test_bad_rl_reward_sources(env, tmp_path, method, flags, needle):
    """dense/drlc read a reward model, a normaliser (JSON), a critic model or a critic template (JSON)."""
    location = {"kind": "location", "mu_slope": float("nan"), "mu_intercept": 0.0, "sigma_slope": 0.0,
                "sigma_intercept": 1.0, "sigma_floor": 0.1}
    (tmp_path / "nan.json").write_text(json.dumps(location))
    (tmp_path / "kind.json").write_text(json.dumps({**location, "kind": "pickle"}))
    (tmp_path / "bad.json").write_text("{not json")
    values = {"rm": env.rm, "root": tmp_path, "bad_json": tmp_path / "bad.json", "nan": tmp_path / "nan.json",
              "kind": tmp_path / "kind.json"}
    flags = [f.format(**values) for f in flags]
    result = run("train", method, "--model", env.model, "--task", "sentiment", *flags, "--output_dir",
                 tmp_path / "run", *GRPO)
    assert_one_clear_line(result, needle)


def test_final_model_directory_is_replaced_whole(tmp_path):
    """rm, dpo, densedpo and remedy train save into final.partial and swap it in: a crash while saving leaves the
    earlier final/ as it was; a stale final.partial from such a crash is cleared."""
    from segrl.reward_training import save_final

    class Trainer:
        def __init__(self, fail):
            self.fail = fail

        def is_world_process_zero(self):
            return True

        def save_model(self, path):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_text("new")
            if self.fail:
                raise OSError(errno.ENOSPC, "No space left on device")

    final = tmp_path / "final"
    seed_outputs([final / "model.safetensors", tmp_path / "final.partial" / "stale.json"])
    with pytest.raises(OSError):
        save_final(Trainer(fail=True), tmp_path)
    assert (final / "model.safetensors").read_text() == PREVIOUS
    save_final(Trainer(fail=False), tmp_path, extra=lambda d: (d / "calibration.json").write_text("{}"))
    assert sorted(p.name for p in final.iterdir()) == ["calibration.json", "model.safetensors"]
    assert (final / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]
