#!/usr/bin/env bash
# Submit an extraction job to a running Ray cluster:
#   RAY_ADDRESS=http://head:8265 bash scripts/submit_ray.sh store.path=/shared/stores/run1 corpus.path=/shared/data
# The working directory travels with the job (--working-dir .); the cluster's
# nodes need the packages of requirements.txt (the job does not install them),
# and the store path must be on a filesystem every node sees.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ray job submit --working-dir . -- python -m jobs.extract cluster=ray cluster.address=auto "$@"
