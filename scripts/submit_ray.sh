#!/usr/bin/env bash
# Submit an extraction job to a running Ray cluster, run with this checkout's environment:
#   bash scripts/submit_ray.sh store=/shared/stores/run1 corpus=files corpus.path=/shared/data
#
# RAY_ADDRESS is the cluster's dashboard (default http://127.0.0.1:8265: a head started on
# this node with `.venv/bin/ray start --head`). The job runs this checkout's .venv/bin/embwalk
# in this directory, so the head must see both at the same path (this node, or a shared
# filesystem; VENV=... names another environment), and a relative store path means the same
# store as here. Ray's token authentication (on by default for clusters Ray starts itself
# since 2.59): the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token,
# the file `ray start` writes; on another machine copy it there or set RAY_AUTH_TOKEN
# (`ray get-auth-token` prints it on the head).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-$PWD/.venv}
export RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}
# The Ray client reads a token only with RAY_AUTH_MODE=token: set it when there is a token to read
# (RAY_AUTH_MODE=disabled for a cluster started without authentication).
if [ -z "${RAY_AUTH_MODE:-}" ] && { [ -n "${RAY_AUTH_TOKEN:-}${RAY_AUTH_TOKEN_PATH:-}" ] || [ -s "$HOME/.ray/auth_token" ]; }; then
  export RAY_AUTH_MODE=token
fi
[ -x "$VENV/bin/ray" ] || { echo "embwalk: error: no Ray in $VENV (run bash scripts/setup.sh)" >&2; exit 2; }
command=$(printf '%q ' "$VENV/bin/embwalk" extract cluster=ray cluster.address=auto "$@")
exec "$VENV/bin/ray" job submit --entrypoint-num-cpus=0 -- bash -c "cd $(printf '%q' "$PWD") && exec $command"
