"""Create (or resume) a store and write shards into it.

The writer allocates every array at its final size before any shard runs, then
each shard fills its own rows. A shard is committed, by an atomically written
marker with row counts and checksums, only after its array files and token
table are durable. Readers trust markers and nothing else, so a shard cut off
half-way is invisible and is rewritten whole on the next run.

Every file operation goes through a ``StoreFS`` (pipeline/store/fs.py): a local
directory (fsync + rename) or an fsspec URL (one put per file).
"""

from __future__ import annotations

import json
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.errors import StoreError
from pipeline.store import layout
from pipeline.store.durable import disk_errors
from pipeline.store.fs import StoreFS, open_fs
from pipeline.store.shardfile import supports_direct_write, write_shard_file

COMPRESSORS = ("none", "zstd")


def checksum(data: np.ndarray, previous: int = 0) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B"), previous)


class StoreWriter:
    def __init__(self, fs: StoreFS, manifest: dict):
        self.fs, self.manifest = fs, manifest
        self.root = fs.root  # a Path for local stores (the statistics code works on those only)
        self.arrays = {
            name: zarr.open_array(fs.zarr_store(spec["path"]), mode="r+")
            for name, spec in manifest["arrays"].items()
        }
        # Uncompressed, sharded arrays take the one-write path.
        self.direct = {
            name: arr.shape[0] > 0 and supports_direct_write(arr)
            for name, arr in self.arrays.items()
        }

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | Path, manifest: dict, specs: list[layout.ArraySpec], compressor: str = "none"
    ) -> StoreWriter:
        """Create the store, or resume it if it was written by the same job.

        ``manifest["identity"]`` holds everything that decides the data (model
        weights, tokenizer, corpus, capture, dtype, plan); resuming against a
        store whose identity differs is an error that names the differences.
        """
        fs = open_fs(path)
        if fs.is_file(layout.MANIFEST):
            old = read_manifest(fs)
            _check_same_job(fs, old["identity"], manifest["identity"])
            return cls(fs, old)
        _check_creatable(fs)
        with disk_errors(fs.location):
            _estimate_fits(fs, specs)
            for sub in (layout.TOKENS_DIR, layout.COMMITS_DIR, layout.STATS_DIR):
                fs.makedirs(sub)
            for group in layout.GROUPS.values():
                if any(spec.path.startswith(group) for spec in specs):
                    zarr.open_group(fs.zarr_store(group), mode="w", zarr_format=3)
            for spec in specs:
                _create_array(fs, spec, compressor)
        manifest = dict(manifest)
        manifest["arrays"] = {
            spec.name: {
                "path": spec.path, "shape": list(spec.shape), "dims": list(spec.dims),
                "chunks": list(spec.chunks), "shards": list(spec.shards), "dtype": spec.dtype,
                **spec.attributes,
            }
            for spec in specs
        }
        write_json(fs, layout.MANIFEST, manifest)  # last: its presence means the layout is whole
        return cls(fs, manifest)

    @classmethod
    def attach(cls, path: str | Path) -> StoreWriter:
        """A writer for a store the driver already created (a Ray worker's: it gets only the path or URL)."""
        fs = open_fs(path)
        return cls(fs, read_manifest(fs))

    # -- writing -------------------------------------------------------------------------

    def committed(self) -> set[int]:
        return committed_shards(self.fs)

    def write_patterns(self, seq0: int, patterns: np.ndarray) -> None:
        """Write whole sequences' attention, [seq, layer, head, query, key]: each sequence is its own Zarr shard."""
        keys = [(s, 0, 0, 0, 0) for s in range(seq0, seq0 + len(patterns))]
        with disk_errors(self._dir("pattern")):
            if not self.direct["pattern"]:
                self.arrays["pattern"][seq0 : seq0 + len(patterns)] = patterns
                self._sync_chunks("pattern", keys)
                return
            for key, seq in zip(keys, patterns, strict=True):
                # One chunk per layer, in layer order: the layer-major case with one row per chunk.
                self._write_shard_file("pattern", key, seq.reshape(seq.shape[0], 1, -1), 1, 1)

    def write_shard(
        self, index: int, rows: tuple[int, int], arrays: dict[str, np.ndarray], tokens: pa.Table,
        extra: dict | None = None,
    ) -> dict:
        """Write a shard's per-token arrays and token table, then commit it.

        Arrays with a layer axis come layer-major, [layer, row, d_model], and
        may carry zero rows past the shard's end up to a whole chunk (the
        runner's buffers); ``final`` comes as [row, d_model].
        """
        start, stop = rows
        n = stop - start
        record = {"shard": index, "rows": [start, stop], "n_tokens": n, "checksums": {}}
        for name, data in arrays.items():
            valid = data[:, :n] if data.ndim == 3 else data[:n]
            _check_finite(name, valid, index, rows)
            arr, spec = self.arrays[name], self.manifest["arrays"][name]
            key = (index,) + (0,) * (arr.ndim - 1)
            with disk_errors(self._dir(name)):
                if self.direct[name]:
                    self._write_shard_file(name, key, data, spec["chunks"][0], spec["shards"][0])
                else:
                    arr[start:stop] = valid.transpose(1, 0, 2) if valid.ndim == 3 else valid
                    self._sync_chunks(name, [key])
            record["checksums"][name] = checksum(valid)
        self.fs.write_atomic(layout.tokens_file(index), lambda f: pq.write_table(tokens, f))
        record["checksums"]["tokens"] = checksum(tokens.column("token_id").to_numpy())
        record.update(extra or {})
        record["committed_at"] = time.time()
        write_json(self.fs, layout.commit_file(index), record)  # last: the shard's data is durable by now
        return record

    def finish(self) -> dict:
        """Record every shard's status in the manifest (readers use the markers)."""
        done = self.committed()
        for shard in self.manifest["shards"]:
            shard["status"] = "committed" if shard["index"] in done else "pending"
        self.manifest["complete"] = len(done) == len(self.manifest["shards"])
        write_json(self.fs, layout.MANIFEST, self.manifest)
        return self.manifest

    def _write_shard_file(self, name: str, key: tuple[int, ...], data: np.ndarray, chunk_rows: int, rows: int) -> None:
        """Write one whole Zarr shard of array ``name`` in one go (store/shardfile.py)."""
        path = f"{self.manifest['arrays'][name]['path']}/{self.arrays[name].metadata.encode_chunk_key(key)}"
        self.fs.write_atomic(path, partial(write_shard_file, data=data, chunk_rows=chunk_rows, shard_rows=rows))

    def _dir(self, name: str) -> str:
        return self.fs.describe(self.manifest["arrays"][name]["path"])

    def _sync_chunks(self, name: str, coords: list[tuple[int, ...]]) -> None:
        """Make the Zarr shard files zarr itself wrote durable before the commit."""
        path = self.manifest["arrays"][name]["path"]
        for c in coords:
            self.fs.sync(f"{path}/{self.arrays[name].metadata.encode_chunk_key(c)}")


