"""Raw byte reads of sharded Zarr arrays agree with Zarr, including chunks never written."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from embwalk.errors import StoreError
from embwalk.query.direct import DirectReader


def _array(tmp_path, name, shape, chunks, shards, compressors=None, dtype="float16"):
    return zarr.create_array(
        tmp_path / name, shape=shape, chunks=chunks, shards=shards, dtype=dtype,
        compressors=compressors, fill_value=0,
    )


@pytest.fixture
def resid(tmp_path):
    arr = _array(tmp_path, "resid", (100, 3, 6), (4, 1, 6), (20, 3, 6))
    data = np.random.default_rng(0).standard_normal((100, 3, 6)).astype(np.float16)
    data[20:40] = 0  # a whole shard of fill values: zarr writes no chunk at all
    data[44:48, 1] = 0  # one inner chunk of fill values: missing from its shard's index
    arr[:] = data
    return arr, tmp_path / "resid", data


def test_random_rows_match_zarr(resid):
    arr, path, data = resid
    reader = DirectReader.for_array(arr, path)
    assert reader is not None
    rng = np.random.default_rng(1)
    for n in (0, 1, 7, 60, 100):
        rows = np.sort(rng.choice(100, n, replace=False))
        for layer in range(3):
            out = np.full((n, 6), np.nan, dtype=np.float16)
            reader.read_sorted(rows, layer, out)
            np.testing.assert_array_equal(out, data[rows, layer])


def test_ranges_and_sparse_rows(resid):
    arr, path, data = resid
    reader = DirectReader.for_array(arr, path)
    reader.gap_rows = 1  # force gaps inside a chunk to split runs
    out = np.empty((3, 6), dtype=np.float16)
    reader.read_sorted(np.array([0, 3, 99]), 2, out)
    np.testing.assert_array_equal(out, data[[0, 3, 99], 2])
    out = np.empty((57, 6), dtype=np.float16)
    reader.read_range(13, 70, 0, out)
    np.testing.assert_array_equal(out, data[13:70, 0])


def test_two_dimensional_arrays_and_partial_last_shard(tmp_path):
    arr = _array(tmp_path, "final", (50, 5), (4, 5), (20, 5), dtype="float32")
    data = np.arange(250, dtype=np.float32).reshape(50, 5)
    arr[:] = data
    reader = DirectReader.for_array(arr, tmp_path / "final")
    out = np.empty((4, 5), dtype=np.float32)
    reader.read_sorted(np.array([0, 21, 47, 49]), None, out)
    np.testing.assert_array_equal(out, data[[0, 21, 47, 49]])


def test_layouts_it_cannot_address_are_left_to_zarr(tmp_path):
    zstd = _array(tmp_path, "z", (40, 2, 4), (4, 1, 4), (20, 2, 4), compressors=[zarr.codecs.ZstdCodec()])
    assert DirectReader.for_array(zstd, tmp_path / "z") is None
    two_layers = _array(tmp_path, "l", (40, 2, 4), (4, 2, 4), (20, 2, 4))
    assert DirectReader.for_array(two_layers, tmp_path / "l") is None
    plain = zarr.create_array(tmp_path / "p", shape=(40, 4), chunks=(4, 4), dtype="float32")
    assert DirectReader.for_array(plain, tmp_path / "p") is None
    sharded = _array(tmp_path, "s", (40, 4), (4, 4), (20, 4))
    assert DirectReader.for_array(sharded, None) is None  # not on a local disk


def test_truncated_shard_file_is_an_error(resid):
    arr, path, _ = resid
    shard = path / "c" / "0" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[:10])
    reader = DirectReader.for_array(arr, path)
    with pytest.raises(StoreError, match="truncated"):
        reader.read_sorted(np.array([1]), 0, np.empty((1, 6), dtype=np.float16))
