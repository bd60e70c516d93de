"""Uncompressed Zarr v3 shard files: written in one sequential pass, checked without Zarr.

Zarr's own writer assembles a shard chunk by chunk in Python (about 0.4 s
for a 4096-token SmolLM2 shard, a tenth of the shard's compute on a 2-core
machine). For uncompressed arrays the shard format is simple enough to write
directly (Zarr v3 ``sharding_indexed``, index at the end):

    chunk bytes + CRC-32C of them     one per inner chunk (inner codecs bytes, crc32c)
    ...
    index: (offset, length) per chunk in C order of the chunk grid
    CRC-32C of the index              (index codecs bytes, crc32c)

Chunks may sit in any order in the file, so a layer-major buffer [layer,
token, d_model], whose (token-block, layer) chunks are contiguous slices, is
written as it lies in memory, each slice followed by its checksum: no copy.
Any Zarr v3 reader checks each chunk's CRC-32C when it decodes it, so a flipped
byte is an error, never a value. Reading the file back with zarr is what
tests check.

``check_shard_file`` verifies any shard file with that index and checksum
layout, compressed or not, without Zarr: the index alone (cheap: the file's
last bytes), or every chunk's checksum too.

The bytes go to any binary file object: the writer hands a temporary file
(then fsynced and renamed) or an in-memory buffer (then put to an object
store in one call), see pipeline/store/fs.py.
"""

from __future__ import annotations

from typing import BinaryIO

import google_crc32c
import numpy as np

EMPTY = np.uint64(2**64 - 1)  # (offset, length) of a chunk that is not stored
CRC_BYTES = 4


def supports_direct_write(arr) -> bool:
    """An uncompressed, sharded array whose inner chunks hold whole rows of every trailing axis
    (per-token arrays [token, (layer,) d_model]; attention [seq, layer, head, query, key])."""
    sharding = _sharding(arr)
    if sharding is None:
        return False
    inner = [type(c).__name__ for c in sharding.codecs]
    return (
        inner == ["BytesCodec", "Crc32cCodec"]
        and (
            tuple(sharding.chunk_shape[1:]) == tuple(arr.shape[1:])  # [token, d_model]
            if arr.ndim == 2  # else one layer per chunk, whole along every later axis
            else sharding.chunk_shape[1] == 1 and tuple(sharding.chunk_shape[2:]) == tuple(arr.shape[2:])
        )
    )


def index_bytes(n_chunks: int) -> int:
    """Size of a shard's index (with its checksum), the last bytes of the file."""
    return n_chunks * 16 + CRC_BYTES


def write_shard_file(out: BinaryIO, data: np.ndarray, chunk_rows: int, shard_rows: int) -> int:
    """Write ``data`` as a whole shard file to the binary file object ``out``; returns its size.

    ``data`` is C-contiguous, little-endian, and either [layer, rows, d] (a
    per-token array with a layer axis, layer-major) or [rows, d]; ``rows`` is
    a multiple of ``chunk_rows`` and at most ``shard_rows``; chunks past it
    are recorded as absent (the last shard of an array).
    """
    tail = _index(data, chunk_rows, shard_rows)  # checks the shape before a byte is written
    flat = data.reshape(-1).view(np.uint8)
    flat.flags.writeable = False  # google_crc32c reads read-only buffers only
    step = chunk_rows * data.shape[-1] * data.itemsize
    for start in range(0, flat.size, step):
        chunk = flat[start : start + step]
        out.write(chunk.data)
        out.write(_crc(chunk))
    out.write(tail)
    return flat.size + (flat.size // step) * CRC_BYTES + len(tail)


def check_shard_file(f: BinaryIO, size: int, n_chunks: int, full: bool = False) -> str | None:
    """What is wrong with the shard file open as ``f`` (``size`` bytes), or None if it checks out.

    Reads the index (the file's last bytes) and checks its CRC-32C and that every
    chunk it points to lies inside the file; ``full`` also reads every stored
    chunk and checks its CRC-32C, one chunk at a time (memory stays one chunk).
    """
    need = index_bytes(n_chunks)
    if size < need:
        return f"{size} bytes, shorter than its index ({need} bytes)"
    tail = _read(f, size - need, need)
    if len(tail) != need:
        return f"file ends before its index ({len(tail)} of {need} bytes)"
    raw, stored = tail[:-CRC_BYTES], tail[-CRC_BYTES:]
    if _crc(raw) != stored:
        return "shard index checksum mismatch"
    index = np.frombuffer(raw, dtype="<u8").reshape(n_chunks, 2)
    present = np.flatnonzero(index[:, 0] != EMPTY)
    offsets, lengths = index[present, 0], index[present, 1]
    if (lengths < CRC_BYTES).any() or (offsets + lengths > size - need).any():
        return "shard index points outside the file"
    if not full:
        return None
    for chunk, offset, length in zip(present.tolist(), offsets.tolist(), lengths.tolist(), strict=True):
        stored_chunk = _read(f, offset, length)
        if len(stored_chunk) != length or _crc(stored_chunk[:-CRC_BYTES]) != stored_chunk[-CRC_BYTES:]:
            return f"checksum mismatch in chunk {chunk} of the shard (bytes {offset}..{offset + length})"
    return None


def _read(f: BinaryIO, offset: int, n: int) -> bytes:
    f.seek(offset)
    return f.read(n)


def _sharding(arr):
    codecs = arr.metadata.codecs
    if len(codecs) != 1 or type(codecs[0]).__name__ != "ShardingCodec":
        return None
    sharding = codecs[0]
    index = [type(c).__name__ for c in sharding.index_codecs]
    if index != ["BytesCodec", "Crc32cCodec"] or sharding.index_location.value != "end":
        return None
    return sharding


def _crc(data: np.ndarray | bytes) -> bytes:
    return np.uint32(google_crc32c.value(data)).astype("<u4").tobytes()


def _index(data: np.ndarray, chunk_rows: int, shard_rows: int) -> bytes:
    """The shard index, (offset, length) per chunk in C order of the chunk grid, and its CRC-32C."""
    if not data.flags.c_contiguous or data.dtype.byteorder == ">":
        raise ValueError("shard data must be C-contiguous and little-endian")
    layered = data.ndim == 3
    n_layers, rows = (data.shape[0], data.shape[1]) if layered else (1, data.shape[0])
    if rows % chunk_rows or rows > shard_rows:
        raise ValueError(f"{rows} rows do not fill whole chunks of {chunk_rows} within {shard_rows}")
    stored = chunk_rows * data.shape[-1] * data.itemsize + CRC_BYTES
    blocks = rows // chunk_rows
    index = np.full((shard_rows // chunk_rows, n_layers, 2), EMPTY, dtype="<u8")
    block, layer = np.meshgrid(np.arange(blocks), np.arange(n_layers), indexing="ij")
    index[:blocks, :, 0] = (layer * blocks + block) * stored  # layer-major position of chunk (block, layer)
    index[:blocks, :, 1] = stored
    if layered:
        index = index[:, :, None, :]  # the grid's d_model axis: one chunk
    raw_index = index.tobytes()
    return raw_index + _crc(raw_index)