def write_json(fs: StoreFS, rel: str, data: dict) -> None:
    fs.write_atomic(rel, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


# -- reading helpers shared with the reader ---------------------------------------------


def read_manifest(store: StoreFS | str | Path) -> dict:
    fs = open_fs(store)
    if not fs.is_file(layout.MANIFEST):
        raise StoreError(f"not an embwalk store (no {layout.MANIFEST}): {fs.location}")
    return parse_manifest(fs.read_bytes(layout.MANIFEST), fs.describe(layout.MANIFEST))


def parse_manifest(raw: bytes, where: str) -> dict:
    """Decode a manifest and check it is one this version reads (``where`` names it in errors)."""
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"unreadable manifest {where}: {exc}") from exc
    if manifest.get("format") != layout.FORMAT or manifest.get("format_version") != layout.FORMAT_VERSION:
        raise StoreError(
            f"{where} is not an embwalk store of format version {layout.FORMAT_VERSION} "
            f"(format {manifest.get('format')!r}, version {manifest.get('format_version')!r})"
        )
    return manifest


def committed_shards(store: StoreFS | str | Path) -> set[int]:
    names = open_fs(store).list(layout.COMMITS_DIR, "shard-*.json")
    return {int(name.removesuffix(".json").split("-")[1]) for name in names}


