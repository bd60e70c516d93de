"""Create (or resume) a store and write shards into it.

The writer allocates every array at its final size before any shard runs, then
each shard fills its own rows. A shard is committed only after its array files
are durable: first its commit record (every file with its size), then its token
table, whose appearance is the commit (pipeline/store/commits.py). A shard cut
off half-way is invisible and is rewritten whole on the next run, and a
committed shard is verified (pipeline/store/verify.py) before a rerun trusts it.
Every chunk of every array carries a CRC-32C that any Zarr reader checks.

Every file operation goes through a ``StoreFS`` (pipeline/store/fs.py): a local
directory (fsync + rename) or an fsspec URL (one put per file).
"""

from __future__ import annotations

import io
import json
import logging
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from embwalk.errors import StoreError
from embwalk.store import layout
from embwalk.store.commits import (
    committed_shards,
    read_manifest,
    recorded_shards,
    uncommit,
    write_json,
    write_manifest,
)
from embwalk.store.config import check_compressor
from embwalk.store.durable import disk_errors
from embwalk.store.fs import StoreFS, open_fs
from embwalk.store.shardfile import supports_direct_write, write_shard_file
from embwalk.store.stacks import read_stacks, stack_store_path
from embwalk.store.verify import check_shards

log = logging.getLogger(__name__)

