"""FSDP2 on 2 CPU processes (gloo), and bf16 autocast on the CPU.

accelerate 1.15 turns FSDP on only for GPU-like distributed types: with ``use_cpu`` (which ``segrl`` adds on a
machine without CUDA) an FSDP config runs plain DDP, without a word. FSDP2 itself (``fully_shard``) runs on the CPU
with gloo, so the launched processes here (``python tests/test_sharded_cpu.py cli ...``) first make accelerate keep
its FSDP plugin on MULTI_CPU; then ``segrl train`` runs as under configs/accelerate/fsdp.yaml on GPUs: sharded
parameters, SPO's Monte Carlo generate calls in lockstep, the dense trainer's value model sharded too, the final
weights gathered (arith's reward replaced by tests/signal_cli.py's, so that training moves the weights). Budget: about
30 s on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _keep_fsdp_on_cpu() -> None:
    """Make accelerate's state keep the FSDP plugin when it picked MULTI_CPU (for this test only)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        fresh = AcceleratorState._shared_state == {}
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fresh and fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = self.distributed_type

    AcceleratorState.__init__ = __init__


def _record_wrapping() -> None:
    """After ``train()``, write how the policy and the value model were wrapped to ``$SEGRL_MP_TRACE/wrap<k>.jsonl``."""
    from segrl.trainers.grpo import TokenCountingGRPOTrainer

    train = TokenCountingGRPOTrainer.train

    def recorded(self, *args, **kwargs):
        result = train(self, *args, **kwargs)
        acc = self.accelerator

        def describe(model):
            params = list(model.parameters())
            return {"class": type(model).__name__, "dtensors": sum(type(p).__name__ == "DTensor" for p in params),
                    "params": len(params),
                    "local": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in params)}

        record = {"run": Path(self.args.output_dir).name, "distributed_type": str(acc.distributed_type.value),
                  "lockstep": self._generation_in_lockstep, "policy": describe(self.model)}
        if getattr(self, "value_model", None) is not None:
            record["value_model"] = describe(self.value_model)
        with (Path(os.environ["SEGRL_MP_TRACE"]) / f"wrap{acc.process_index}.jsonl").open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        return result

    TokenCountingGRPOTrainer.train = recorded


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    _keep_fsdp_on_cpu()
    _record_wrapping()
    import segrl.tasks.arith as arith
    from signal_cli import char_reward
    from test_multiprocess import _record_cli

    arith.reward = char_reward  # a reward that random text can earn: advantages, gradients, updates

    _record_cli(sys.argv[2:])
    sys.exit(0)


# ------------------------------------------------------------------------------------------------------- tests

import pytest  # noqa: E402
import yaml  # noqa: E402

import test_multiprocess  # noqa: E402
from test_multiprocess import COMMON_FLAGS, MC_SAMPLES, _records, launch  # noqa: E402

# The later flag wins: held-out evaluation at steps 0 and 2.
FSDP_FLAGS = [*COMMON_FLAGS, "--eval_every", "2", "--learning_rate", "1e-3", "--seed", "5"]
RUNS = {
    "spo_chain": ["spo", "--num_mc_samples", str(MC_SAMPLES), "--cutpoint_interval", "2", "--mc_batch_size", "8"],
    "dense_gae": ["dense", "--advantage_estimator", "gae", "--save_strategy", "steps", "--save_steps", "1"],
}


