#!/usr/bin/env bash
# Set up (once) and run the extraction job; arguments are Hydra overrides,
# e.g.  bash scripts/extract.sh corpus.max_tokens=null store.path=stores/full
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/embwalk extract "$@"
