"""Kill a training run with SIGKILL, resume it with ``--resume``, and compare with the run that was not interrupted.

For each training command (``train spo`` chain and tree with its replay buffer, ``train dense`` with PPO's value
model, ``train grpo`` (also with a LoRA adapter), ``train drlc`` with self-critique, ``train rm``,
``train densedpo``, ``remedy train``), on a tiny random model on the CPU under a fixed seed:

1. the uninterrupted run (8 steps, a checkpoint every 2);
2. the same run killed with SIGKILL once step 5 was logged (checkpoints 2 and 4 complete, metrics of step 5 written,
   step 6 under way), then resumed: it must end with the same ``metrics.jsonl`` (no step missing or twice; every
   value equal except wall-clock times) and the same final parameters, bit for bit;
3. checkpoints cut off mid-write (no marker, a truncated file) are skipped, and the run resumes from the one before.

Every run is a separate process (tests/signal_cli.py), as a user's would be. Budget: about 2.5 minutes on 2 CPU
cores.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from segrl.checkpoints import MARKER, check_same_config, complete_checkpoint, mark_complete, start_run
from segrl.cli import app
from segrl.errors import UserError

SIGNAL_CLI = str(Path(__file__).with_name("signal_cli.py"))  # segrl with a reward that random text can earn
# One thread: tiny models gain nothing from more, and two runs' threads fighting over 2 cores slow both tenfold.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
STEPS = ["--max_steps", "8", "--save_steps", "2", "--logging_steps", "1", "--report_to", "none", "--seed", "3"]
RL = ["--task", "arith", "--learning_rate", "1e-3", "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length",
      "8", "--train_examples", "16", "--eval_examples", "4", "--eval_every", "2"]
PAIRS = [("The soup was", " hot.", " cold."), ("We sat by the", " window.", " door."),
         ("Would we come", " back?", " here."), ("The waiter", " smiled.", " frowned.")]


def _volatile(key: str) -> bool:
    """Wall-clock measurements, which differ between any two runs."""
    return key == "wall_seconds" or "time" in key or "runtime" in key or "per_second" in key


def _metrics(out: Path) -> list[dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not _volatile(k)} for r in records]


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, SIGNAL_CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SIGNAL_CLI, *args], capture_output=True, text=True, timeout=600,
                          env=ENV)


def _finish(process: subprocess.Popen) -> None:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def _run_and_kill(args: list[str], out: Path, after_step: int) -> None:
    """Run the CLI and SIGKILL it as soon as ``metrics.jsonl`` holds a record of ``after_step``."""
    process = subprocess.Popen([sys.executable, SIGNAL_CLI, *args], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=ENV)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.is_file() and any(json.loads(line)["step"] >= after_step for line in
                                     metrics.read_text().splitlines() if line.endswith("}")):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"not killed (rc {process.returncode}): {process.stderr.read()}"


def _same_parameters(a: Path, b: Path, start: Path) -> None:
    """The runs in ``a`` and ``b`` end with the same parameters, which training moved away from ``start``'s."""
    first, second = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    initial = load_file(start / "model.safetensors")
    assert any(not torch.equal(first[name], initial[name]) for name in first.keys() & initial.keys())


