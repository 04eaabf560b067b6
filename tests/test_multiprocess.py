"""Two processes (``accelerate launch``, gloo on the CPU) against one: what is split, what is reduced, what is equal.

This file is also the script that the launched processes run (``python tests/test_multiprocess.py cli|rollouts``):

- ``cli``: ``segrl train ...`` with every generate call of the trainer recorded (process, step, Monte Carlo or not,
  contexts, lengths) into ``$SEGRL_MP_TRACE/rank<k>.jsonl``;
- ``rollouts``: one generation batch of each case (SPO chain, also with lockstep MC calls, SPO tree, dense group,
  dense GAE) on a fixed global batch, with a deterministic stand-in for sampling (the continuation is a function of
  the context and of its occurrence in the call), written to ``<out>/<case>.rank<k>.json``; then 2 training steps
  per trainer with the same stand-in, written to ``<out>/train-<case>.rank<k>.pt``. The same functions run in the
  test process for the single-process reference.

Budget: about 40 s on 2 CPU cores (two launches of 2 processes, ~10-20 s each).
"""

from __future__ import annotations

import collections
import json
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "accelerate" / "cpu_2proc.yaml"
PROMPTS = ["The soup was", "We sat by the", "Would we"]
NUM_GENERATIONS = 4


# ------------------------------------------------------------------------------------------- launched processes