# -- checks -----------------------------------------------------------------------------


def _check_same_job(fs: StoreFS, old: dict, new: dict) -> None:
    keys = sorted(set(old) | set(new))
    differ = [k for k in keys if old.get(k) != new.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {_difference(old.get(k), new.get(k))}" for k in differ[:3])
        raise StoreError(
            f"store {fs.location} was written by a different job ({shown}); "
            "use another store path or delete this one"
        )


def _check_creatable(fs: StoreFS) -> None:
    """A new store goes into a missing or empty directory, or over a layout that
    never got its manifest (a run killed while allocating) and so holds no data."""
    if not fs.exists():
        return
    if not fs.is_dir():
        raise StoreError(f"store path exists and is not a directory: {fs.location}")
    entries = set(fs.list())
    ours = set(layout.GROUPS.values()) | {layout.TOKENS_DIR, layout.COMMITS_DIR, layout.STATS_DIR}
    if entries - ours:
        raise StoreError(f"store path is a non-empty directory that is not an embwalk store: {fs.location}")
    if committed_shards(fs):
        raise StoreError(f"store {fs.location} has commit markers but no manifest; refusing to overwrite it")
    for name in entries:
        fs.remove(name)


def _estimate_fits(fs: StoreFS, specs: list[layout.ArraySpec]) -> None:
    free = fs.free_bytes()
    if free is None:  # an object store: no free-space figure to check against
        return
    need = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs)
    if need > free:
        raise StoreError(
            f"not enough disk for store {fs.location}: needs about {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def _create_array(fs: StoreFS, spec: layout.ArraySpec, compressor: str) -> None:
    if compressor not in COMPRESSORS:
        raise StoreError(f"unknown compressor {compressor!r}; choose one of {', '.join(COMPRESSORS)}")
    group = zarr.open_group(fs.zarr_store(layout.GROUPS[spec.group]), mode="r+")
    group.create_array(
        spec.name,
        shape=spec.shape,
        chunks=spec.chunks,
        shards=spec.shards,
        dtype=spec.dtype,
        compressors=None if compressor == "none" else [zarr.codecs.ZstdCodec(level=1)],
        fill_value=0,
        dimension_names=spec.dims,
        attributes=spec.attributes,
    )


# inf and nan are the values whose exponent bits are all ones; testing the bits
# is several times faster than np.isfinite on float16, which numpy emulates.
_EXPONENT = {np.dtype(np.float16): (np.uint16, 0x7C00), np.dtype(np.float32): (np.uint32, 0x7F800000)}


def _check_finite(name: str, data: np.ndarray, index: int, rows: tuple[int, int]) -> None:
    as_int, mask = _EXPONENT[data.dtype]
    if ((data.view(as_int) & mask) == mask).any():
        raise StoreError(
            f"overflow: {name} has values outside the {data.dtype} range (inf/nan) in shard {index} "
            f"(rows {rows[0]}..{rows[1]}); rerun with store.dtype=float32"
        )


def _difference(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        return ", ".join(f"{k} {_short(old.get(k))} in the store, {_short(new.get(k))} now" for k in keys)
    if isinstance(old, list) and isinstance(new, list):
        gone, added = [x for x in old if x not in new], [x for x in new if x not in old]
        return f"store has {len(old)} ({_short(gone)} not asked now), job has {len(new)} (adds {_short(added)})"
    return f"store has {_short(old)}, job has {_short(new)}"


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."
