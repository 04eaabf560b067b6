"""Calibrate a ``tiny-<task>`` preset: build it (tokenizer, model, SFT warm start) into a temporary directory for
one or more seeds and print a table of parameters, SFT steps, seconds and held-out accuracy (greedy and sampled
at T=1).

    python benchmarks/tiny_sft.py --task arith --size small --seeds 0 1 2
    python benchmarks/tiny_sft.py --task arith --size small --steps 300 --difficulty num_steps=2 max_operand=20

Runs in one process with ``--threads`` torch threads (default 1: on a 2-core machine shared with other jobs,
two threads that compete for a core run several times slower than one). Timings are wall seconds on whatever
machine runs it and are never asserted anywhere; put measured tables into ``docs/RESULTS.md`` with the command,
the machine and the date.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import tempfile
from datetime import date


def _parse_difficulty(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--difficulty expects key=value pairs, got {item!r}")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value  # a bare string such as ops=+-
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arith")
    ap.add_argument("--size", default="small")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="one build per seed (1-3 is typical)")
    ap.add_argument("--seed", type=int, default=None, help="shorthand for --seeds SEED")
    ap.add_argument("--steps", type=int, default=None, help="SFT steps (default: the size's default)")
    ap.add_argument("--batch-size", type=int, default=None, help="problems per SFT step")
    ap.add_argument("--lr", type=float, default=None, help="peak learning rate")
    ap.add_argument("--vocab-size", type=int, default=None, help="tokenizer vocabulary (259 = character level)")
    ap.add_argument("--difficulty", nargs="*", default=[], metavar="KEY=VALUE", help="task difficulty knobs")
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--json", default=None, help="also write the per-seed reports to this JSON file")
    ap.add_argument("--keep", default=None, help="build into KEEP/seed<N> instead of a temporary directory")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from segrl import tiny

    torch.set_num_threads(args.threads)
    seeds = [args.seed] if args.seed is not None else args.seeds
    difficulty = _parse_difficulty(args.difficulty)
    extra = {"vocab_size": args.vocab_size} if args.vocab_size is not None else {}
    reports = []
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="segrl-tiny-") as tmp:
            out = os.path.join(args.keep, f"seed{seed}") if args.keep else tmp
            report = tiny.build_tiny(
                args.task,
                out,
                size=args.size,
                seed=seed,
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=args.lr,
                difficulty=difficulty,
                eval_examples=args.eval_examples,
                log_every=args.log_every,
                **extra,
            )
        reports.append(report)
        sys.stdout.flush()

    print()
    print(
        f"tiny-{args.task} {args.size}, difficulty {difficulty or 'default'}, {args.threads} thread(s), "
        f"{platform.machine()} {os.cpu_count()} cores, {date.today()}"
    )
    header = f"{'seed':>4} {'params':>8} {'steps':>6} {'batch':>5} {'lr':>7} {'sft s':>7} {'wall s':>7} " \
             f"{'nll0':>6} {'nll':>6} {'greedy':>7} {'sampled':>8}"
    print(header)
    print("-" * len(header))
    for r in reports:
        print(
            f"{r['seed']:>4} {r['num_parameters'] / 1e6:>7.2f}M {r['sft_steps']:>6} {r['batch_size']:>5} "
            f"{r['learning_rate']:>7.0e} {r['sft_seconds']:>7.0f} {r['wall_seconds']:>7.0f} "
            f"{r['init_completion_nll'] or float('nan'):>6.3f} {r['completion_nll'] or float('nan'):>6.3f} "
            f"{r['greedy_accuracy'] or 0:>7.3f} {r['sampled_accuracy'] or 0:>8.3f}"
        )
    if len(reports) > 1:
        g = [r["greedy_accuracy"] or 0 for r in reports]
        s = [r["sampled_accuracy"] or 0 for r in reports]
        w = [r["wall_seconds"] for r in reports]
        print(
            f"mean {'':>8} {'':>6} {'':>5} {'':>7} {'':>7} {statistics.mean(w):>7.0f} {'':>6} {'':>6} "
            f"{statistics.mean(g):>7.3f} {statistics.mean(s):>8.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(reports, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
