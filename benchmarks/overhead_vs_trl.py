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

Compute efficiency: FLOPs per step divided by the median step time, against the machine's fp32 matmul peak
(measured here with square matmuls, the best of several sizes). The FLOPs per step are

- counted (the default for the ``tiny-*`` presets): ``torch.utils.flop_counter.FlopCounterMode`` over one extra
  step (counting slows it down; a 135M-model run with it was stopped after 34 minutes);
- or estimated analytically (``--analytic-flops`` or ``--no-flops``, and the default for other models), from the
  shape of every forward pass that the timed steps run through the policy (and the reference and value models,
  where there are any), seen by a forward pre-hook: policy sampling (prefill and each decoding step), MC rollouts
  and tree levels, log-prob passes and training passes, with their prompts and padding. A pass over a (B, S) block
  with K key columns (cached ones included) costs

      F = 2·P·B·S + 4·L·H·d·B·S·K + 2·h·V·B·S_head

  with P the parameters of the model's linear layers (the output head excluded; the embedding is a lookup), L
  layers, H attention heads of size d, hidden size h, head width V (the vocabulary; 1 for a value head) and S_head
  the positions the head is applied to (1 in generation; all of them in TRL's log-prob and loss passes, whose
  fused head scores every position off Triton devices). A pass with gradients costs 3F (backward = 2 x forward),
  plus the decoder's forward again under gradient checkpointing (torch stops recomputing once the backward pass
  has what it needs, after 75-80% of it on the tiny Llamas, so this term is a little high). Attention counts all
  S x K scores, masked and padding ones included, as the masked kernels compute them. Ignored: embedding lookups,
  norms, activations, rotary embeddings, softmax, sampling and the optimizer update (elementwise work, which
  FlopCounterMode does not count either). For the tiny presets both numbers are reported, on the counted step, as
  a check. On a CPU, FlopCounterMode counts only the matmuls: it has no formula for torch's CPU attention kernel
  (``_scaled_dot_product_flash_attention_for_cpu``), so there the estimate exceeds the count by the attention term
  (on one forward pass of ``tiny-arith`` the matmul terms agree exactly).