def _rank() -> tuple[int, int]:
    """From torchrun's environment: accelerate's state must first be created by a config with ``use_cpu=True``
    (a bare ``PartialState()`` on a machine without CUDA would make each process a world of its own)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _record_cli(argv: list[str]) -> None:
    """Run the CLI (several runs, separated by ``--then``) with every generate call of the trainers recorded."""
    import torch.distributed as dist

    from segrl.cli import app
    from segrl.trainers.grpo import TokenCountingGRPOTrainer
    from segrl.trainers.spo import SPOTrainer

    trace = Path(os.environ["SEGRL_MP_TRACE"])
    generate, estimate = TokenCountingGRPOTrainer._generate_single_turn, SPOTrainer._estimate_values

    def recorded_generate(self, prompt_ids, *args, **kwargs):
        completions, logprobs = generate(self, prompt_ids, *args, **kwargs)
        rank = self.accelerator.process_index
        record = {
            "run": Path(self.args.output_dir).name, "rank": rank, "world": self.accelerator.num_processes,
            "step": self.state.global_step, "train": self.model.training, "mc": getattr(self, "_in_mc", False),
            "backend": dist.get_backend() if dist.is_initialized() else None,
            "contexts": [list(ids) for ids in prompt_ids], "lengths": [len(c) for c in completions],
        }
        with (trace / f"rank{rank}.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return completions, logprobs

    def flagged_estimate(self, *args, **kwargs):
        self._in_mc = True
        try:
            return estimate(self, *args, **kwargs)
        finally:
            self._in_mc = False

    TokenCountingGRPOTrainer._generate_single_turn = recorded_generate
    SPOTrainer._estimate_values = flagged_estimate
    runs, current = [], []
    for arg in argv:
        if arg == "--then":
            runs.append(current)
            current = []
        else:
            current.append(arg)
    for run in [*runs, current]:
        app(run, prog_name="segrl", standalone_mode=False)


def _fake_generate(trainer, log: list | None = None):
    """A deterministic ``_generate_single_turn``: the k-th occurrence of a context in a call continues it with
    tokens drawn from a generator seeded by (context, k mod 2): two distinct continuations per context, so that
    completions of a prompt repeat (duplicate states, also across processes). Respects the current token cap the
    way a sampler does: the same stream of tokens, cut at the cap."""
    vocab = [t for t in range(2, 60) if t not in trainer.eos_token_ids]
    eos = trainer.eos_token_ids[0]

    def generate(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        cap = trainer.generation_config.max_new_tokens
        seen, out = collections.Counter(), []
        for ids in prompt_ids:
            key = tuple(ids)
            rng = random.Random(repr((key, seen[key] % 2)))
            seen[key] += 1
            tokens = [rng.choice(vocab) for _ in range(rng.randint(1, trainer.max_completion_length))]
            if rng.random() < 0.7:
                tokens[-1] = eos
            out.append(tokens[:cap])
        if log is not None and getattr(trainer, "_in_mc", False):
            log.append([list(ids) for ids in prompt_ids])  # one entry per call
        return out, None

    return generate


def digit_sum_reward(completions, completion_ids, **kwargs):
    return [(sum(ids) % 5) / 4 for ids in completion_ids]


CASES = {
    # name: (trainer, global rows, config overrides). 12 rows = 3 prompts x 4: on 2 processes the second prompt's
    # group is split between them. Tree mode needs whole groups per process: 8 rows.
    "spo_chain": ("spo", 12, dict(cutpoint_interval=2, num_mc_samples=2, segment0_baseline="group_mean",
                                  mc_batch_size=6)),
    "spo_tree": ("spo", 8, dict(spo_mode="tree", tree_branching=[2, 2], segment_length=3)),
    "dense_group": ("dense", 12, dict(advantage_estimator="group")),
    "dense_gae": ("dense", 12, dict(advantage_estimator="gae")),
    # As under vLLM / ZeRO-3 / FSDP: the same MC generate calls on every process. 13 distinct states: blocks of 6
    # and 7, the first padded with a repeat.
    "spo_chain_lockstep": ("spo", 12, dict(cutpoint_interval=3, num_mc_samples=2, segment0_baseline="group_mean",
                                           mc_batch_size=6)),
}
TRAINED = ("spo_chain", "spo_tree", "dense_group", "dense_gae")


class _Lockstep:
    @property
    def _generation_in_lockstep(self) -> bool:
        return self.accelerator.num_processes > 1


def _trainer_config(case: str, out_dir: str, world: int, **settings):
    """The trainer class of ``case`` and its config: the case's rows split over ``world`` processes, its overrides,
    and ``settings``."""
    from segrl.trainers.dense import DenseRewardConfig, DenseRewardTrainer
    from segrl.trainers.spo import SPOConfig, SPOTrainer

    kind, rows, overrides = CASES[case]
    trainer_class, config_class = (SPOTrainer, SPOConfig) if kind == "spo" else (DenseRewardTrainer,
                                                                                 DenseRewardConfig)
    config = config_class(
        output_dir=str(Path(out_dir) / f"trainer-{case}"), per_device_train_batch_size=rows // world,
        num_generations=NUM_GENERATIONS, max_completion_length=8, report_to="none", logging_steps=1,
        save_strategy="no", use_cpu=True, bf16=False, seed=0, temperature=1.0, **settings, **overrides,
    )
    return trainer_class, config


def deterministic_rollouts(model_dir: str, out_dir: str, cases=tuple(CASES)) -> None:
    """One generation batch per case on this process's slice of the fixed global batch; write what it produced."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rank, world = _rank()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for case in cases:
        kind, rows, _ = CASES[case]
        per_device = rows // world
        trainer_class, config = _trainer_config(case, out_dir, world, max_steps=1)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        trainer = trainer_class(model=model, reward_funcs=[digit_sum_reward], args=config, processing_class=tokenizer,
                                train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
        assert (trainer.accelerator.process_index, trainer.accelerator.num_processes) == (rank, world)
        if case.endswith("_lockstep"):
            trainer.__class__ = type("Lockstep" + trainer_class.__name__, (_Lockstep, trainer_class), {})
        mc_calls: list[list[list[int]]] = []
        trainer._generate_single_turn = _fake_generate(trainer, mc_calls)
        if kind == "spo":
            estimate = trainer._estimate_values

            def flagged(*args, _estimate=estimate, _trainer=trainer, **kwargs):
                _trainer._in_mc = True
                try:
                    return _estimate(*args, **kwargs)
                finally:
                    _trainer._in_mc = False

            trainer._estimate_values = flagged
        global_batch = [{"prompt": p} for p in PROMPTS for _ in range(NUM_GENERATIONS)][:rows]
        trainer.model.train()
        out = trainer._generate_and_score_completions(global_batch[rank * per_device : (rank + 1) * per_device])
        keep, prompt_keep = out["completion_mask"].bool(), out["prompt_mask"].bool()
        loss_mask = out["tool_mask"].bool()
        result = {
            "rank": rank, "world": world,
            "rows": [
                {"prompt": ids[pk].tolist(), "completion": c[k].tolist(), "advantages": a[k].tolist(),
                 "loss_mask": m[k].tolist()}
                for ids, pk, c, k, a, m in zip(out["prompt_ids"], prompt_keep, out["completion_ids"], keep,
                                               out["advantages"], loss_mask)
            ],
            "metrics": {name: values for name, values in trainer._metrics["train"].items()},
            "mc_calls": mc_calls,
        }
        (Path(out_dir) / f"{case}.rank{rank}.json").write_text(json.dumps(result))


def deterministic_training(model_dir: str, out_dir: str, cases=TRAINED) -> None:
    """``trainer.train()`` for 2 steps per case (TRL's sampler, DDP, the loss's normalisation) with deterministic
    sampling and plain SGD (so that the update is the gradient); write the parameter update."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rank, world = _rank()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for case in cases:
        _, rows, _ = CASES[case]
        trainer_class, config = _trainer_config(case, out_dir, world, max_steps=2, optim="sgd", learning_rate=0.1,
                                                lr_scheduler_type="constant", max_grad_norm=0.0)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        prompts = PROMPTS[: rows // NUM_GENERATIONS]
        trainer = trainer_class(model=model, reward_funcs=[digit_sum_reward], args=config, processing_class=tokenizer,
                                train_dataset=Dataset.from_dict({"prompt": prompts}))
        trainer._generate_single_turn = _fake_generate(trainer)
        trainer.train()
        after = torch.cat([p.detach().flatten() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()])
        torch.save({"update": after - before, "losses": [r["loss"] for r in trainer.state.log_history if "loss" in r]},
                   Path(out_dir) / f"train-{case}.rank{rank}.pt")


if __name__ == "__main__":
    if sys.argv[1] == "cli":
        _record_cli(sys.argv[2:])
    else:
        deterministic_rollouts(sys.argv[2], sys.argv[3])
        deterministic_training(sys.argv[2], sys.argv[3])
    sys.exit(0)


# ------------------------------------------------------------------------------------------------------- tests

import pytest  # noqa: E402
import torch  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], env: dict | None = None, timeout: int = 240, script: Path = Path(__file__)
           ) -> subprocess.CompletedProcess:
    """``accelerate launch`` ``script`` (this file) on 2 CPU processes (configs/accelerate/cpu_2proc.yaml)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
               "--main_process_port", str(_free_port()), str(script.resolve()), *args]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


