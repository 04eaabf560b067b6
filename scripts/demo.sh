#!/usr/bin/env bash
# The main job on the built-in defaults: `segrl quickstart` trains GRPO, SPO-chain and SPO-tree on the arith task
# from the tiny-arith preset at an equal generation budget and writes runs/quickstart/report.html.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/segrl quickstart --output-dir runs/quickstart "$@"
