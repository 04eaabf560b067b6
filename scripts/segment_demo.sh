#!/usr/bin/env bash
# Segments of real English text: sample a response from SmolLM2-135M-Instruct and show its segments under the
# model's own entropy (terminal + runs/demo/segments.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/segrl segment --model smollm2-135m --method entropy --threshold 4.0 --temperature 0.7 \
  --html runs/demo/segments.html "$@"
