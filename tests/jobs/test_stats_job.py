"""The stats and report jobs from the command line: a real store (MiniLM, loadable by name)
gets statistics and a report; bad input gives one line and exit status 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from embwalk.executors.config import ClusterConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from tests.jobs.test_extract_job import assert_user_error
from tests.stats.helpers import assert_same_table
from tests.stats.store_refs import stats_table
from tests.stats.stores import build_store

ROOT = Path(__file__).resolve().parents[2]


def job(name: str, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", f"jobs.{name}", *overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def minilm_store(tmp_path_factory, minilm) -> Path:
    """Extracted in-process with the real MiniLM, named in the manifest so the job can load it."""
    return build_store(tmp_path_factory.mktemp("job"), minilm, mode="document", seq_len=24, shard_tokens=16,
                       model_name="all-minilm-l6-v2")


def test_stats_then_report(minilm_store):
    result = job("stats", f"store={minilm_store}", "cluster.progress=false", "cluster.workers=1",
                 "stats.self_sim_top_k=5")
    assert result.returncode == 0, result.stderr
    assert f"statistics: {minilm_store}/stats" in result.stdout
    assert "skipped logit_lens: the model has no unembedding" in result.stdout
    assert "read" in result.stdout and "tokens/s" in result.stdout
    summary = json.loads((minilm_store / "stats" / "summary.json").read_text())
    assert set(summary["families"]) == {"encoding", "attention", "geometry"}
    assert summary["n_tokens"] == json.loads((minilm_store / "manifest.json").read_text())["n_tokens"]
    result = job("report", f"store={minilm_store}", "report.labels=false")
    assert result.returncode == 0, result.stderr
    assert f"report: {minilm_store}/report/index.html" in result.stdout
    assert (minilm_store / "report" / "position_kernels.png").is_file()


def test_cluster_ray_from_the_command_line(minilm_store, minilm, tmp_path):
    """``cluster=ray`` reaches the statistics: shards run as Ray tasks, merged as the local route merges them."""
    on_ray, local = tmp_path / "ray", tmp_path / "local"
    for copy in (on_ray, local):
        shutil.copytree(minilm_store, copy, ignore=shutil.ignore_patterns("stats", "report"))
    result = job("stats", f"store={on_ray}", "cluster=ray", "cluster.workers=2", "cluster.progress=false",
                 "stats.self_sim_top_k=5")
    assert result.returncode == 0, result.stderr
    assert "2 Ray worker(s)" in result.stdout
    compute_store_stats(local, StatsOptions(self_sim_top_k=5), ClusterConfig(workers=1, progress=False), loaded=minilm)
    names = sorted(p.stem for p in (local / "stats").glob("*.parquet"))
    assert names == sorted(p.stem for p in (on_ray / "stats").glob("*.parquet")) and "encoding" in names
    for name in names:
        assert_same_table(stats_table(on_ray, name), stats_table(local, name), name)


def test_bad_store_path_is_one_line(tmp_path):
    assert_user_error(job("stats", "store=/no/such/store"), "store not found: /no/such/store")
    assert_user_error(job("report", f"store={tmp_path}"), "not an embwalk store", str(tmp_path))
    # Statistics write with local file operations: a URL store fails up front, before anything is opened.
    assert_user_error(job("stats", "store=s3://bucket/store"), "statistics", "local or shared filesystem",
                      "not s3://bucket/store")


def test_missing_store_and_unknown_family(minilm_store):
    assert_user_error(job("stats"), "store=PATH")
    assert_user_error(job("stats", f"store={minilm_store}", "stats.families=[encoding,bogus]"), "bogus")
