"""The README's cluster flows against a real Ray head on this machine (loopback only).

- ``cluster=ray`` on a node where ``ray start --head`` ran joins that cluster;
- ``scripts/submit_ray.sh`` submits the job with this checkout's environment and Ray's token;
- ``scripts/slurm/ray_extract.sbatch`` run on one node, with ``srun``/``scontrol`` stand-ins that
  place every step here, starts its own head, runs the job and leaves a complete store.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from embwalk.store.reader import Store

ROOT = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")
JOB = ["model=minilm", "corpus.max_tokens=64", "cluster.progress=false"]

pytestmark = pytest.mark.skipif(not RAY.exists(), reason="needs the ray CLI in the environment")

SCONTROL = """#!/usr/bin/env bash
case "$1 $2" in
  "show hostnames") echo localhost ;;
  requeue*) echo "requeue $2" ;;
  *) echo "scontrol stand-in: unsupported: $*" >&2; exit 1 ;;
esac
"""
SRUN = """#!/usr/bin/env bash
while [ $# -gt 0 ]; do
  case "$1" in
    -w|--nodelist) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
[ "$1 ${2:-}" = "hostname --ip-address" ] && { echo 127.0.0.1; exit 0; }
exec "$@"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_stop() -> None:
    subprocess.run([str(RAY), "stop", "--force"], capture_output=True, timeout=120)


def complete(path: Path) -> bool:
    store = Store(path)
    return store.manifest["complete"] and len(store.committed) == len(store.manifest["shards"])


@pytest.fixture
def head(tmp_path):
    """A Ray head as a user starts it; stopped (with everything Ray started) afterwards."""
    port, dashboard = free_port(), free_port()
    started = subprocess.run(
        [str(RAY), "start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--num-cpus=2",
         "--disable-usage-stats"], capture_output=True, text=True, timeout=180,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        ray_stop()


def run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Output to a file, not a pipe: Ray processes a job leaves behind would keep a pipe open."""
    log = tmp_path / f"log-{len(list(tmp_path.glob('log-*')))}.txt"
    with open(log, "w") as out:
        result = subprocess.run(args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                timeout=600)
    result.stdout = log.read_text()
    return result


def test_cluster_ray_joins_the_head_running_on_this_node(head, tmp_path):
    result = run([sys.executable, "-m", "jobs.extract", "cluster=ray", f"store={tmp_path / 'joined'}", *JOB],
                 tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "joining the Ray cluster already running on this node" in result.stdout
    assert "Traceback" not in result.stdout
    assert complete(tmp_path / "joined")


def test_submit_script_runs_the_job_with_this_environment_and_the_token(head, tmp_path):
    result = run(["bash", "scripts/submit_ray.sh", f"store={tmp_path / 'submitted'}", *JOB], tmp_path,
                 RAY_ADDRESS=head, PATH="/usr/bin:/bin")  # no venv on PATH: the script finds its own Ray
    assert result.returncode == 0, result.stdout[-3000:]
    assert "succeeded" in result.stdout
    assert complete(tmp_path / "submitted")


def test_slurm_template_runs_on_one_node(tmp_path):
    shims = tmp_path / "bin"
    shims.mkdir()
    for name, text in (("scontrol", SCONTROL), ("srun", SRUN)):
        (shims / name).write_text(text)
        (shims / name).chmod(0o755)
    store = tmp_path / "slurm"
    env = {"PATH": f"{shims}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": "1",
           "SLURM_CPUS_PER_TASK": "2", "STORE": str(store), "RAY_PORT": str(free_port()),
           "VENV": str(Path(sys.executable).parent.parent)}
    try:
        dry = run(["bash", "scripts/slurm/ray_extract.sbatch", *JOB], tmp_path, DRY_RUN="1", **env)
        assert dry.returncode == 0, dry.stdout
        assert "+ srun --nodes=1 --ntasks=1 -w localhost" in dry.stdout and "embwalk extract cluster=ray" in dry.stdout
        assert not store.exists()
        result = run(["bash", "scripts/slurm/ray_extract.sbatch", *JOB], tmp_path, **env)
        assert result.returncode == 0, result.stdout[-3000:]
        assert complete(store)
        ray_stop()  # the allocation ends (Slurm stops its steps); the job is resubmitted
        again = run(["bash", "scripts/slurm/ray_extract.sbatch", *JOB], tmp_path, **env)
        assert again.returncode == 0, again.stdout[-3000:]
        assert "1 of 1 shards already committed" in again.stdout and "this run:" not in again.stdout
    finally:
        ray_stop()