COMMON_FLAGS = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
                "--max_completion_length", "8", "--train_examples", "16", "--eval_examples", "2", "--eval_every", "1",
                "--logging_steps", "1", "--report_to", "none", "--save_strategy", "no"]
MC_SAMPLES = 2
CLI_RUNS = {
    "spo_chain": ["spo", "--num_mc_samples", str(MC_SAMPLES), "--cutpoint_interval", "2", "--mc_batch_size", "8"],
    "spo_tree": ["spo", "--spo_mode", "tree", "--tree_branching", "2", "2", "--segment_length", "3"],
    "dense": ["dense"],
}


@pytest.fixture(scope="module")
def cli_runs(random_model_dir, tmp_path_factory):
    """`segrl train spo` (chain, tree) and `segrl train dense` on 2 processes, one launch, generate calls recorded."""
    root = tmp_path_factory.mktemp("cli")
    trace = root / "trace"
    trace.mkdir()
    argv = ["cli"]
    for name, (method, *flags) in CLI_RUNS.items():
        argv += ["train", method, "--model", str(random_model_dir), "--output_dir", str(root / name), *COMMON_FLAGS,
                 *flags, "--then"]
    result = launch(argv[:-1], env={"SEGRL_MP_TRACE": str(trace)})
    assert result.stdout.count("Run written to") == len(CLI_RUNS)  # by the main process only
    calls = [json.loads(line) for rank in (0, 1) for line in (trace / f"rank{rank}.jsonl").read_text().splitlines()]
    return root, calls


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", list(CLI_RUNS))
def test_cli_on_two_processes_writes_once_and_counts_every_token(cli_runs, name):
    """Both processes ran (gloo); each file is written once; tokens/generated = every token both generated."""
    root, all_calls = cli_runs
    out, calls = root / name, [c for c in all_calls if c["run"] == name]
    assert {c["rank"] for c in calls} == {0, 1} and {(c["world"], c["backend"]) for c in calls} == {(2, "gloo")}
    records = _records(out)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]  # once each: only the main process writes
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 1, 2]
    assert sum("train_runtime" in r for r in records) == 1
    generated = 0
    for record in steps:
        step_calls = [c for c in calls if c["train"] and c["step"] == record["step"] - 1]
        if name == "spo_tree":  # counts the tree's tokens: a continuation is cut at max_completion_length (8)
            for rank in (0, 1):  # one tree per process (4 rows = 1 group); its first call grows the root's children
                rank_calls = [c for c in step_calls if c["rank"] == rank]
                root = len(rank_calls[0]["contexts"][0])
                generated += sum(min(n, 8 - (len(ctx) - root))
                                 for c in rank_calls for ctx, n in zip(c["contexts"], c["lengths"]))
        else:
            generated += sum(sum(c["lengths"]) for c in step_calls)
        assert record["tokens/generated"] == generated  # global and cumulative
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == name.split("_")[0] and config["trainer"]["per_device_train_batch_size"] == 4
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(out / "final").num_parameters() > 0
    if name == "dense":
        assert (out / "value_model" / "model.safetensors").exists()
    else:
        example = json.loads((out / "example.json").read_text())
        assert len(example["pieces"]) == len(example["advantages"]) > 0