class StoreWriter:
    def __init__(self, fs: StoreFS, manifest: dict, before_commit: Callable[[int], None] | None = None):
        self.fs, self.manifest = fs, manifest
        # Called with a shard's index once its arrays are durable, before its commit record and
        # token table: the one point a test's fault (pipeline/executors/faults.py) acts at.
        self.before_commit = before_commit
        self.root = fs.root  # a Path for local stores (the statistics code works on those only)
        # Zarr writes even all-zero chunks, so every file a shard owns exists and is in its record.
        self.arrays = {
            name: zarr.open_array(fs.zarr_store(spec["path"]), mode="r+", config={"write_empty_chunks": True})
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
        check_compressor(compressor)
        fs = open_fs(path)
        if fs.is_file(layout.MANIFEST):
            old = read_manifest(fs)
            _check_same_job(fs, old["identity"], manifest["identity"])
            removed = fs.clear_tmp()  # a killed writer's half-written files
            if removed:
                log.warning("removed %d temporary files a killed writer left in %s", removed, fs.location)
            return cls(fs, old)
        _check_creatable(fs)
        with disk_errors(fs.location):
            _estimate_fits(fs, specs)
            for sub in (layout.TOKENS_DIR, layout.COMMITS_DIR, layout.STATS_DIR):
                fs.makedirs(sub)
            _create_arrays(fs, specs, compressor)
        manifest = dict(manifest, complete=False)
        manifest["arrays"] = {
            spec.name: {
                "path": spec.path, "shape": list(spec.shape), "dims": list(spec.dims),
                "chunks": list(spec.chunks), "shards": list(spec.shards), "dtype": spec.dtype,
                **spec.attributes,
            }
            for spec in specs
        }
        write_manifest(fs, manifest)  # last: its presence means the layout is whole
        return cls(fs, manifest)

    @classmethod
    def attach(cls, path: str | Path, before_commit: Callable[[int], None] | None = None) -> StoreWriter:
        """A writer for a store the driver already created (a Ray worker's: it gets only the path or URL)."""
        fs = open_fs(path)
        return cls(fs, read_manifest(fs), before_commit)

    # -- writing -------------------------------------------------------------------------

    def committed(self) -> set[int]:
        return committed_shards(self.fs)

    def trusted_shards(self, level: str = "quick") -> set[int]:
        """The committed shards that pass verification (pipeline/store/verify.py) at ``level``.

        A shard that fails is un-committed, with one warning naming it and the
        file, so the run rewrites it. So is a record whose token table never
        appeared (an interrupted commit), silently: it was never committed.
        """
        committed = self.committed()
        for index in recorded_shards(self.fs) - committed:
            uncommit(self.fs, index)
        damaged = check_shards(self.fs, self.manifest, sorted(committed), full=level == "full")
        for damage in damaged:
            log.warning("committed %s; re-extracting it", damage.describe(self.fs))
            uncommit(self.fs, damage.shard)
        return committed - {d.shard for d in damaged}

    def write_patterns(self, seq0: int, patterns: np.ndarray, name: str = "pattern") -> dict[str, dict]:
        """Write whole sequences' attention, [seq, layer, head, query, key]: each sequence is its own
        Zarr shard. Returns each file written with its stat, for the shard's commit record.
        ``name``: the per-sequence array (``pattern``, or a T5 decoder store's ``cross_pattern``)."""
        keys = [(s, 0, 0, 0, 0) for s in range(seq0, seq0 + len(patterns))]
        with disk_errors(self._dir(name)):
            if not self.direct[name]:
                self._discard(name, keys)
                self.arrays[name][seq0 : seq0 + len(patterns)] = patterns
                return self._sync_chunks(name, keys)
            # One chunk per layer, in layer order: the layer-major case with one row per chunk.
            return {
                self._file(name, key): self._write_shard_file(name, key, seq.reshape(len(seq), 1, -1), 1, 1)
                for key, seq in zip(keys, patterns, strict=True)
            }

    def write_shard(
        self, index: int, rows: tuple[int, int], arrays: dict[str, np.ndarray], tokens: pa.Table,
        extra: dict | None = None, written: dict[str, dict] | None = None,
    ) -> dict:
        """Write a shard's per-token arrays, then commit it: its record, then its token table.

        Arrays with a layer axis come layer-major, [layer, row, d_model], and
        may carry zero rows past the shard's end up to a whole chunk (the
        runner's buffers); ``final`` comes as [row, d_model]. ``written`` lists
        files of the shard already written (its attention patterns) with their stats.
        """
        start, stop = rows
        n = stop - start
        files = dict(written or {})
        for name, data in arrays.items():
            valid = data[:, :n] if data.ndim == 3 else data[:n]
            _check_finite(name, valid, index, rows)
            arr, spec = self.arrays[name], self.manifest["arrays"][name]
            key = (index,) + (0,) * (arr.ndim - 1)
            with disk_errors(self._dir(name)):
                if self.direct[name]:
                    stat = self._write_shard_file(name, key, data, spec["chunks"][0], spec["shards"][0])
                    files[self._file(name, key)] = stat
                else:
                    self._discard(name, [key])
                    arr[start:stop] = valid.transpose(1, 0, 2) if valid.ndim == 3 else valid
                    files.update(self._sync_chunks(name, [key]))
        if self.before_commit is not None:
            self.before_commit(index)
        buf = io.BytesIO()
        pq.write_table(tokens, buf, write_page_checksum=True)  # readers that ask verify each page
        token_bytes = buf.getvalue()
        files[layout.tokens_file(index)] = {"size": len(token_bytes), "crc32c": google_crc32c.value(token_bytes)}
        record = {"shard": index, "rows": [start, stop], "n_tokens": n, **(extra or {}), "files": files}
        record["committed_at"] = time.time()
        write_json(self.fs, layout.commit_file(index), record)  # the shard's arrays are durable by now
        self.fs.write_atomic(layout.tokens_file(index), token_bytes)  # last: its appearance commits the shard
        return record

    def finish(self) -> dict:
        """Record in the manifest whether every shard is committed (the token tables say which)."""
        done = self.committed()
        self.manifest["complete"] = len(done) == len(self.manifest["shards"])
        self.manifest["n_committed"] = len(done)
        write_manifest(self.fs, self.manifest, with_plan=False)
        return self.manifest

    def _file(self, name: str, key: tuple[int, ...]) -> str:
        return layout.chunk_file(self.manifest["arrays"][name]["path"], key)

    def _write_shard_file(self, name: str, key: tuple[int, ...], data: np.ndarray, chunk_rows: int, rows: int) -> dict:
        """Write one whole Zarr shard of array ``name`` in one go (store/shardfile.py); returns its stat."""
        return self.fs.write_atomic(
            self._file(name, key), partial(write_shard_file, data=data, chunk_rows=chunk_rows, shard_rows=rows)
        )

    def _dir(self, name: str) -> str:
        return self.fs.describe(self.manifest["arrays"][name]["path"])

    def _discard(self, name: str, keys: list[tuple[int, ...]]) -> None:
        """Remove what an earlier attempt left of these Zarr shards: zarr reads a shard file it
        writes into, so a damaged or half-written one would fail every later attempt."""
        for key in keys:
            self.fs.remove(self._file(name, key))

    def _sync_chunks(self, name: str, keys: list[tuple[int, ...]]) -> dict[str, dict]:
        """Make the Zarr shard files zarr itself wrote durable before the commit; their stats."""
        stats = {}
        for key in keys:
            rel = self._file(name, key)
            self.fs.sync(rel)
            stats[rel] = self.fs.stat(rel)
        return stats


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


def check_store_location(fs: StoreFS) -> None:
    """A job writes into an embwalk store of its own, or a missing or empty directory (or
    what a run killed before its manifest left there: staged tokens, a partial layout). Never a
    two-stack store's root: one stack's job writes into its stack's store (checked before any tokenizing)."""
    if fs.is_file(layout.MANIFEST):
        if read_stacks(fs) is not None:
            enc, dec = (stack_store_path(fs.location, s) for s in ("enc", "dec"))
            raise StoreError(f"store {fs.location} is a two-stack store: a job of one stack's sites writes {enc} "
                             f"or {dec} (or give it both stacks' sites)")
        return
    if not fs.exists():
        return
    if not fs.is_dir():
        raise StoreError(f"store path exists and is not a directory: {fs.location}")
    if set(fs.list()) - _OURS:
        raise StoreError(f"store path is a non-empty directory that is not an embwalk store: {fs.location}")


_OURS = {*layout.GROUPS.values(), layout.TOKENS_DIR, layout.COMMITS_DIR, layout.STATS_DIR, layout.TMP_DIR,
         layout.STAGING_DIR, layout.PLAN_FILE}


def _check_creatable(fs: StoreFS) -> None:
    """A new store goes into a missing or empty directory, or over a layout that never got
    its manifest (a run killed while allocating) and so holds no data; the staged token
    rows of the corpus stay (they are what this run planned from)."""
    check_store_location(fs)
    if not fs.exists():
        return
    if committed_shards(fs) or recorded_shards(fs):
        raise StoreError(f"store {fs.location} has committed shards but no manifest; refusing to overwrite it")
    for name in set(fs.list()) - {layout.STAGING_DIR}:
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


def _create_arrays(fs: StoreFS, specs: list[layout.ArraySpec], compressor: str) -> None:
    """Each group with its arrays, their coordinate arrays, and consolidated metadata.

    Every chunk ends with its CRC-32C (after the compressor, so damage is found
    without decompressing) and so does every shard's index. Array metadata
    never changes after this, so the metadata is consolidated here, once, and
    ``xarray.open_zarr`` needs no flag, during a run as after it.
    """
    checksum = zarr.codecs.Crc32cCodec()
    compressors = [checksum] if compressor == "none" else [zarr.codecs.ZstdCodec(level=1), checksum]
    coordinates = layout.coordinates(specs)
    for key, group_path in layout.GROUPS.items():
        members = [spec for spec in specs if spec.group == key]
        if not members:
            continue
        group = zarr.open_group(fs.zarr_store(group_path), mode="w", zarr_format=3)
        for spec in members:
            group.create_array(
                spec.name, shape=spec.shape, chunks=spec.chunks, shards=spec.shards, dtype=spec.dtype,
                compressors=compressors, fill_value=0, dimension_names=spec.dims, attributes=spec.attributes,
            )
        for dim, values in coordinates.get(key, {}).items():
            coord = group.create_array(
                dim, shape=(len(values),), dtype="int64", compressors=[checksum], fill_value=0, dimension_names=[dim],
            )
            coord[:] = np.asarray(values, dtype=np.int64)
        with warnings.catch_warnings():  # "consolidated metadata is not in the Zarr v3 spec (yet)"
            warnings.simplefilter("ignore", UserWarning)
            zarr.consolidate_metadata(fs.zarr_store(group_path))


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
