"""Time the smollm2-135m preset: the first load (dequantise the GGUF, write safetensors) and a cached reload.

    python benchmarks/model_load.py [--repeats 3]

Each repeat uses a fresh temporary cache for the cold load, then reloads from it; prints a table in seconds.
"""

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.utils import logging as transformers_logging

from segrl.models import load_model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transformers_logging.disable_progress_bar()
    print(f"{'repeat':>6} {'cold load (s)':>14} {'cached load (s)':>16}")
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            load_model("smollm2-135m", cache_dir=cache, device="cpu")
            cold = time.perf_counter() - start
            start = time.perf_counter()
            load_model("smollm2-135m", cache_dir=cache, device="cpu")
            warm = time.perf_counter() - start
        print(f"{repeat:>6} {cold:>14.2f} {warm:>16.2f}")


if __name__ == "__main__":
    main()