def test_spo_chain_on_two_processes_rolls_out_each_distinct_state_once(cli_runs):
    """SPO chain: each distinct prefix state is rolled out num_mc_samples times, in one call of one process, both
    processes share the work, and the logged counts are the global ones."""
    root, all_calls = cli_runs
    calls = [c for c in all_calls if c["run"] == "spo_chain"]
    for record in [r for r in _records(root / "spo_chain") if "loss" in r]:
        step_calls = [c for c in calls if c["train"] and c["step"] == record["step"] - 1]
        policy = [c for c in step_calls if not c["mc"]]
        mc = [c for c in step_calls if c["mc"]]
        assert sum(len(c["lengths"]) for c in policy) == 8  # 2 processes x 4 completions
        assert record["segments/policy_tokens"] == sum(sum(c["lengths"]) for c in policy)
        per_state = collections.Counter(tuple(ctx) for c in mc for ctx in c["contexts"])
        owners = collections.defaultdict(set)
        for c in mc:
            for ctx in c["contexts"]:
                owners[tuple(ctx)].add(c["rank"])
        assert set(per_state.values()) == {MC_SAMPLES} and all(len(r) == 1 for r in owners.values())
        assert record["segments/mc_states"] == len(per_state) > 1
        assert {c["rank"] for c in mc} == {0, 1}  # the work is split
        assert record["segments/mc_tokens"] == sum(sum(c["lengths"]) for c in mc)


