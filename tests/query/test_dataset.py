"""The dataset: every row exactly once per epoch across workers and ranks, seeded, resumable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from embwalk.errors import SiteError
from embwalk.query import QueryError, VectorDataset, open_store
from tests.query.conftest import reference_vectors

SITE = "resid_post.1"


def _epoch(store, seed=0, epoch=0, workers=2, world=2, state=None, **options):
    """Batches of every rank, as (rows, vectors) pairs, read through real DataLoader workers."""
    per_rank = []
    for rank in range(world):
        ds = VectorDataset(store, SITE, batch_size=7, seed=seed, rank=rank, world_size=world, with_rows=True,
                           buffer_rows=20, block_rows=8, **options)
        ds.set_epoch(epoch)
        if state is not None:
            ds.load_state_dict(state[rank])
        loader = DataLoader(ds, batch_size=None, num_workers=workers)
        per_rank.append([(r.numpy(), v.numpy()) for r, v in loader])
    return per_rank


def _rows(batches) -> list[int]:
    return [int(r) for rows, _ in batches for r in rows]


@pytest.fixture(scope="module")
def store(packed):
    return open_store(packed)


def test_every_row_exactly_once_across_workers_and_ranks(store, packed):
    per_rank = _epoch(store)
    seen = _rows(per_rank[0]) + _rows(per_rank[1])
    assert sorted(seen) == list(range(store.n_tokens))  # 155 rows, 5 shards
    assert not set(_rows(per_rank[0])) & set(_rows(per_rank[1]))
    for batches in per_rank:
        assert all(len(r) == 7 for r, _ in batches[:-1])
        for rows, vectors in batches:
            np.testing.assert_array_equal(vectors, reference_vectors(packed, "resid", rows, 2))
    assert seen != sorted(seen)  # shuffled ...
    shards = np.array(_rows(per_rank[0])[:20]) // store.manifest["shard_tokens"]
    assert len(set(shards.tolist())) > 1  # ... across shards, not within one


def test_order_is_determined_by_the_seed(store):
    first = [_rows(b) for b in _epoch(store, seed=1)]
    assert [_rows(b) for b in _epoch(store, seed=1)] == first
    assert [_rows(b) for b in _epoch(store, seed=2)] != first
    assert [_rows(b) for b in _epoch(store, seed=1, epoch=1)] != first


@pytest.mark.parametrize("consumed", [1, 4, 7, 9, 11])
def test_resume_continues_without_repeats(store, consumed):
    full = _epoch(store, seed=5)
    counts = [len(b) for b in full]  # 78 and 77 rows: 12 and 11 batches, split unevenly over 2 workers
    state = []
    for rank in range(2):
        ds = VectorDataset(store, SITE, batch_size=7, seed=5, rank=rank, world_size=2, buffer_rows=20, block_rows=8)
        state.append(ds.state_dict(batches=min(consumed, counts[rank])))
    rest = _epoch(store, seed=5, state=state)
    for rank in range(2):
        done = min(consumed, counts[rank])
        assert _rows(rest[rank]) == _rows(full[rank][done:])
        assert not set(_rows(full[rank][:done])) & set(_rows(rest[rank]))
        for (_, resumed), (_, original) in zip(rest[rank], full[rank][done:], strict=True):
            np.testing.assert_array_equal(resumed, original)


@pytest.mark.parametrize("batch_size, buffer_rows, block_rows", [(7, 20, 8), (8, 16, 8), (5, 0, 8), (16, 64, 16)])
def test_resume_at_every_batch(store, batch_size, buffer_rows, block_rows):
    def make():
        return VectorDataset(store, SITE, batch_size=batch_size, seed=2, buffer_rows=buffer_rows,
                             block_rows=block_rows, with_rows=True)

    full = [(r.numpy(), v.numpy()) for r, v in make()]
    for k in range(len(full) + 1):
        ds = make()
        ds.load_state_dict(ds.state_dict(batches=k))
        rest = [(r.numpy(), v.numpy()) for r, v in ds]
        assert len(rest) == len(full) - k
        for (r1, v1), (r2, v2) in zip(rest, full[k:], strict=True):
            np.testing.assert_array_equal(r1, r2)
            np.testing.assert_array_equal(v1, v2)


def test_resume_in_process_and_endless_epochs(store):
    ds = VectorDataset(store, SITE, batch_size=10, seed=3, with_rows=True)
    assert len(ds) == 16
    stream = ds.endless()
    first = [next(stream)[0].numpy() for _ in range(20)]  # 16 batches of epoch 0, 4 of epoch 1
    assert sorted(np.concatenate(first[:16]).tolist()) == list(range(155))
    state = ds.state_dict()
    assert state["epoch"] == 1 and state["batches"] == 4
    again = VectorDataset(store, SITE, batch_size=10, seed=3, with_rows=True)
    again.load_state_dict(state)
    rest = [r.numpy() for r, _ in again]
    assert sorted(np.concatenate(first[16:] + rest).tolist()) == list(range(155))


def test_persistent_workers_follow_set_epoch(store):
    ds = VectorDataset(store, SITE, batch_size=16, seed=4, with_rows=True)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True)
    orders = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        orders.append(torch.cat([r for r, _ in loader]).tolist())
        assert sorted(orders[-1]) == list(range(155))
    assert orders[0] != orders[1]
    fresh = VectorDataset(store, SITE, batch_size=16, seed=4, with_rows=True)
    fresh.set_epoch(1)
    assert torch.cat([r for r, _ in DataLoader(fresh, batch_size=None, num_workers=2)]).tolist() == orders[1]


def test_drop_last_evens_out_ranks(store):
    per_rank = _epoch(store, workers=2, drop_last=True)
    assert len(per_rank[0]) == len(per_rank[1]) == 155 // 2 // 7
    assert all(len(r) == 7 for b in per_rank for r, _ in b)
    ds = VectorDataset(store, SITE, batch_size=7, rank=1, world_size=2, drop_last=True)
    assert len(ds) == 11


def test_unshuffled_order_and_dtype(store, packed):
    ds = VectorDataset(store, "final", batch_size=64, shuffle=False, dtype=torch.float32, with_rows=True)
    batches = list(ds)
    assert [len(r) for r, _ in batches] == [64, 64, 27]
    rows = torch.cat([r for r, _ in batches]).numpy()
    assert rows.tolist() == list(range(155))
    assert batches[0][1].dtype == torch.float32
    np.testing.assert_array_equal(torch.cat([v for _, v in batches]).numpy(),
                                  reference_vectors(packed, "final", rows, None).astype(np.float32))


def test_compressed_store_streams_through_zarr(documents):
    ds = open_store(documents).dataset("resid_post.1", batch_size=16, with_rows=True, rank=0, world_size=1)
    rows = torch.cat([r for r, _ in DataLoader(ds, batch_size=None, num_workers=2)]).numpy()
    assert sorted(rows.tolist()) == list(range(165))


def test_bad_dataset_options(store):
    with pytest.raises(SiteError, match="streams one site"):
        VectorDataset(store, "resid_post")
    with pytest.raises(SiteError, match="is attention"):
        VectorDataset(store, "attn_pattern.0")
    with pytest.raises(QueryError, match="batch_size must be a positive integer"):
        VectorDataset(store, SITE, batch_size=0)
    with pytest.raises(QueryError, match="rank 2 is outside world_size 2"):
        len(VectorDataset(store, SITE, rank=2, world_size=2))
    ds = VectorDataset(store, SITE, seed=1)
    with pytest.raises(QueryError, match="cannot resume: the saved position has seed=2"):
        ds.load_state_dict({**ds.state_dict(3), "seed": 2})
