"""Time ReMedy's tie-calibrated acc-eq (:func:`segrl.remedy.metrics.tie_calibrated_acc_eq`) on synthetic ratings.

    python benchmarks/tie_calibration_speed.py [--items 500 2000 8000 32000] [--systems 6] [--repeats 5]

Per size: ``--items`` items x ``--systems`` rated hypotheses each (2000 x 6 = 30k within-item pairs), human scores integers 0..24 (so ties), metric = human + N(0, 1) noise (so every |Δm| is a distinct
candidate ε). Prints the pairs, the candidates tried and the median and best wall time (ms) of ``--repeats`` calls,
after one untimed warm-up call. Single-threaded numpy is the intended setting (OMP_NUM_THREADS=1).
"""

import argparse
import statistics
import time

import numpy as np

from segrl.remedy.metrics import tie_calibrated_acc_eq


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[500, 2000, 8000, 32000])
    parser.add_argument("--systems", type=int, default=6, help="rated hypotheses per item")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'items':>6} {'systems':>7} {'pairs':>8} {'candidates':>10} {'median (ms)':>11} {'best (ms)':>9}")
    for num_items in args.items:
        rng = np.random.default_rng(args.seed)
        items = np.repeat(np.arange(num_items), args.systems)
        human = rng.integers(0, 25, size=len(items)).astype(float)
        metric = human + rng.normal(size=len(items))
        result = tie_calibrated_acc_eq(metric, human, items)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            tie_calibrated_acc_eq(metric, human, items)
            times.append(time.perf_counter() - start)
        print(f"{num_items:>6} {args.systems:>7} {result.num_pairs:>8} {result.num_candidates:>10} "
              f"{1000 * statistics.median(times):>11.1f} {1000 * min(times):>9.1f}")


if __name__ == "__main__":
    main()
