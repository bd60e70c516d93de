#!/usr/bin/env bash
# Set up (once) and run the linter and the test suite; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -q --timeout=900 "$@"
