"""What segrl's segment machinery costs on top of TRL, what Monte Carlo rollouts cost per token, and how much of the
machine a training step uses.

    python benchmarks/overhead_vs_trl.py --model tiny-arith --steps 12
    python benchmarks/overhead_vs_trl.py --model smollm2-135m --steps 6 --batch 16 --arms trl-grpo spo-as-grpo

Each arm trains on the same model, data (arith prompts), batch, completion length and steps, in its own process
(so that its peak memory is its own), and reports the median wall time of a step after ``--warmup`` steps:

- ``trl-grpo``: TRL's own ``GRPOTrainer``, unmodified (scale_rewards="none", so that its advantages are R - mean);
- ``segrl-grpo``: segrl's ``TokenCountingGRPOTrainer`` (the GRPO baseline of every segrl comparison);
- ``spo-as-grpo``: ``SPOTrainer`` configured to reproduce GRPO: one fixed-length segment per completion, the
  group-mean baseline for it (so A = R - mean, as above), no probability mask, no whitening, hence no Monte Carlo
  rollout; everything else of the segment machinery runs (partition, boundaries, advantages, metrics);
- ``spo-chain``: SPO-chain as in the quickstart (cutpoints, 4 MC samples per state);
- ``spo-tree``: SPO-tree as in the quickstart (3-3-3 trees of 10-token segments);
- ``dense-gae``: the dense-reward trainer with PPO's value model (GAE) on the task's reward at the last token
  (no segment reward model: its cost is the value model's).

Overhead of the segment machinery: the seconds per step spent in segrl's own batch code around GRPO's sampling and
scoring (``segrl s``: SPO's batch method minus the GRPO one it wraps, minus MC rollouts), as a share of the step
(target: <= 5%); and end to end, step(spo-as-grpo) / step(trl-grpo) - 1, which also moves with the sampled
completion lengths (``length``) once the two policies' samples differ. MC throughput: the
MC rollout tokens per second of ``spo-chain`` (``segments/mc_tokens`` over ``segments/time/mc_seconds``) against
the plain sampling throughput of the same run (its completion tokens over the seconds of TRL's generation, which
also scores and computes log-probs), target >= 90%.

Compute efficiency: the FLOPs of one step are counted by ``torch.utils.flop_counter.FlopCounterMode`` in a
separate step (counting slows it down), and divided by the median step time; the machine's fp32 matmul peak is
measured here with square matmuls (the best of several sizes). Peak memory is the process's peak resident set
size (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from segrl.files import write_text_atomic

ARMS = ("trl-grpo", "segrl-grpo", "spo-as-grpo", "spo-chain", "spo-tree", "dense-gae")


def matmul_peak_flops(device: str, seconds: float = 2.0) -> float:
    """Best achieved fp32 FLOP/s of square matmuls on ``device``."""
    import torch

    best = 0.0
    for n in (512, 1024, 2048):
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        torch.mm(a, b)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            torch.mm(a, b)
            count += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n ** 3 * count / (time.perf_counter() - start))
    return best


def config_for(arm: str, args, out: str):
    import torch
    from trl import GRPOConfig

    from segrl.quickstart import SPO_CHAIN, SPO_TREE
    from segrl.trainers.spo import SPOConfig

    on_cpu = not torch.cuda.is_available()
    common = dict(output_dir=out, per_device_train_batch_size=args.batch, num_generations=8,
                  max_completion_length=args.completion_length, temperature=1.0, learning_rate=2e-5, beta=0.0,
                  max_steps=args.warmup + args.steps, logging_steps=1, save_strategy="no", report_to="none",
                  disable_tqdm=True, seed=0, use_cpu=on_cpu, bf16=not on_cpu)
    if arm in ("trl-grpo", "segrl-grpo"):
        return GRPOConfig(**common, scale_rewards="none")
    if arm == "dense-gae":
        from segrl.trainers.dense import DenseRewardConfig

        return DenseRewardConfig(**common, advantage_estimator="gae")
    if arm == "spo-as-grpo":
        return SPOConfig(**common, partition="fixed", segment_length=args.completion_length,
                         segment0_baseline="group_mean", use_prob_mask=False, whiten_advantages=False)
    return SPOConfig(**common, **(SPO_CHAIN if arm == "spo-chain" else SPO_TREE))


def run_arm(arm: str, args) -> dict:
    """Train one arm in this process; return its measurements."""
    import torch
    from transformers import TrainerCallback
    from trl import GRPOTrainer
    from torch.utils.flop_counter import FlopCounterMode

    from segrl.models import load_model
    from segrl.tasks import get_task
    from segrl.trainers.grpo import TokenCountingGRPOTrainer
    from segrl.trainers.spo import SPOTrainer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task = get_task("arith")
    dataset = task.make_dataset("train", 4096, seed=0)
    from segrl.trainers.dense import DenseRewardTrainer

    trainer_class = {"trl-grpo": GRPOTrainer, "segrl-grpo": TokenCountingGRPOTrainer,
                     "dense-gae": DenseRewardTrainer}.get(arm, SPOTrainer)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.logs = [], []

        def on_step_begin(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)

        def on_log(self, _args, state, control, logs=None, **k):
            self.logs.append(dict(logs or {}))

    def build(out: str, max_steps: int, callbacks):
        model, tokenizer = load_model(args.model, device=device)
        tokenizer.padding_side = "left"
        config = config_for(arm, args, out)
        config.max_steps = max_steps
        return trainer_class(model=model, reward_funcs=[task.reward], args=config, train_dataset=dataset,
                             processing_class=tokenizer, callbacks=callbacks)

    # Seconds in segrl's own batch code around GRPO's sampling and scoring (SPO chain: minus its MC rollouts).
    spent = {"outer": [], "inner": []}

    def timed(function, key):
        def wrapper(*a, **k):
            start = time.perf_counter()
            result = function(*a, **k)
            spent[key].append(time.perf_counter() - start)
            return result
        return wrapper

    with tempfile.TemporaryDirectory() as tmp:
        timer = StepTimer()
        trainer = build(tmp, args.warmup + args.steps, [timer])
        if isinstance(trainer, SPOTrainer) and trainer.args.spo_mode == "chain":
            trainer._generate_and_score_completions = timed(trainer._generate_and_score_completions, "outer")
            TokenCountingGRPOTrainer._generate_and_score_completions = timed(
                TokenCountingGRPOTrainer._generate_and_score_completions, "inner")
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        peak = (torch.cuda.max_memory_allocated() if device == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        steps = [log for log in timer.logs if "loss" in log][args.warmup:]
        flops = None
        if not args.no_flops:
            counter = FlopCounterMode(display=False)
            flop_trainer = build(tmp, 1, [])
            with counter:
                flop_trainer.train()
            flops = counter.get_total_flops()
    step_seconds = statistics.median(timer.seconds[args.warmup:])
    result = {"arm": arm, "model": args.model, "device": device, "steps": len(timer.seconds) - args.warmup,
              "step_seconds": step_seconds, "step_seconds_all": timer.seconds, "peak_memory_bytes": peak,
              "flops_per_step": flops, "torch_threads": torch.get_num_threads(),
              "completion_tokens_per_step": statistics.mean(
                  log.get("completions/mean_length", 0) * args.batch for log in steps)}
    if spent["outer"]:
        mc = [log.get("segments/time/mc_seconds", 0.0) for log in timer.logs if "loss" in log]
        machinery = [o - i - m for o, i, m in zip(spent["outer"], spent["inner"], mc)][args.warmup:]
        result["machinery_seconds"] = statistics.median(machinery)
    result["mean_completion_length"] = statistics.mean(log.get("completions/mean_length", 0) for log in steps)
    if arm == "spo-chain":
        mc_tokens = sum(log.get("segments/mc_tokens", 0) for log in steps)
        mc_seconds = sum(log.get("segments/time/mc_seconds", 0) for log in steps)
        policy_tokens = sum(log.get("segments/policy_tokens", 0) for log in steps)
        generation_seconds = sum(log.get("segments/time/generation_seconds", 0) for log in steps)
        result.update(mc_tokens=mc_tokens, mc_seconds=mc_seconds, policy_tokens=policy_tokens,
                      generation_seconds=generation_seconds)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-arith")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=64, help="completions per step (8 per prompt)")
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the FLOP count (an extra step under FlopCounterMode, slow for large models)")
    parser.add_argument("--output", default="runs/overhead_vs_trl.json")
    parser.add_argument("--arm", help=argparse.SUPPRESS)  # internal: run one arm in this process
    args = parser.parse_args()

    if args.arm:
        print(json.dumps(run_arm(args.arm, args)), flush=True)
        return
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                          f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
               "date": time.strftime("%Y-%m-%d"), "command": " ".join(sys.argv),
               "matmul_peak_flops": matmul_peak_flops(device), "arms": {}}
    for arm in args.arms:
        print(f"== {arm}", flush=True)
        command = [sys.executable, __file__, "--arm", arm, "--model", args.model, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--batch", str(args.batch),
                   "--completion-length", str(args.completion_length), *(["--no-flops"] if args.no_flops else [])]
        done = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        results["arms"][arm] = json.loads(done.stdout.strip().splitlines()[-1])
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # after every arm: a stopped run keeps its arms
        write_text_atomic(Path(args.output), json.dumps(results, indent=2) + "\n")

    peak = results["matmul_peak_flops"]
    print(f"\n{args.model} on {device}, batch {args.batch}, completions <= {args.completion_length} tokens, "
          f"median of {args.steps} steps after {args.warmup}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    base = results["arms"].get("trl-grpo", {}).get("step_seconds")
    print(f"{'arm':<12} {'step s':>8} {'vs TRL':>8} {'segrl s':>8} {'of step':>8} {'length':>7} {'GFLOP/step':>11} "
          f"{'GFLOP/s':>8} {'of peak':>8} {'peak MiB':>9}")
    for arm, r in results["arms"].items():
        rate = (r["flops_per_step"] or math.nan) / r["step_seconds"]
        versus = f"{r['step_seconds'] / base - 1:+.1%}" if base else "-"
        own = r.get("machinery_seconds")
        own_cells = f"{own:>8.3f} {own / r['step_seconds']:>8.1%}" if own is not None else f"{'-':>8} {'-':>8}"
        print(f"{arm:<12} {r['step_seconds']:>8.2f} {versus:>8} {own_cells} {r['mean_completion_length']:>7.1f} "
              f"{(r['flops_per_step'] or math.nan) / 1e9:>11.1f} {rate / 1e9:>8.2f} {rate / peak:>8.1%} "
              f"{r['peak_memory_bytes'] / 2**20:>9.0f}")
    chain = results["arms"].get("spo-chain")
    if chain and chain["mc_seconds"] and chain["generation_seconds"]:
        mc, plain = chain["mc_tokens"] / chain["mc_seconds"], chain["policy_tokens"] / chain["generation_seconds"]
        print(f"spo-chain MC rollouts {mc:.0f} tokens/s vs plain sampling {plain:.0f} tokens/s: {mc / plain:.0%}")
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