Peak memory is the process's peak resident set size (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).
"""

from __future__ import annotations

import argparse
import functools
import json
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


class AnalyticFlops:
    """Running analytic FLOP count of the forward passes of ``models`` (the formula in the module docstring).

    A forward pre-hook on each model reads the shape of its input (B, S), the length of its cache and whether the
    pass will be differentiated; ``total`` accumulates. Hooks are removed by :meth:`remove`."""

    def __init__(self, models):
        import torch

        self.total, self.handles = 0.0, []
        for model in models:
            config = model.config.get_text_config()
            head = model.get_output_embeddings() or getattr(model, "score", None)
            head_width = head.weight.shape[0] if head is not None else 0
            linear = sum(m.weight.numel() for m in model.modules()
                         if isinstance(m, torch.nn.Linear) and m is not head)
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            sizes = dict(linear=linear, attention=config.num_hidden_layers * config.num_attention_heads * head_dim,
                         head=config.hidden_size * head_width)
            hook = functools.partial(self._count, sizes=sizes)
            self.handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))

    def _count(self, model, args, kwargs, sizes) -> None:
        import torch

        inputs = kwargs.get("input_ids", args[0] if args else None)
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        batch, length = inputs.shape[:2]
        cache = kwargs.get("cache")
        keys = length + (cache.get_seq_length() if cache is not None else 0)
        keep = kwargs.get("logits_to_keep")
        head_positions = (length - 1 if kwargs.get("fused_lm_head")
                          else keep if isinstance(keep, int) and keep > 0 else length)
        decoder = 2 * sizes["linear"] * batch * length + 4 * sizes["attention"] * batch * length * keys
        forward = decoder + 2 * sizes["head"] * batch * head_positions
        if torch.is_grad_enabled() and model.training and any(p.requires_grad for p in model.parameters()):
            forward = 3 * forward + (decoder if getattr(model, "is_activation_checkpointing", False) else 0)
        self.total += forward

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def step_models(trainer) -> list:
    """The models whose forward passes a step runs: the policy, and the reference and value models if any."""
    unwrap = trainer.accelerator.unwrap_model
    return [unwrap(model) for model in (trainer.model, getattr(trainer, "ref_model", None),
                                        getattr(trainer, "value_model", None)) if model is not None]


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
        """Seconds and analytic FLOPs of each step, and the logs."""

        def __init__(self):
            self.seconds, self.flops, self.logs, self.counter = [], [], [], None

        def on_step_begin(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            self.start, self.flops_start = time.perf_counter(), self.counter.total

        def on_step_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - self.start)
            self.flops.append(self.counter.total - self.flops_start)

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
        timer.counter = AnalyticFlops(step_models(trainer))
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
        timer.counter.remove()
        analytic = statistics.mean(timer.flops[args.warmup:])
        flops, flops_source, check = analytic, "analytic", {}
        if counted_flops(args):
            counter = FlopCounterMode(display=False)
            flop_trainer = build(tmp, 1, [])
            estimate = AnalyticFlops(step_models(flop_trainer))
            with counter:
                flop_trainer.train()
            estimate.remove()
            flops, flops_source = counter.get_total_flops(), "counted"
            check = {"counted_step_flops": flops, "counted_step_analytic_flops": estimate.total}
    step_seconds = statistics.median(timer.seconds[args.warmup:])
    result = {"arm": arm, "model": args.model, "device": device, "steps": len(timer.seconds) - args.warmup,
              "step_seconds": step_seconds, "step_seconds_all": timer.seconds, "peak_memory_bytes": peak,
              "flops_per_step": flops, "flops_source": flops_source, "analytic_flops_per_step": analytic, **check,
              "torch_threads": torch.get_num_threads(),
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


def counted_flops(args) -> bool:
    """FlopCounterMode for the tiny presets unless told otherwise; the analytic estimate for everything else."""
    return args.model.startswith("tiny-") and not (args.no_flops or args.analytic_flops)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny-arith")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--batch", type=int, default=64, help="completions per step (8 per prompt)")
    parser.add_argument("--completion-length", type=int, default=48)
    parser.add_argument("--analytic-flops", action="store_true",
                        help="estimate FLOPs analytically instead of counting them in an extra step under "
                             "FlopCounterMode (slow for large models); the default for models other than tiny-*")
    parser.add_argument("--no-flops", action="store_true", help="the same as --analytic-flops")
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
                   "--completion-length", str(args.completion_length),
                   *(["--analytic-flops"] if not counted_flops(args) else [])]
        done = subprocess.run(command, check=True, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        results["arms"][arm] = json.loads(done.stdout.strip().splitlines()[-1])
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # after every arm: a stopped run keeps its arms
        write_text_atomic(Path(args.output), json.dumps(results, indent=2) + "\n")

    peak = results["matmul_peak_flops"]
    print(f"\n{args.model} on {device}, batch {args.batch}, completions <= {args.completion_length} tokens, "
          f"median of {args.steps} steps after {args.warmup}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; FLOPs "
          f"{'counted by FlopCounterMode' if counted_flops(args) else 'estimated analytically'}")
    base = results["arms"].get("trl-grpo", {}).get("step_seconds")
    print(f"{'arm':<12} {'step s':>8} {'vs TRL':>8} {'segrl s':>8} {'of step':>8} {'length':>7} {'GFLOP/step':>11} "
          f"{'GFLOP/s':>8} {'of peak':>8} {'peak MiB':>9}")
    for arm, r in results["arms"].items():
        rate = r["flops_per_step"] / r["step_seconds"]
        versus = f"{r['step_seconds'] / base - 1:+.1%}" if base else "-"
        own = r.get("machinery_seconds")
        own_cells = f"{own:>8.3f} {own / r['step_seconds']:>8.1%}" if own is not None else f"{'-':>8} {'-':>8}"
        print(f"{arm:<12} {r['step_seconds']:>8.2f} {versus:>8} {own_cells} {r['mean_completion_length']:>7.1f} "
              f"{r['flops_per_step'] / 1e9:>11.1f} {rate / 1e9:>8.2f} {rate / peak:>8.1%} "
              f"{r['peak_memory_bytes'] / 2**20:>9.0f}")
    for arm, r in results["arms"].items():
        if "counted_step_flops" in r:
            print(f"{arm}: analytic estimate {r['counted_step_analytic_flops'] / 1e9:.1f} GFLOP vs counted "
                  f"{r['counted_step_flops'] / 1e9:.1f} on the counted step "
                  f"({r['counted_step_analytic_flops'] / r['counted_step_flops'] - 1:+.1%})")
    chain = results["arms"].get("spo-chain")
    if chain and chain["mc_seconds"] and chain["generation_seconds"]:
        mc, plain = chain["mc_tokens"] / chain["mc_seconds"], chain["policy_tokens"] / chain["generation_seconds"]
        print(f"spo-chain MC rollouts {mc:.0f} tokens/s vs plain sampling {plain:.0f} tokens/s: {mc / plain:.0%}")
    print(f"results: {args.output}")


if __name__ == "__main__":
    main()
