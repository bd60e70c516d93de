"""The stats job's Ray route (``cluster.kind=ray``): shards computed by Ray tasks in worker processes
merge to the same tables as the local route, and a rerun skips shards whose partials exist."""

from __future__ import annotations

import shutil

import pytest
import ray

import embwalk.stats.job as job_module
from embwalk.executors.config import ClusterConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from embwalk.stats.partials import shard_dir
from embwalk.store.reader import Store

from . import store_refs as R
from .helpers import assert_same_table

OPTIONS = StatsOptions(self_sim_top_k=6)  # every family


@pytest.fixture
def ray_started_by_the_route():
    """The route starts its own local Ray instance (as the job does); it is shut down afterwards."""
    assert not ray.is_initialized(), "another test left Ray running"
    yield
    ray.shutdown()


def test_ray_route_equals_the_local_route_and_resumes(pack_store, copy_store, tiny_llama, tmp_path, monkeypatch,
                                                      ray_started_by_the_route):
    local = copy_store(pack_store)
    compute_store_stats(local, OPTIONS, ClusterConfig(workers=1, progress=False), loaded=tiny_llama)
    store = tmp_path / "ray"
    shutil.copytree(pack_store, store)

    def not_here(*args, **kwargs):
        raise AssertionError("a shard was computed in the driver, not by a Ray worker")

    # Ray tasks import embwalk.stats.job afresh in their worker processes; the driver's copy must stay unused
    monkeypatch.setattr(job_module, "shard_stats", not_here)
    said: list[str] = []
    cluster = ClusterConfig(kind="ray", workers=2, threads=1, progress=False)
    summary = compute_store_stats(store, OPTIONS, cluster, loaded=tiny_llama, report=said.append)
    assert ray.is_initialized()
    n_shards = len(Store(store).committed)
    assert summary["timings"]["shards"] == n_shards >= 3 and summary["timings"]["workers"] == 2
    assert summary["timings"]["cluster"] == "ray"
    assert summary["shards"]["with_stats"] == n_shards and not said

    names = sorted(p.stem for p in (local / "stats").glob("*.parquet"))
    assert names == sorted(p.stem for p in (store / "stats").glob("*.parquet"))
    assert {"encoding", "logit_lens", "decoding", "decoding_docs", "attention", "geometry"} <= set(names)

    def assert_same_as_local() -> None:
        for name in names:
            assert_same_table(R.stats_table(local, name), R.stats_table(store, name), name)

    assert_same_as_local()

    # resume: a rerun computes nothing; without one shard's partials, only that shard
    again = compute_store_stats(store, OPTIONS, cluster, loaded=tiny_llama, report=said.append)
    assert again["timings"]["shards"] == 0
    assert said == [f"{n_shards} shard(s) already have statistics for this config (stats.resume=false recomputes them)"]
    shutil.rmtree(shard_dir(store, 1))
    again = compute_store_stats(store, OPTIONS, cluster, loaded=tiny_llama)
    start, stop = Store(store).manifest["shards"][1]["rows"]
    assert again["timings"]["shards"] == 1 and again["timings"]["tokens"] == stop - start
    assert_same_as_local()
