"""segrl's trainers through TRL's vLLM paths (``use_vllm=True``, server and colocate mode), with fakes in place of
vLLM (tests/fake_vllm.py): everything between the trainer and vLLM is TRL's code.

This checks segrl's side of the contract, which no CPU run otherwise reaches: SPO-chain's policy samples and its
Monte Carlo rollouts both go to vLLM, each distinct state in one call with ``num_mc_samples`` samples; vLLM has the
current weights at every step; its log-probs agree with the trainer's (importance-sampling ratio 1); on 2
processes in server mode, where TRL gathers the prompts, answers on the main process and hands each process the
slice at its position, the Monte Carlo calls are issued in lockstep (equal sizes, padded) and the run equals a
1-process run on the same global batch; and ``segrl train grpo|spo|dense --use_vllm`` count every generated token.
vLLM itself (its sampler, its prefix caching) is not tested here; the GPU check (benchmarks/gpu_check.sh,
``spo_chain_vllm``) runs it.

This file is also the script the launched processes run: ``python tests/test_vllm_path.py MODEL_DIR OUT``.
"""

from __future__ import annotations

import collections
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fake_vllm  # noqa: E402

PROMPTS = ["The soup was", "We sat by the", "Would we"]
NUM_GENERATIONS, MC_SAMPLES, STEPS = 4, 3, 2


def digit_sum_reward(completions, completion_ids, **kwargs):
    return [(sum(ids) % 5) / 4 for ids in completion_ids]


def build_trainer(model_dir, out_dir, world: int, rows: int, vllm_mode: str = "server", **settings):
    """SPO-chain with vLLM; ``rows`` completions per step over ``world`` processes."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from segrl.trainers.spo import SPOConfig, SPOTrainer

    config = SPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=rows // world, num_generations=NUM_GENERATIONS,
        max_completion_length=8, max_steps=STEPS, report_to="none", logging_steps=1, save_strategy="no",
        use_cpu=True, bf16=False, seed=0, temperature=0.8, use_vllm=True,
        num_mc_samples=MC_SAMPLES, cutpoint_interval=3, segment0_baseline="group_mean", mc_batch_size=6,
        vllm_mode=vllm_mode, **settings)
    torch.manual_seed(0)
    return SPOTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=[digit_sum_reward],
                      args=config, processing_class=AutoTokenizer.from_pretrained(model_dir),
                      train_dataset=Dataset.from_dict({"prompt": PROMPTS[: rows // NUM_GENERATIONS]}))


def train_with_sgd(model_dir: str, out_dir: str) -> None:
    """2 steps of plain SGD (the update is the gradient) on 3 prompts x 4 completions; writes the update, the
    logged metrics and (main process) the server's requests."""
    import torch

    fake_vllm.install(None, model_dir)
    world = int(os.environ.get("WORLD_SIZE", 1))
    trainer = build_trainer(model_dir, Path(out_dir) / "trainer", world, rows=12, optim="sgd", learning_rate=0.1,
                            lr_scheduler_type="constant", max_grad_norm=0.0)
    before = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train()
    after = torch.cat([p.detach().flatten() for p in trainer.accelerator.unwrap_model(trainer.model).parameters()])
    rank = trainer.accelerator.process_index
    logs = [r for r in trainer.state.log_history if "loss" in r]
    torch.save({"update": after - before, "logs": logs,
                "requests": [{k: v for k, v in r.items() if k != "weights"} for r in fake_vllm.REQUESTS]},
               Path(out_dir) / f"rank{rank}.pt")


if __name__ == "__main__":
    train_with_sgd(sys.argv[1], sys.argv[2])
    sys.exit(0)


# ------------------------------------------------------------------------------------------------------- tests

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from segrl.cli import app  # noqa: E402

from test_multiprocess import launch  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


class WeightsAtStepBegin(TrainerCallback):
    """The policy's parameters and the number of server requests so far, at the start of each step."""

    def __init__(self):
        self.steps: list[tuple[torch.Tensor, int]] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.steps.append((torch.cat([p.detach().flatten().clone() for p in model.parameters()]),
                           len(fake_vllm.REQUESTS)))


def room(request: dict, policy: dict) -> int:
    """The room an MC call of SPO-chain has: max_completion_length (8) minus its shortest completion prefix."""
    def prefix_length(state):
        prompt, = {tuple(p) for p in policy["prompts"] if state[: len(p)] == p}  # the prompt the state starts with
        return len(state) - len(prompt)

    return 8 - min(map(prefix_length, request["prompts"]))


