"""In-pass statistics equal the two-step route on the same corpus.

The extraction runs with ``capture.stats`` set: every sequence whose first token is in
the shard goes through ``WalkStats.update_sequence`` straight from the capture buffers
(already in the store dtype), and the shard's partials are written before its commit.
The two-step route then recomputes every shard from the stored arrays.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.from_store import has_activations
from embwalk.stats.job import compute_store_stats
from embwalk.stats.partials import read_shard_meta
from embwalk.store.reader import Store

from .stores import build_store, tiny


def read_tables(root) -> dict:
    return {p.stem: pq.read_table(p) for p in sorted((root / "stats").glob("*.parquet"))}


@pytest.mark.parametrize("fast, extra", [(False, {}), (True, {}),
                                         (False, {"exclude_positions": [0, 2], "exclude_massive": True})],
                         ids=["float64-moments", "fast-moments", "exclusions"])
def test_in_pass_equals_two_step(tmp_path, smollm2, monkeypatch, fast, extra):
    loaded = tiny("llama", smollm2.tokenizer)
    stats = {"self_sim_top_k": 6, "fast_moments": fast, "resume": False, **extra}
    opts = StatsOptions(**stats)
    # one torch thread in both routes (the stats job's default): a float32 reduction split
    # over another number of threads rounds differently in the last bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = build_store(tmp_path, loaded, stats=stats)
    finally:
        torch.set_num_threads(threads)
    n_shards = len(Store(store).committed)
    assert n_shards >= 3 and has_activations(Store(store))
    assert all(read_shard_meta(store, i)["route"] == "in-pass" for i in range(n_shards))
    in_pass = read_tables(store)  # merged by the extraction itself
    compute_store_stats(store, opts, ClusterConfig(workers=1, progress=False), loaded=loaded)
    assert all(read_shard_meta(store, i)["route"] == "two-step" for i in range(n_shards))
    two_step = read_tables(store)
    assert in_pass.keys() == two_step.keys() and len(in_pass) >= 12
    for name, a in in_pass.items():
        b = two_step[name]
        assert a.schema == b.schema and a.num_rows == b.num_rows, name
        rtol = 1e-6 if fast and name.startswith("geometry") else 1e-9
        for col in a.column_names:
            x, y = a[col].to_numpy(zero_copy_only=False), b[col].to_numpy(zero_copy_only=False)
            if x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, err_msg=f"{name}.{col}")
            else:
                assert (x == y).all(), f"{name}.{col}"  # counts and histograms: exactly equal


def test_stats_only_stores_no_arrays_and_the_same_statistics(tmp_path, smollm2):
    loaded = tiny("llama", smollm2.tokenizer)
    stats = {"self_sim_top_k": 6, "resume": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_arrays = build_store(tmp_path / "a", loaded, stats=stats)
        stats_only = build_store(tmp_path / "b", loaded, stats=stats, store_arrays=False)
    finally:
        torch.set_num_threads(threads)
    assert not (stats_only / "activations.zarr").exists() and not (stats_only / "attention.zarr").exists()
    assert Store(stats_only).manifest["arrays"] == {} and not has_activations(Store(stats_only))
    assert len(Store(stats_only).tokens()) == Store(stats_only).manifest["n_tokens"]
    a, b = read_tables(with_arrays), read_tables(stats_only)
    assert a.keys() == b.keys() and len(a) >= 12
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.mark.parametrize(
    "sites, stats, fragments",
    [
        (["resid_pre.0", "resid_post"], {"families": ["encoding", "attention"]},
         ["attention needs attention patterns", "add attn_pattern to capture.sites"]),
        (["resid_pre.0", "resid_post"], {"families": ["decoding"]},
         ["decoding needs final", "add final to capture.sites"]),
        (["resid_post.1"], {"families": ["encoding"]}, ["encoding needs resid with >= 2 layers"]),
        (["final"], {"families": ["decoding"], "exclude_massive": True},
         ["exclude_massive needs resid", "add resid_pre.0, resid_post to capture.sites"]),
    ],
    ids=["attention-without-patterns", "decoding-without-final", "encoding-one-layer", "massive-without-resid"],
)
def test_a_family_the_capture_cannot_feed_is_refused_before_any_work(tmp_path, smollm2, sites, stats, fragments):
    loaded = tiny("llama", smollm2.tokenizer)
    with pytest.raises(EmbwalkError) as info:
        build_store(tmp_path, loaded, sites=sites, stats=stats, store_arrays=False)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert not list(tmp_path.rglob("commits/*")) and not list(tmp_path.rglob("tokens/*.parquet"))
