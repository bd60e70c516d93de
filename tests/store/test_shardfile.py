"""Shard files written directly read back through zarr exactly, and any damage to one is found."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import zarr

from embwalk.store.shardfile import check_shard_file, index_bytes, supports_direct_write, write_shard_file

CRC = [zarr.codecs.Crc32cCodec()]  # format 2: every chunk ends with its checksum


def _write(path: Path, data: np.ndarray, chunk_rows: int, shard_rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        write_shard_file(f, data, chunk_rows, shard_rows)


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_direct_shard_files_read_back_through_zarr(tmp_path, dtype):
    rng = np.random.default_rng(0)
    resid = zarr.create_array(tmp_path / "r", shape=(20, 3, 5), chunks=(4, 1, 5), shards=(8, 3, 5),
                              dtype=dtype, compressors=CRC, fill_value=0)
    final = zarr.create_array(tmp_path / "f", shape=(20, 5), chunks=(4, 5), shards=(8, 5),
                              dtype=dtype, compressors=CRC, fill_value=0)
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
                            dtype="float16", compressors=[zarr.codecs.ZstdCodec(level=1), *CRC])
    assert not supports_direct_write(arr)
    bare = zarr.create_array(tmp_path / "b", shape=(8, 2, 4), chunks=(4, 1, 4), shards=(8, 2, 4),
                             dtype="float16", compressors=None)
    assert not supports_direct_write(bare)  # no chunk checksums: not what a format-2 store holds


def test_rows_must_fill_whole_chunks():
    out = io.BytesIO()
    with pytest.raises(ValueError, match="whole chunks"):
        write_shard_file(out, np.zeros((3, 6, 5), dtype="float16"), 4, 8)
    assert out.getvalue() == b""  # checked before a byte is written


def _check(path: Path, n_chunks: int, full: bool) -> str | None:
    with open(path, "rb") as f:
        return check_shard_file(f, path.stat().st_size, n_chunks, full)


@pytest.mark.parametrize("compressed", [False, True])  # written by embwalk directly / by zarr itself
def test_damage_to_a_shard_file_is_found_and_zarr_refuses_it(tmp_path, compressed):
    codecs = [zarr.codecs.ZstdCodec(level=1), *CRC] if compressed else CRC
    arr = zarr.create_array(tmp_path / "r", shape=(8, 3, 5), chunks=(4, 1, 5), shards=(8, 3, 5),
                            dtype="float16", compressors=codecs, fill_value=0)
    data = np.random.default_rng(1).standard_normal((8, 3, 5)).astype("float16")
    path = tmp_path / "r" / arr.metadata.encode_chunk_key((0, 0, 0))
    if compressed:
        arr[:] = data
    else:
        _write(path, np.ascontiguousarray(data.transpose(1, 0, 2)), 4, 8)
    n_chunks = 6
    assert _check(path, n_chunks, full=True) is None and _check(path, n_chunks, full=False) is None
    good = path.read_bytes()

    damaged = bytearray(good)
    damaged[10] ^= 0x40  # inside the first chunk's bytes: only the full check reads them
    path.write_bytes(bytes(damaged))
    assert _check(path, n_chunks, full=False) is None
    assert "checksum mismatch in chunk" in _check(path, n_chunks, full=True)
    with pytest.raises(ValueError, match="checksum"):
        zarr.open_array(tmp_path / "r")[:]

    damaged = bytearray(good)
    damaged[-index_bytes(n_chunks) + 3] ^= 0x01  # the index: the quick check reads it
    path.write_bytes(bytes(damaged))
    assert _check(path, n_chunks, full=False) == "shard index checksum mismatch"

    path.write_bytes(good[: len(good) // 2])  # truncated: the index is gone
    assert _check(path, n_chunks, full=False) is not None
    path.write_bytes(good[:10])
    assert "shorter than its index" in _check(path, n_chunks, full=False)