def test_resumed_two_process_run_equals_the_uninterrupted_one(random_model_dir, tmp_path):
    """SPO-chain on 2 processes with real sampling (shared-prefix MC rollouts): 4 steps with checkpoints at 2 and 4;
    then a copy of the run as a kill after step 3 leaves it (checkpoint-4 and final/ gone, step 3 logged), resumed
    with --resume, ends with the same metrics and bit-for-bit the same parameters."""
    from safetensors.torch import load_file

    flags = ["train", "spo", "--model", str(random_model_dir), *COMMON_FLAGS, *CLI_RUNS["spo_chain"][1:],
             "--max_steps", "4", "--save_strategy", "steps", "--save_steps", "2", "--eval_every", "2",
             "--learning_rate", "1e-3", "--seed", "5"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    signal_cli = Path(__file__).with_name("signal_cli.py")  # segrl with a reward that random text can earn
    launch([*flags, "--output_dir", str(whole)], script=signal_cli)
    assert {p.name for p in (whole / "checkpoint-2").glob("segrl_state-*")} == {"segrl_state-0.json",
                                                                               "segrl_state-1.json"}
    shutil.copytree(whole, resumed)
    for gone in ("checkpoint-4", "final", "example.json"):
        shutil.rmtree(resumed / gone) if (resumed / gone).is_dir() else (resumed / gone).unlink()
    lines = (resumed / "metrics.jsonl").read_text().splitlines(keepends=True)
    kept = [line for line in lines if json.loads(line)["step"] <= 3 and "train_runtime" not in line]
    (resumed / "metrics.jsonl").write_text("".join(kept))
    result = launch([*flags, "--output_dir", str(resumed), "--resume"], script=signal_cli)
    assert "resuming from" in result.stdout and "checkpoint-2" in result.stdout

    def metrics(out):
        return [{k: v for k, v in r.items() if k != "wall_seconds" and "time" not in k
                 and "runtime" not in k and "per_second" not in k} for r in _records(out)]

    assert metrics(resumed) == metrics(whole)
    first, second = load_file(whole / "final" / "model.safetensors"), load_file(resumed / "final" / "model.safetensors")
    start = load_file(random_model_dir / "model.safetensors")
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], start[k]) for k in first)


@pytest.fixture(scope="module")
def rollouts(random_model_dir, tmp_path_factory):
    """Every case's output on 2 processes (launched) and on 1 (this process), same global batch."""
    two, one = tmp_path_factory.mktemp("two"), tmp_path_factory.mktemp("one")
    launch(["rollouts", str(random_model_dir), str(two)])
    deterministic_rollouts(str(random_model_dir), str(one))
    deterministic_training(str(random_model_dir), str(one))
    load = lambda path: json.loads(path.read_text())  # noqa: E731
    return {case: ([load(two / f"{case}.rank{r}.json") for r in (0, 1)], load(one / f"{case}.rank0.json"))
            for case in CASES} | {"dirs": (two, one)}