def _launch_fsdp(root: Path, argv: list[str], trace: Path) -> None:
    """``python tests/test_sharded_cpu.py cli ARGV`` under configs/accelerate/fsdp.yaml on 2 CPU processes (fp32)."""
    config = yaml.safe_load((ROOT / "configs" / "accelerate" / "fsdp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no")
    (root / "fsdp_cpu.yaml").write_text(yaml.safe_dump(config))
    trace.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setattr(test_multiprocess, "CONFIG", root / "fsdp_cpu.yaml")
    try:
        launch(["cli", *argv], env={"SEGRL_MP_TRACE": str(trace)}, script=Path(__file__))
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def fsdp_runs(random_model_dir, tmp_path_factory):
    """configs/accelerate/fsdp.yaml on 2 CPU processes (fp32): SPO chain and dense GAE, one launch."""
    root = tmp_path_factory.mktemp("fsdp")
    trace = root / "trace"
    argv = []
    for name, (method, *flags) in RUNS.items():
        argv += ["train", method, "--model", str(random_model_dir), "--output_dir", str(root / name), *FSDP_FLAGS,
                 *flags, "--then"]
    _launch_fsdp(root, argv[:-1], trace)
    calls = [json.loads(line) for rank in (0, 1) for line in (trace / f"rank{rank}.jsonl").read_text().splitlines()]
    wraps = [json.loads(line) for rank in (0, 1) for line in (trace / f"wrap{rank}.jsonl").read_text().splitlines()]
    return root, calls, wraps


@pytest.mark.parametrize("name", list(RUNS))
def test_fsdp2_on_two_cpu_processes_shards_and_writes_full_weights(fsdp_runs, random_model_dir, name):
    """Both processes ran FSDP2 over gloo with half of the parameters each; metrics are logged once; final/ (and the
    value model) hold the full, gathered weights, changed by training."""
    from safetensors.torch import load_file

    root, all_calls, wraps = fsdp_runs
    out = root / name
    calls = [c for c in all_calls if c["run"] == name]
    assert {c["rank"] for c in calls} == {0, 1} and {(c["world"], c["backend"]) for c in calls} == {(2, "gloo")}
    start = load_file(random_model_dir / "model.safetensors")
    total = sum(t.numel() for t in start.values())
    mine = [w for w in wraps if w["run"] == name]
    assert len(mine) == 2
    for wrap in mine:
        assert wrap["distributed_type"] == "FSDP" and wrap["lockstep"]
        assert wrap["policy"]["class"].startswith("FSDP") and wrap["policy"]["dtensors"] > 0
        assert total / 2 <= wrap["policy"]["local"] < 0.7 * total  # a shard, not a replica (one matrix is whole)
    assert sum(w["policy"]["local"] for w in mine) >= total
    records = _records(out)
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        assert all(v == v and abs(v) != float("inf") for v in record.values() if isinstance(v, float))
        step_calls = [c for c in calls if c["train"] and c["step"] == record["step"] - 1]
        assert record["tokens/generated"] == sum(sum(c["lengths"]) for c in calls
                                                 if c["train"] and c["step"] < record["step"])
        policy = [c for c in step_calls if not c["mc"]]
        assert sum(len(c["lengths"]) for c in policy) == 8
    final = load_file(out / "final" / "model.safetensors")
    assert {k: v.shape for k, v in start.items()}.items() <= {k: v.shape for k, v in final.items()}.items()
    assert any(not torch_equal(final[k], start[k]) for k in start)
    if name == "dense_gae":
        for wrap in mine:
            assert wrap["value_model"]["class"].startswith("FSDP") and wrap["value_model"]["dtensors"] > 0
        value = load_file(out / "value_model" / "model.safetensors")  # the policy's body and a scalar head
        body = {k: v.shape for k, v in start.items() if k.startswith("model.")}
        assert {k: v.shape for k, v in value.items() if not k.startswith("score.")} == body
        assert value["score.weight"].shape == (1, start["model.embed_tokens.weight"].shape[1])
        assert all(r["value/loss"] > 0 for r in steps)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_fsdp2_spo_chain_issues_monte_carlo_calls_in_lockstep(fsdp_runs):
    """Under FSDP every process makes the same MC generate calls, of the same sizes (blocks padded with a repeat),
    and each distinct state is valued by one process."""
    root, all_calls, _ = fsdp_runs
    calls = [c for c in all_calls if c["run"] == "spo_chain"]
    for record in [r for r in _records(root / "spo_chain") if "loss" in r]:
        mc = {rank: [c for c in calls if c["train"] and c["mc"] and c["step"] == record["step"] - 1
                     and c["rank"] == rank] for rank in (0, 1)}
        assert [len(c["contexts"]) for c in mc[0]] == [len(c["contexts"]) for c in mc[1]]
        states = [{tuple(ctx) for c in mc[rank] for ctx in c["contexts"]} for rank in (0, 1)]
        assert len(states[0] | states[1]) == record["segments/mc_states"] > 0
        width = -(-int(record["segments/mc_states"]) // 2)  # the larger block
        assert sum(len(c["contexts"]) for c in mc[0]) == width * MC_SAMPLES
        assert record["segments/mc_tokens"] == sum(sum(c["lengths"]) for rank in (0, 1) for c in mc[rank])


@pytest.mark.parametrize("method", ["spo_chain", "dense_gae"])
def test_bf16_on_the_cpu_trains_with_finite_metrics(random_model_dir, tmp_path, method):
    """--bf16 true on a CPU (one process): accelerate's bf16 autocast; fp32 master weights; finite loss and metrics."""
    from safetensors.torch import load_file

    flags = {"spo_chain": ["spo", "--num_mc_samples", "2"], "dense_gae": ["dense", "--advantage_estimator", "gae"]}
    out = tmp_path / method
    command = [str(Path(sys.executable).with_name("segrl")), "train", *flags[method], "--model", str(random_model_dir),
               "--output_dir", str(out), *FSDP_FLAGS, "--per_device_train_batch_size", "8", "--bf16", "true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["trainer"]["bf16"] is True
    steps = [r for r in _records(out) if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for record in steps:
        assert all(v == v and abs(v) != float("inf") for v in record.values() if isinstance(v, float))
        assert 0 <= record["reward"] <= 1 and record["entropy"] > 0 and record["tokens/generated"] > 0
    assert {str(t.dtype) for t in load_file(out / "final" / "model.safetensors").values()} == {"torch.float32"}


def test_fsdp2_dense_gae_resumes_to_the_same_weights(fsdp_runs, random_model_dir, tmp_path):
    """A copy of the FSDP2 dense-GAE run as a kill after step 1 leaves it (checkpoint-2, final/ and step 2's records
    gone), resumed with --resume: the sharded policy, the sharded value model and their optimizers come back from
    checkpoint-1, and the run ends with the same metrics and bit-for-bit the same weights."""
    from safetensors.torch import load_file

    root, _, _ = fsdp_runs
    whole, resumed = root / "dense_gae", tmp_path / "dense_gae"
    assert (whole / "checkpoint-1" / "value_model.safetensors").is_file()
    shutil.copytree(whole, resumed)
    for gone in ("checkpoint-2", "final", "value_model"):
        shutil.rmtree(resumed / gone)
    kept = [line for line in (resumed / "metrics.jsonl").read_text().splitlines(keepends=True)
            if json.loads(line)["step"] <= 1 and "train_runtime" not in line]
    (resumed / "metrics.jsonl").write_text("".join(kept))
    method, *flags = RUNS["dense_gae"]
    _launch_fsdp(tmp_path, ["train", method, "--model", str(random_model_dir), "--output_dir", str(resumed),
                            *FSDP_FLAGS, *flags, "--resume"], tmp_path / "trace")

    def metrics(out):
        return [{k: v for k, v in r.items() if k != "wall_seconds" and "time" not in k
                 and "runtime" not in k and "per_second" not in k} for r in _records(out)]

    assert metrics(resumed) == metrics(whole)
    for weights in ("final/model.safetensors", "value_model/model.safetensors"):
        first, second = load_file(whole / weights), load_file(resumed / weights)
        assert first.keys() == second.keys() and all(torch_equal(first[k], second[k]) for k in first), weights


def test_an_fsdp_launch_on_cpus_is_refused(random_model_dir, tmp_path, monkeypatch):
    """Without the shim above, accelerate would run the FSDP config as DDP: the trainer says so instead."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from segrl.errors import UserError
    from segrl.trainers.spo import SPOConfig, SPOTrainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = SPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=4, use_cpu=True,
                       bf16=False, report_to="none", save_strategy="no")
    with pytest.raises(UserError, match="accelerate runs an FSDP config on CPUs as plain DDP"):
        SPOTrainer(model=AutoModelForCausalLM.from_pretrained(random_model_dir), reward_funcs=[lambda **k: [0.0]],
                   args=config, processing_class=AutoTokenizer.from_pretrained(random_model_dir),
                   train_dataset=Dataset.from_dict({"prompt": ["a"]}))