def colocated(monkeypatch):
    """The environment TRL's colocate mode writes (RANK, WORLD_SIZE, MASTER_PORT ...), restored after the test."""
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("mode", ["server", "colocate"])
def test_spo_chain_samples_and_rolls_out_through_vllm(random_model_dir, tmp_path, monkeypatch, mode):
    fake_vllm.install(monkeypatch, random_model_dir)
    colocated(monkeypatch)
    trainer = build_trainer(random_model_dir, tmp_path, world=1, rows=8, learning_rate=1e-2, vllm_mode=mode)
    engine = (trainer.vllm_generation.vllm_client if mode == "server" else trainer.vllm_generation.llm).engine
    steps = WeightsAtStepBegin()
    trainer.add_callback(steps)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logs) == len(steps.steps) == STEPS and engine.synced == STEPS
    bounds = [start for _, start in steps.steps] + [len(fake_vllm.REQUESTS)]
    for step, ((weights, _), log) in enumerate(zip(steps.steps, logs)):
        requests = fake_vllm.REQUESTS[bounds[step] : bounds[step + 1]]
        policy, *mc = requests
        # The policy's samples: one call, 2 prompts x num_generations.
        assert policy["n"] == NUM_GENERATIONS and len({tuple(p) for p in policy["prompts"]}) == 2
        # The MC rollouts: every distinct state in one call, num_mc_samples times; each a prompt and a prefix.
        states = [tuple(state) for request in mc for state in request["prompts"]]
        counts = collections.Counter(states)
        assert mc and {r["n"] for r in mc} == {MC_SAMPLES} and set(counts.values()) == {MC_SAMPLES}
        assert all(len({tuple(p) for p in r["prompts"]}) * MC_SAMPLES == len(r["prompts"]) for r in mc)
        assert len(counts) == log["segments/mc_states"]
        # Capped at the room left after the call's shortest completion prefix (past it a rollout cannot count).
        assert policy["max_tokens"] == 8 and all(r["max_tokens"] == room(r, policy) for r in mc)
        assert any(r["max_tokens"] < 8 for r in mc)
        # vLLM samples with the weights the trainer has at this step (step 2: after step 1's update).
        assert all(torch.equal(r["weights"], weights) for r in requests)
        # Its log-probs are the trainer's: TRL's importance-sampling ratio is 1 up to float rounding.
        assert log["sampling/importance_sampling_ratio/min"] == pytest.approx(1.0, abs=1e-4)
        assert log["sampling/importance_sampling_ratio/max"] == pytest.approx(1.0, abs=1e-4)
        assert log["segments/mc_tokens"] > 0 and torch.isfinite(torch.tensor(log["loss"]))
    assert not torch.equal(steps.steps[0][0], steps.steps[1][0])  # the step trained


@pytest.mark.parametrize("mode", ["server", "colocate"])
def test_spo_tree_grows_its_levels_through_vllm(random_model_dir, tmp_path, monkeypatch, mode):
    """SPO-tree (2-2, M = 3) on one process: each level's children come from vLLM, capped at M tokens (the last
    level at the room left, 8 - 3), with the current weights; every generated token is counted."""
    fake_vllm.install(monkeypatch, random_model_dir)
    colocated(monkeypatch)
    trainer = build_trainer(random_model_dir, tmp_path, world=1, rows=8, learning_rate=1e-2, vllm_mode=mode,
                            spo_mode="tree", tree_branching=[2, 2], segment_length=3,
                            vllm_importance_sampling_correction=False)
    steps = WeightsAtStepBegin()
    trainer.add_callback(steps)
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    bounds = [start for _, start in steps.steps] + [len(fake_vllm.REQUESTS)]
    for step, ((weights, _), log) in enumerate(zip(steps.steps, logs)):
        roots, *level1 = fake_vllm.REQUESTS[bounds[step] : bounds[step + 1]]
        assert (roots["n"], roots["max_tokens"], len({tuple(p) for p in roots["prompts"]})) == (2, 3, 2)
        nodes = [tuple(p) for r in level1 for p in r["prompts"]]
        assert level1 and {(r["n"], r["max_tokens"]) for r in level1} == {(2, 5)}
        assert all(any(len(node) == len(root) + 3 and node[: len(root)] == tuple(root) for root in roots["prompts"])
                   for node in nodes)
        assert all(torch.equal(r["weights"], weights) for r in [roots, *level1])
        generated = sum(r["generated"] for r in fake_vllm.REQUESTS[: bounds[step + 1]])
        assert log["tokens/generated"] == generated and torch.isfinite(torch.tensor(log["loss"]))
    assert len(logs) == STEPS and not torch.equal(steps.steps[0][0], steps.steps[1][0])


