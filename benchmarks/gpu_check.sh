#!/usr/bin/env bash
# segrl on one CUDA GPU, offline, in under 8 minutes: correctness checks, then throughput against TRL.
#
#   bash benchmarks/gpu_wheels.sh               # once, on a machine with PyPI access: fills wheels/
#   bash benchmarks/gpu_check.sh [WHEELS_DIR]   # on the GPU machine (default WHEELS_DIR: wheels)
#
# Assumes torch (with CUDA), transformers, accelerate and peft are installed; installs segrl's other dependencies
# from the wheels folder with no index, and runs segrl from src/ (so that the installed torch is left alone).
# MODEL=tiny-arith uses the tiny preset (built on the spot) where the smollm2-135m weights are not available.
# Results: runs/gpu_check/{correctness,overhead}.json and the tables printed below.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=${1:-wheels}
MODEL=${MODEL:-smollm2-135m}
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'gpu_check: no CUDA GPU'; print('GPU:', torch.cuda.get_device_name())"
if [ -d "$WHEELS" ]; then
  "$PYTHON" -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "$WHEELS"/*.whl
fi
mkdir -p runs/gpu_check
start=$(date +%s)
"$PYTHON" benchmarks/gpu_check.py --model "$MODEL" --output runs/gpu_check/correctness.json
"$PYTHON" benchmarks/overhead_vs_trl.py --model "$MODEL" --steps 5 --warmup 1 --batch 64 \
  --arms trl-grpo spo-as-grpo spo-chain --output runs/gpu_check/overhead.json
echo "gpu_check: done in $(( $(date +%s) - start )) s"