# Metrics that may differ: wall times, and the value model's fit (DDP averages two per-process token means).
NOT_COMPARED = ("segments/time/", "value/loss", "value/clipfrac")


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_equal_one_on_the_same_batch(rollouts, case):
    """Same completions (deterministic sampling) -> the same advantages, loss masks and global metrics."""
    (rank0, rank1), single = rollouts[case]
    assert (rank0["world"], rank1["world"], single["world"]) == (2, 2, 1)
    rows2, rows1 = rank0["rows"] + rank1["rows"], single["rows"]
    if case == "spo_tree":  # examples come out per process, in tree order: compare as multisets
        rows2, rows1 = (sorted(rows, key=lambda r: (r["prompt"], r["completion"])) for rows in (rows2, rows1))
    assert len(rows2) == len(rows1)
    assert [(r["prompt"], r["completion"], r["loss_mask"]) for r in rows2] == [
        (r["prompt"], r["completion"], r["loss_mask"]) for r in rows1]
    two = torch.tensor([a for r in rows2 for a in r["advantages"]])
    one = torch.tensor([a for r in rows1 for a in r["advantages"]])
    assert one.abs().sum() > 0
    torch.testing.assert_close(two, one, atol=1e-5, rtol=1e-5)
    # Lockstep pads the MC blocks with a repeat, whose rollouts are generated (and counted) but discarded.
    skip = NOT_COMPARED + (("tokens/generated", "segments/mc_tokens") if case.endswith("_lockstep") else ())
    compared = sorted(k for k in single["metrics"] if not k.startswith(skip))
    assert sorted(k for k in rank0["metrics"] if not k.startswith(skip)) == compared
    for name in compared:  # global metrics: both processes log the single-process value
        for metrics in (rank0["metrics"], rank1["metrics"]):
            assert metrics[name] == pytest.approx(single["metrics"][name], rel=1e-5, abs=1e-6), name
    if case.startswith("spo_chain"):
        contexts = {name: [tuple(ctx) for call in run["mc_calls"] for ctx in call]
                    for name, run in (("rank0", rank0), ("rank1", rank1), ("single", single))}
        mc1 = collections.Counter(contexts["single"])
        assert set(mc1.values()) == {2} and len(mc1) == single["metrics"]["segments/mc_states"][0]
        assert single["metrics"]["segments/dedup_rate"][0] > 0  # duplicates existed, some across processes
        if case == "spo_chain":  # the same states, each rolled out N = 2 times, by one process
            assert collections.Counter(contexts["rank0"] + contexts["rank1"]) == mc1
            assert not set(contexts["rank0"]) & set(contexts["rank1"])
        else:  # the same calls, of the same sizes, on both processes; 13 states: one repeat pads the first block
            assert [len(c) for c in rank0["mc_calls"]] == [len(c) for c in rank1["mc_calls"]]
            assert len(mc1) == 13 and set(contexts["rank0"]) | set(contexts["rank1"]) == set(mc1)
            assert len(contexts["rank0"]) == len(contexts["rank1"]) == 7 * 2
            assert len(set(contexts["rank0"])) == 6 and len(set(contexts["rank1"])) == 7


def test_accelerate_configs_parse_and_build_launch_environments():
    """Each configs/accelerate/*.yaml loads with accelerate's config classes (unknown keys raise) and yields a launch
    environment (without starting anything; DeepSpeed need not be installed)."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    expected = {"cpu_2proc": ("MULTI_GPU", 2, "no"), "multi_gpu": ("MULTI_GPU", 8, "bf16"),
                "deepspeed_zero2": ("DEEPSPEED", 8, "bf16"), "deepspeed_zero3": ("DEEPSPEED", 8, "bf16"),
                "fsdp": ("FSDP", 8, "bf16")}
    files = sorted(CONFIG.parent.glob("*.yaml"))
    assert {f.stem for f in files} == set(expected)
    for path in files:
        config = load_config_from_file(str(path))
        assert (config.distributed_type.value, config.num_processes, str(config.mixed_precision)) == expected[path.stem]
        assert config.use_cpu is False  # True would select accelerate's single-process launcher
        args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(
            ["--config_file", str(path), "train.py"]))
        if args.use_deepspeed:
            args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
            _, env = prepare_deepspeed_cmd_env(args)
            assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == path.stem[-1]
        else:
            env = prepare_multi_gpu_env(args)
            assert env["ACCELERATE_MIXED_PRECISION"] == expected[path.stem][2]
        if path.stem == "fsdp":
            assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"


@pytest.mark.parametrize("case", TRAINED)
def test_two_training_steps_on_two_processes_equal_one(rollouts, case):
    """trainer.train() for 2 SGD steps with deterministic sampling (TRL's sampler slices the same global batch, DDP
    averages the gradients, the loss is normalised by the global token count): the same parameter update."""
    two, one = rollouts["dirs"]
    rank0, rank1 = (torch.load(two / f"train-{case}.rank{r}.pt") for r in (0, 1))
    single = torch.load(one / f"train-{case}.rank0.pt")
    assert torch.equal(rank0["update"], rank1["update"])  # DDP keeps the replicas identical
    assert single["update"].norm() > 1e-2
    relative = (rank0["update"] - single["update"]).norm() / single["update"].norm()
    assert relative < 1e-5, f"relative difference of the updates {relative:.2e}"