def test_spo_tree_refuses_calls_in_lockstep(random_model_dir, tmp_path, monkeypatch):
    """On several processes with vLLM, ZeRO-3 or FSDP every process must make the same generate calls, which a
    tree's cannot."""
    from segrl.errors import UserError
    from segrl.trainers.grpo import TokenCountingGRPOTrainer

    fake_vllm.install(monkeypatch, random_model_dir)
    monkeypatch.setattr(TokenCountingGRPOTrainer, "_generation_in_lockstep", property(lambda self: True))
    with pytest.raises(UserError, match="SPO-tree on several processes needs DDP or DeepSpeed ZeRO-1/2 and HF"):
        build_trainer(random_model_dir, tmp_path, world=1, rows=8, spo_mode="tree",
                      vllm_importance_sampling_correction=False)


def test_spo_tree_with_vllm_needs_the_importance_sampling_correction_off(random_model_dir, tmp_path, monkeypatch):
    from segrl.errors import UserError

    fake_vllm.install(monkeypatch, random_model_dir)
    with pytest.raises(UserError, match="pass --no_vllm_importance_sampling_correction"):
        build_trainer(random_model_dir, tmp_path, world=1, rows=8, spo_mode="tree")


def test_two_processes_through_the_vllm_server_equal_one(random_model_dir, tmp_path):
    """2 processes (gloo; the server on the main process, TRL's gather / broadcast / slice) against 1, same global
    batch: the same server requests, equal metrics and equal parameter updates (float rounding)."""
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir(), one.mkdir()
    launch([str(random_model_dir), str(two)], script=Path(__file__))
    train_with_sgd(str(random_model_dir), str(one))
    rank0, rank1, single = (torch.load(path, weights_only=False)
                            for path in (two / "rank0.pt", two / "rank1.pt", one / "rank0.pt"))
    assert rank1["requests"] == []  # only the main process talks to the server
    # Lockstep: every MC request holds the two processes' chunks, of equal size. A step's 27 distinct states split
    # into blocks of 13 and 14; the first is padded with a repeat of its first state, rolled out and discarded.
    steps, mc_states = [], [log["segments/mc_states"] for log in single["logs"]]
    for request in rank0["requests"]:
        if request["n"] == NUM_GENERATIONS:
            steps.append([])
            policy = request
        else:
            assert len(request["prompts"]) % (2 * MC_SAMPLES) == 0
            assert request["max_tokens"] == room(request, policy)  # the larger of the two processes' rooms
            steps[-1] += [tuple(p) for p in request["prompts"]]
    assert [len(set(step)) for step in steps] == mc_states
    assert all(len(step) == 2 * -(-states // 2) * MC_SAMPLES for step, states in zip(steps, mc_states, strict=True))
    assert any(states % 2 for states in mc_states), "no step had an odd number of states: no padding exercised"
    # The same distinct states and policy requests as on 1 process.
    distinct = lambda requests: [sorted({tuple(p) for r in requests if r["n"] == n for p in r["prompts"]})  # noqa
                                 for n in (NUM_GENERATIONS, MC_SAMPLES)]
    assert distinct(rank0["requests"]) == distinct(single["requests"])
    for log2, log1 in zip(rank0["logs"], single["logs"], strict=True):
        for name, value in log1.items():
            if "time" not in name and "per_second" not in name and name not in ("tokens/generated",
                                                                                "segments/mc_tokens"):
                assert log2[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    assert single["update"].norm() > 0
    relative = ((rank0["update"] - single["update"]).norm() / single["update"].norm()).item()
    assert relative < 1e-5 and torch.equal(rank0["update"], rank1["update"])


@pytest.mark.parametrize("mode", ["server", "colocate"])
@pytest.mark.parametrize("method, extra", [("grpo", []), ("spo", ["--num_mc_samples", "2"]), ("dense", [])])
def test_segrl_train_with_use_vllm(random_model_dir, tmp_path, monkeypatch, method, extra, mode):
    """The CLI's runs with ``--use_vllm``: every generated token came from vLLM and is counted once in
    ``tokens/generated``; evaluation and checkpoints work as without vLLM."""
    fake_vllm.install(monkeypatch, random_model_dir)
    colocated(monkeypatch)
    out = tmp_path / method
    result = CliRunner().invoke(app, [
        "train", method, "--model", str(random_model_dir), "--output_dir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
        "--train_examples", "16", "--eval_examples", "4", "--eval_every", "1", "--report_to", "none",
        "--logging_steps", "1", "--save_steps", "1", "--use_vllm", "--vllm_mode", mode, *extra])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval/accuracy" in r] == [0, 1, 2]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2 and steps[-1]["tokens/generated"] == sum(r["generated"] for r in fake_vllm.REQUESTS) > 0
    assert (method == "spo") == any(r["n"] == 2 for r in fake_vllm.REQUESTS)  # SPO's MC rollouts, N = 2
    assert all((out / f"checkpoint-{step}" / "segrl_checkpoint.json").exists() for step in (1, 2))
