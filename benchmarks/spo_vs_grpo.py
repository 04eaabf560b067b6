"""GRPO vs SPO-chain vs SPO-tree on arith with the tiny preset, at equal generated tokens, over seeds and learning
rates.

    python benchmarks/spo_vs_grpo.py --seeds 0 1 2 --learning-rates 2e-5 --token-budget 200000

Each (method, learning rate, seed) run uses the quickstart's settings (segrl.quickstart.COMMON and METHODS) and the
tiny-arith preset of that seed (its own SFT warm start), stops at the token budget (SPO's Monte Carlo rollouts
count), and is evaluated on the same held-out problems. Prints, per method and learning rate, the mean ± std over
seeds of the held-out accuracy before and after training and its change, sampled at T = 1 and greedy; runs are
kept under --output-dir for plotting.
"""

import argparse
import statistics
from pathlib import Path

import torch
from trl import GRPOConfig

from segrl.quickstart import COMMON, METHODS
from segrl.report import final_row, read_metrics
from segrl.trainers.spo import SPOConfig
from segrl.training import RunArguments, train


def mean_std(values):
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2e-5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--token-budget", type=int, default=200_000)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--output-dir", default="runs/spo_vs_grpo")
    args = parser.parse_args()

    on_cpu = not torch.cuda.is_available()
    results = {}  # (method, lr) -> list of final rows
    for seed in args.seeds:
        for lr in args.learning_rates:
            for name in args.methods:
                method, extra = METHODS[name]
                config_class = SPOConfig if method == "spo" else GRPOConfig
                out = Path(args.output_dir) / f"{name.lower()}-lr{lr:g}-seed{seed}"
                if not (out / "final").is_dir():  # finished runs are reused: the benchmark can be resumed
                    run = RunArguments(task="arith", model="tiny-arith", eval_examples=args.eval_examples,
                                       eval_every=5, max_generated_tokens=args.token_budget)
                    settings = {**COMMON, "learning_rate": lr, **extra}
                    config = config_class(output_dir=str(out), seed=seed, use_cpu=on_cpu, bf16=not on_cpu, **settings)
                    print(f"== {name} lr {lr:g} seed {seed}", flush=True)
                    train(method, run, config)
                results.setdefault((name, lr), []).append(final_row(read_metrics(out)))

    print(f"\narith, tiny-arith small, {args.token_budget:,} generated tokens per run, seeds {args.seeds}, "
          f"{args.eval_examples} held-out problems")
    print(f"{'method':<10} {'lr':>7} {'sampled start':>15} {'sampled end':>15} {'change':>15} "
          f"{'greedy end':>15} {'greedy change':>15} {'steps':>6} {'train s':>8}")
    for (method, lr), rows in results.items():
        sampled_change = [r["accuracy end"] - r["accuracy start"] for r in rows]
        greedy_change = [r["greedy end"] - r["greedy start"] for r in rows]
        print(f"{method:<10} {lr:>7.0e} {mean_std([r['accuracy start'] for r in rows]):>15} "
              f"{mean_std([r['accuracy end'] for r in rows]):>15} {mean_std(sampled_change):>15} "
              f"{mean_std([r['greedy end'] for r in rows]):>15} {mean_std(greedy_change):>15} "
              f"{statistics.mean(r['steps'] for r in rows):>6.0f} {statistics.mean(r['train seconds'] for r in rows):>8.0f}")


if __name__ == "__main__":
    main()
