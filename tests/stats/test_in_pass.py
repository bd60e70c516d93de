"""In-pass statistics equal the two-step route on the same corpus.

The extraction is run with its own ShardRunner, tapped the way the in-pass route is
wired: every sequence whose first token is in the shard goes through
``WalkStats.update_sequence`` straight from the capture buffers (already rounded to the
store dtype), in the runner's batch order, and ``write_shard_partials`` writes the shard.
The two-step route then recomputes every shard from the stored arrays.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import pipeline.executors.local as local
from pipeline.extract import ShardRunner
from pipeline.stats.partials import merge_store_stats, read_shard_meta, write_shard_partials
from pipeline.stats.run import StatsCluster, StatsOptions, compute_store_stats
from pipeline.stats.sequence import ModelHead, WalkStats
from pipeline.stats.store_stats import has_activations
from pipeline.store.reader import Store

from .stores import build_store, tiny


class InPassRunner(ShardRunner):
    """A ShardRunner that also feeds WalkStats from the capture buffers (test wiring)."""

    options: StatsOptions = StatsOptions()  # set by the test

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # self-similarity types from the planned corpus; the two-step route takes them from
        # the token table: the same ids once every shard is committed
        self.config = self.options.stats_config(self.corpus.token_ids)
        self.head = ModelHead.from_loaded(self.loaded)
        self.taps: list[dict[str, torch.Tensor]] = []
        run = self.capturer.run

        def tapped(ids, mask=None, out=None):
            got = run(ids, mask, out)
            self.taps.append({k: v.clone() for k, v in got.items()})  # buffers are reused
            return got

        self.capturer.run = tapped

    def _compute(self, shard, on_tokens):
        self.taps = []
        batches = self._batches(shard)
        future = super()._compute(shard, on_tokens)
        ws = WalkStats.for_layout(self.config, self.head, shard.index, self.capture)
        p0, p1 = shard.pattern_seqs
        for batch, got in zip(batches, self.taps, strict=True):
            for j, s in enumerate(batch):
                if not p0 <= s < p1:
                    continue  # a sequence's statistics belong to the shard holding its first token
                a, b = int(self.offsets[s]), int(self.offsets[s + 1])
                n = b - a
                ws.update_sequence(
                    got["resid"][j, :n].to(self.dtype),  # the values the store holds
                    got["final"][j, :n].to(self.dtype),
                    torch.from_numpy(self.corpus.token_ids[a:b].astype(np.int64)),
                    torch.from_numpy(self.corpus.doc_ids[a:b].astype(np.int64)),
                    got["pattern"][j, :, :, :n, :n].to(self.dtype),
                    seq_id=s,
                )
        future.add_done_callback(
            lambda f: f.exception() is None and write_shard_partials(self.writer.root, shard.index, ws,
                                                                     {"route": "in-pass"}))
        return future


def read_tables(root) -> dict:
    return {p.stem: pq.read_table(p) for p in sorted((root / "stats").glob("*.parquet"))}


@pytest.mark.parametrize("fast", [False, True], ids=["float64-moments", "fast-moments"])
def test_in_pass_equals_two_step(tmp_path, smollm2, monkeypatch, fast):
    loaded = tiny("llama", smollm2.tokenizer)
    opts = StatsOptions(self_sim_top_k=6, fast_moments=fast, resume=False)
    InPassRunner.options = opts
    monkeypatch.setattr(local, "ShardRunner", InPassRunner)
    # one torch thread in both routes (the stats job's default): a float32 reduction split
    # over another number of threads rounds differently in the last bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = build_store(tmp_path, loaded)
    finally:
        torch.set_num_threads(threads)
    n_shards = len(Store(store).committed)
    assert n_shards >= 3 and has_activations(Store(store))
    assert all(read_shard_meta(store, i)["route"] == "in-pass" for i in range(n_shards))
    merge_store_stats(store)
    in_pass = read_tables(store)
    compute_store_stats(store, opts, StatsCluster(workers=1, progress=False), loaded=loaded)
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
