"""LENS-style GRPO on the grounding task: held-out format rate, box IoU, mask IoU and Acc@0.5 before and after.

    python benchmarks/lens_grounding.py --seeds 0 --steps 60

Each arm runs the recipe ``segrl train grpo --config configs/grounding_grpo.yaml`` from the tiny-grounding preset
of the seed (its own SFT warm start), with other reward weights:

- ``LENS``: format + box IoU² + mask IoU², unweighted (the recipe);
- ``format+box``: the mask level weighted 0 (still logged), to see what the segment-level reward adds.

Prints, per arm and seed, the held-out metrics (200 scenes) at the first and the last evaluation, sampled at
T = 1 and greedy, and the mean training rewards of the first and the last 5 steps. Finished runs under
--output-dir are reused, so the benchmark can be resumed.
"""

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from segrl.report import read_metrics

ARMS = {"LENS": "1 1 1", "format+box": "1 1 0"}
METRICS = ("format_rate", "box_iou", "mask_iou", "acc_at_0.5")
REWARDS = ("format_reward", "box_iou_reward", "mask_iou_reward")


def run_arm(arm: str, seed: int, steps: int, out: Path) -> None:
    if (out / "final").is_dir():
        return
    command = [str(Path(sys.executable).parent / "segrl"), "train", "grpo", "--config", "configs/grounding_grpo.yaml",
               "--seed", str(seed), "--max_steps", str(steps), "--output_dir", str(out),
               "--reward_weights", *ARMS[arm].split()]
    print(f"== {arm} seed {seed}: {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def summary(records: list[dict]) -> dict:
    evals = [r for r in records if "eval/accuracy" in r]
    steps = [r for r in records if "loss" in r]
    row = {"steps": evals[-1]["step"], "train s": evals[-1]["wall_seconds"]}
    for name in METRICS:
        for suffix in ("", "_greedy"):
            row[f"{name}{suffix} start"] = evals[0][f"eval/{name}{suffix}"]
            row[f"{name}{suffix} end"] = evals[-1][f"eval/{name}{suffix}"]
    for name in REWARDS:
        values = [r[f"rewards/{name}/mean"] for r in steps]
        row[f"{name} first5"] = statistics.mean(values[:5])
        row[f"{name} last5"] = statistics.mean(values[-5:])
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--output-dir", default="runs/lens_grounding")
    args = parser.parse_args()

    rows = {}
    for seed in args.seeds:
        for arm in args.arms:
            out = Path(args.output_dir) / f"{arm.replace('+', '_')}-seed{seed}"
            run_arm(arm, seed, args.steps, out)
            rows[(arm, seed)] = summary(read_metrics(out))

    for mode, suffix in (("sampled at T = 1", ""), ("greedy", "_greedy")):
        print(f"\nheld-out scenes, {mode}: start -> end")
        print(f"{'arm':<11} {'seed':>4} " + " ".join(f"{m:>17}" for m in METRICS) + f" {'steps':>6} {'train s':>8}")
        for (arm, seed), row in rows.items():
            cells = " ".join(f"{row[f'{m}{suffix} start']:>7.3f} -> {row[f'{m}{suffix} end']:<6.3f}" for m in METRICS)
            print(f"{arm:<11} {seed:>4} {cells} {row['steps']:>6} {row['train s']:>8.0f}")
    print("\ntraining rewards (mean of the first 5 -> the last 5 steps)")
    for (arm, seed), row in rows.items():
        cells = "  ".join(f"{n} {row[f'{n} first5']:.3f} -> {row[f'{n} last5']:.3f}" for n in REWARDS)
        print(f"{arm:<11} {seed:>4}  {cells}")


if __name__ == "__main__":
    main()
