"""Shard files written directly read back through zarr exactly."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipeline.store.shardfile import supports_direct_write, write_shard_file


def _write(path: Path, data: np.ndarray, chunk_rows: int, shard_rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write_shard_file(f, data, chunk_rows, shard_rows)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_direct_shard_files_read_back_through_zarr(tmp_path, dtype):
    rng = np.random.default_rng(0)
    resid = zarr.create_array(tmp_path / "r", shape=(20, 3, 5), chunks=(4, 1, 5), shards=(8, 3, 5),
                              dtype=dtype, compressors=None, fill_value=0)
    final = zarr.create_array(tmp_path / "f", shape=(20, 5), chunks=(4, 5), shards=(8, 5),
                              dtype=dtype, compressors=None, fill_value=0)
    assert supports_direct_write(resid) and supports_direct_write(final)
    want_resid = rng.standard_normal((20, 3, 5)).astype(dtype)
    want_final = rng.standard_normal((20, 5)).astype(dtype)
    for k, (r0, r1) in enumerate([(0, 8), (8, 16), (16, 20)]):  # the last shard is partial
        n, pad = r1 - r0, -(-(r1 - r0) // 4) * 4
        layer_major = np.zeros((3, pad, 5), dtype=dtype)
        layer_major[:, :n] = want_resid[r0:r1].transpose(1, 0, 2)
        _write(tmp_path / "r" / resid.metadata.encode_chunk_key((k, 0, 0)), layer_major, 4, 8)
        rows = np.zeros((pad, 5), dtype=dtype)
        rows[:n] = want_final[r0:r1]
        _write(tmp_path / "f" / final.metadata.encode_chunk_key((k, 0)), rows, 4, 8)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "r")[:], want_resid)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "r")[3:17, 1], want_resid[3:17, 1])
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "f")[:], want_final)


def test_compressed_arrays_use_zarr_itself(tmp_path):
    arr = zarr.create_array(tmp_path / "z", shape=(8, 2, 4), chunks=(4, 1, 4), shards=(8, 2, 4),
                            dtype="float16", compressors=[zarr.codecs.ZstdCodec(level=1)])
    assert not supports_direct_write(arr)


def test_rows_must_fill_whole_chunks():
    out = io.BytesIO()
    with pytest.raises(ValueError, match="whole chunks"):
        write_shard_file(out, np.zeros((3, 6, 5), dtype="float16"), 4, 8)
    assert out.getvalue() == b""  # checked before a byte is written