@pytest.fixture(scope="module")
def policy(random_model_dir, tmp_path_factory):
    """The random model, made to end about one completion token in six with EOS: SPO scores a Monte Carlo
    continuation or a tree leaf only when it ends (a truncated one scores 0), so a model that never ends would give
    no advantage and no gradient."""
    path = tmp_path_factory.mktemp("resume-policy")
    model = LlamaForCausalLM.from_pretrained(random_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    with torch.no_grad():
        inputs = tokenizer(["The soup was hot.", "We sat by the window.", "Would we come back?"], return_tensors="pt",
                           padding=True)
        hidden = model.model(**inputs).last_hidden_state[inputs["attention_mask"].bool()]
        direction = hidden.mean(dim=0)
        # EOS logit = h . w; the other logits are about N(0, small): put EOS ~log(300 / 5) above them on average.
        model.lm_head.weight[tokenizer.eos_token_id] = direction * (4.0 / direction.dot(direction))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def data(random_model_dir, tmp_path_factory):
    """Inputs of the non-RL commands: prepared pairs (rm), aligned pairs (densedpo), ratings and a backbone with
    512 positions (remedy)."""
    root = tmp_path_factory.mktemp("resume-data")
    shutil.copytree(random_model_dir, root / "base")  # the model of the preference data
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n" for p, c, r in PAIRS * 2))
    result = CliRunner().invoke(app, ["prepare-segments", str(pairs), "--output", str(root / "prepared.jsonl"),
                                      "--model", str(root / "base"), "--threshold", "4.5"])
    assert result.exit_code == 0, result.output

    tokenizer = AutoTokenizer.from_pretrained(random_model_dir)
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    aligned = []
    for k, (prompt, chosen, rejected) in enumerate(PAIRS * 2):
        a, b = ids(chosen), ids(rejected)
        aligned.append({"prompt_ids": ids(prompt), "chosen_ids": a + [tokenizer.eos_token_id],
                        "rejected_ids": b + [tokenizer.eos_token_id], "chosen_segment_ids": [0] * len(a) + [-1],
                        "rejected_segment_ids": [0] * len(b) + [-1], "segment_labels": [k % 2]})
    (root / "aligned.jsonl").write_text("".join(json.dumps(row) + "\n" for row in aligned))

    ratings = [{"lp": "en-de", "src": f"The soup {i} was hot.", "ref": f"Die Suppe {i} war heiss.",
                "mt": f"{system} soup {i}", "system": system, "score": quality - (i % 3)}
               for i in range(12) for system, quality in {"good": 0.0, "fair": -3.0, "poor": -8.0}.items()]
    (root / "ratings.jsonl").write_text("".join(json.dumps(row) + "\n" for row in ratings))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(root / "backbone")
    tokenizer.save_pretrained(root / "backbone")
    return root


def _command(case: str, policy: Path, data: Path, out: Path) -> list[str]:
    common = ["--output_dir", str(out), *STEPS]
    rl, base = ["--model", str(policy), *RL], ["--model", str(data / "base")]
    return {
        "spo_chain": ["train", "spo", *rl, "--num_mc_samples", "2", "--cutpoint_interval", "2", *common],
        "spo_tree": ["train", "spo", *rl, "--spo_mode", "tree", "--tree_branching", "2", "2",
                     "--segment_length", "3", "--replay_iterations", "2", "--replay_per_prompt", "3", *common],
        "dense_gae": ["train", "dense", *rl, *common],
        "grpo": ["train", "grpo", *rl, *common],
        "grpo_lora": ["train", "grpo", *rl, "--use_peft", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
                      *common],  # the checkpoints hold the adapter; final/ the merged model
        # Self-critique: the policy, as it is at each step, answers the critic prompt (greedy, rarely parsable).
        "drlc_self": ["train", "drlc", *rl, "--critic", "self", "--critic_max_new_tokens", "8", *common],
        "rm": ["train", "rm", *base, "--train_file", str(data / "prepared.jsonl"), "--per_device_train_batch_size",
               "2", *common],
        "densedpo": ["train", "densedpo", *base, "--train_file", str(data / "aligned.jsonl"),
                     "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", *common],
        "remedy": ["remedy", "train", "--model", str(data / "backbone"), "--train_file", str(data / "ratings.jsonl"),
                   "--test_fraction", "0.25", "--per_device_train_batch_size", "4", "--learning_rate", "1e-3",
                   *common],
    }[case]


CASES = ["spo_chain", "spo_tree", "dense_gae", "grpo", "grpo_lora", "drlc_self", "rm", "densedpo", "remedy"]


@pytest.mark.parametrize("case", CASES)
def test_killed_and_resumed_run_equals_the_uninterrupted_one(case, policy, data, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _start(_command(case, policy, data, whole))  # alongside the killed run: one thread each
    _run_and_kill(_command(case, policy, data, killed), killed, after_step=5)
    _finish(uninterrupted)
    assert (killed / "checkpoint-4" / MARKER).is_file() and not (killed / "final").exists()
    assert max(r["step"] for r in _metrics(killed)) >= 5  # lines that the resumed run must drop and redo

    result = _run([*_command(case, policy, data, killed), "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from" in result.stdout and "checkpoint-4" in result.stdout

    assert _metrics(killed) == _metrics(whole)
    start = {"rm": data / "base", "densedpo": data / "base", "remedy": data / "backbone"}.get(case, policy)
    _same_parameters(killed, whole, start)
    if case == "spo_tree":  # the replay buffer was in the checkpoint, and full
        state = json.loads((whole / "checkpoint-4" / "segrl_state-0.json").read_text())
        assert len(state["replay"]) == 2 and all(state["replay"])
    if case == "dense_gae":
        assert (whole / "checkpoint-4" / "value_model.safetensors").is_file()
        value_whole = load_file(whole / "value_model" / "model.safetensors")
        value_killed = load_file(killed / "value_model" / "model.safetensors")
        assert all(torch.equal(value_whole[k], value_killed[k]) for k in value_whole)


def test_checkpoints_cut_off_mid_write_are_skipped(policy, data, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    uninterrupted = _start(_command("rm", policy, data, whole))
    _run_and_kill(_command("rm", policy, data, killed), killed, after_step=5)
    _finish(uninterrupted)
    # What a kill while saving leaves: checkpoint-6 without its marker (copied from 4, renamed), and checkpoint-4
    # with a truncated optimizer state under its marker.
    shutil.copytree(killed / "checkpoint-4", killed / "checkpoint-6")
    (killed / "checkpoint-6" / MARKER).unlink()
    optimizer = killed / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])

    result = _run([*_command("rm", policy, data, killed), "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "skipping checkpoint-6: no completion marker" in result.stdout
    assert "skipping checkpoint-4: optimizer.pt has 100 bytes" in result.stdout
    assert "resuming from" in result.stdout and "checkpoint-2" in result.stdout
    assert _metrics(killed) == _metrics(whole)
    _same_parameters(killed, whole, data / "base")


def test_a_run_stopped_by_its_token_budget_resumes_to_the_same_end(policy, data, tmp_path):
    """The step that reaches --max_generated_tokens writes no checkpoint (final/ holds it): a run killed before
    final/ resumes from the checkpoint before, trains to the same step, and stops there again."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    budget = ["--save_steps", "1", "--max_generated_tokens", "60"]  # the later flag wins
    assert _run([*_command("grpo", policy, data, whole), *budget]).returncode == 0
    last = max(r["step"] for r in _metrics(whole))
    assert 1 < last < 8 and (whole / "final").is_dir()  # stopped by the budget, before max_steps
    assert (whole / f"checkpoint-{last - 1}" / MARKER).is_file() and not (whole / f"checkpoint-{last}").exists()
    shutil.copytree(whole, killed)
    shutil.rmtree(killed / "final")  # as a kill after the last step, before final/ was written
    result = _run([*_command("grpo", policy, data, killed), *budget, "--resume"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"checkpoint-{last - 1}" in result.stdout
    assert _metrics(killed) == _metrics(whole)
    _same_parameters(killed, whole, policy)


def test_a_fresh_run_refuses_a_directory_with_checkpoints(data, tmp_path):
    (tmp_path / "rm" / "checkpoint-2").mkdir(parents=True)
    result = CliRunner().invoke(app, _command("rm", data / "base", data, tmp_path / "rm"))
    assert result.exit_code == 2
    assert "holds checkpoints of an earlier run (checkpoint-2, ...): continue it with --resume" in result.output


# ------------------------------------------------------------------------------------------ the file side, unit


def _checkpoint(out: Path, step: int, metrics: Path | None = None) -> Path:
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * 10)
    (folder / "sub").mkdir()
    (folder / "sub" / "state.json").write_text("{}")
    mark_complete(folder, step, metrics)
    return folder


def test_marker_lists_every_file_and_detects_damage(tmp_path):
    folder = _checkpoint(tmp_path, 3)
    marker, why = complete_checkpoint(folder, 3)
    assert why == "" and marker["files"] == {"model.safetensors": 10, "sub/state.json": 2}
    assert complete_checkpoint(folder, 4)[1] == "completion marker of another checkpoint"
    (folder / "sub" / "state.json").write_text("{} ")
    assert complete_checkpoint(folder, 3)[1] == "sub/state.json has 3 bytes, 2 when saved"
    (folder / "sub" / "state.json").unlink()
    assert complete_checkpoint(folder, 3)[1] == "sub/state.json is missing"
    (folder / MARKER).write_text("{not json")
    assert complete_checkpoint(folder, 3)[1].startswith("unreadable completion marker")


def test_start_run_cuts_metrics_back_to_the_checkpoint(tmp_path):
    config = {"run": {"task": "arith", "resume": False}, "trainer": {"learning_rate": 1e-5}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n')
    _checkpoint(tmp_path, 2, metrics)
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')  # step 3 and a line cut by the kill
    _checkpoint(tmp_path, 4, None)
    (tmp_path / "checkpoint-4" / MARKER).unlink()

    with pytest.raises(UserError, match="cannot resume with another configuration"):
        start_run(tmp_path, True, {**config, "run": {"task": "facts"}})
    assert (tmp_path / "checkpoint-4").is_dir() and metrics.read_text().endswith('{"st')  # refused: nothing touched
    resumed = {**config, "run": {"task": "arith", "resume": True}}
    assert start_run(tmp_path, True, resumed) == tmp_path / "checkpoint-2"
    assert metrics.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert not (tmp_path / "checkpoint-4").exists()  # incomplete, after the chosen one: removed
    with pytest.raises(UserError, match="holds checkpoints of an earlier run"):
        start_run(tmp_path, False, config)
    with pytest.raises(UserError, match=r"learning_rate: 1e-05 -> 0.001"):
        check_same_config(tmp_path, {**config, "trainer": {"learning_rate": 1e-3}})


def test_resume_without_a_complete_checkpoint_starts_over(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    _checkpoint(tmp_path, 2)
    (tmp_path / "checkpoint-2" / MARKER).unlink()
    assert start_run(tmp_path, True, {}) is None
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "checkpoint-2").exists()


def test_metrics_shorter_than_at_the_checkpoint_is_an_error(tmp_path):
    config = {"run": {}, "trainer": {}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n')
    _checkpoint(tmp_path, 2, metrics)
    metrics.write_text('{"step": 1}\n')
    with pytest.raises(UserError, match="was changed or replaced"):
        start_run(tmp_path, True, config)
