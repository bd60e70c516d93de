"""Create (or resume) a store and write shards into it.

The writer allocates every array at its final size before any shard runs, then
each shard fills its own rows. A shard is committed, by an atomically written
marker with row counts and checksums, only after its array files and token
table are fsynced. Readers trust markers and nothing else, so a shard cut off
half-way is invisible and is rewritten whole on the next run.
"""

from __future__ import annotations

import json
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.errors import StoreError
from pipeline.store import layout
from pipeline.store.durable import atomic_write, atomic_write_json, disk_errors, fsync_path
from pipeline.store.shardfile import supports_direct_write, write_shard_file

COMPRESSORS = ("none", "zstd")


def checksum(data: np.ndarray, previous: int = 0) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B"), previous)


class StoreWriter:
    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest
        self.local = root.is_dir()  # fsync and direct shard writes need a local filesystem
        self.arrays = {
            name: zarr.open_array(root / spec["path"], mode="r+")
            for name, spec in manifest["arrays"].items()
        }
        # Local, uncompressed, sharded arrays take the one-write path.
        self.direct = {
            name: self.local and arr.shape[0] > 0 and supports_direct_write(arr)
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
        root = Path(path).expanduser()
        existing = root / layout.MANIFEST
        if existing.is_file():
            old = read_manifest(root)
            _check_same_job(root, old["identity"], manifest["identity"])
            return cls(root, old)
        _check_creatable(root)
        with disk_errors(root):
            _estimate_fits(root, specs)
            for sub in (layout.TOKENS_DIR, layout.COMMITS_DIR, layout.STATS_DIR):
                (root / sub).mkdir(parents=True, exist_ok=True)
            for group in layout.GROUPS.values():
                if any(spec.path.startswith(group) for spec in specs):
                    zarr.open_group(root / group, mode="w", zarr_format=3)
            for spec in specs:
                _create_array(root, spec, compressor)
        manifest = dict(manifest)
        manifest["arrays"] = {
            spec.name: {
                "path": spec.path, "shape": list(spec.shape), "dims": list(spec.dims),
                "chunks": list(spec.chunks), "shards": list(spec.shards), "dtype": spec.dtype,
                **spec.attributes,
            }
            for spec in specs
        }
        atomic_write_json(existing, manifest)  # last: its presence means the layout is whole
        return cls(root, manifest)

    # -- writing -------------------------------------------------------------------------

    def committed(self) -> set[int]:
        return committed_shards(self.root)

    def write_patterns(self, seq0: int, patterns: np.ndarray) -> None:
        """Write whole sequences' attention, [seq, layer, head, query, key]: each sequence is its own Zarr shard."""
        keys = [(s, 0, 0, 0, 0) for s in range(seq0, seq0 + len(patterns))]
        with disk_errors(self._dir("pattern")):
            if not self.direct["pattern"]:
                self.arrays["pattern"][seq0 : seq0 + len(patterns)] = patterns
                self._fsync_chunks("pattern", keys)
                return
            for key, seq in zip(keys, patterns, strict=True):
                # One chunk per layer, in layer order: the layer-major case with one row per chunk.
                path = self._dir("pattern") / self.arrays["pattern"].metadata.encode_chunk_key(key)
                write_shard_file(path, seq.reshape(seq.shape[0], 1, -1), 1, 1)

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
                    path = self._dir(name) / arr.metadata.encode_chunk_key(key)
                    write_shard_file(path, data, spec["chunks"][0], spec["shards"][0])
                else:
                    arr[start:stop] = valid.transpose(1, 0, 2) if valid.ndim == 3 else valid
                    self._fsync_chunks(name, [key])
            record["checksums"][name] = checksum(valid)
        atomic_write(layout.tokens_path(self.root, index), lambda tmp: pq.write_table(tokens, tmp))
        record["checksums"]["tokens"] = checksum(tokens.column("token_id").to_numpy())
        record.update(extra or {})
        record["committed_at"] = time.time()
        atomic_write_json(layout.commit_path(self.root, index), record)
        return record

    def finish(self) -> dict:
        """Record every shard's status in the manifest (readers use the markers)."""
        done = self.committed()
        for shard in self.manifest["shards"]:
            shard["status"] = "committed" if shard["index"] in done else "pending"
        self.manifest["complete"] = len(done) == len(self.manifest["shards"])
        atomic_write_json(self.root / layout.MANIFEST, self.manifest)
        return self.manifest

    def _dir(self, name: str) -> Path:
        return self.root / self.manifest["arrays"][name]["path"]

    def _fsync_chunks(self, name: str, coords: list[tuple[int, ...]]) -> None:
        """Make the Zarr shard files zarr itself wrote durable before the commit."""
        if not self.local:
            return
        for c in coords:
            f = self._dir(name) / self.arrays[name].metadata.encode_chunk_key(c)
            if f.exists():  # an all-zero chunk zarr chose not to write
                fsync_path(f)


# -- reading helpers shared with the reader ---------------------------------------------


def read_manifest(root: Path) -> dict:
    path = root / layout.MANIFEST
    if not path.is_file():
        raise StoreError(f"not an embwalk store (no {layout.MANIFEST}): {root}")
    return parse_manifest(path.read_bytes(), str(path))


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


def committed_shards(root: Path) -> set[int]:
    commits = root / layout.COMMITS_DIR
    if not commits.is_dir():
        return set()
    return {int(p.stem.split("-")[1]) for p in commits.glob("shard-*.json")}


# -- checks -----------------------------------------------------------------------------


def _check_same_job(root: Path, old: dict, new: dict) -> None:
    keys = sorted(set(old) | set(new))
    differ = [k for k in keys if old.get(k) != new.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {_difference(old.get(k), new.get(k))}" for k in differ[:3])
        raise StoreError(
            f"store {root} was written by a different job ({shown}); "
            "use another store path or delete this one"
        )


def _check_creatable(root: Path) -> None:
    """A new store goes into a missing or empty directory, or over a layout that
    never got its manifest (a run killed while allocating) and so holds no data."""
    if not root.exists():
        return
    if not root.is_dir():
        raise StoreError(f"store path exists and is not a directory: {root}")
    entries = {p.name for p in root.iterdir()}
    ours = set(layout.GROUPS.values()) | {layout.TOKENS_DIR, layout.COMMITS_DIR, layout.STATS_DIR}
    if entries - ours:
        raise StoreError(f"store path is a non-empty directory that is not an embwalk store: {root}")
    if committed_shards(root):
        raise StoreError(f"store {root} has commit markers but no manifest; refusing to overwrite it")
    for name in entries:
        shutil.rmtree(root / name)


def _estimate_fits(root: Path, specs: list[layout.ArraySpec]) -> None:
    need = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in specs)
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise StoreError(
            f"not enough disk for store {root}: needs about {need / 1e9:.2f} GB, {free / 1e9:.2f} GB free"
        )


def _create_array(root: Path, spec: layout.ArraySpec, compressor: str) -> None:
    if compressor not in COMPRESSORS:
        raise StoreError(f"unknown compressor {compressor!r}; choose one of {', '.join(COMPRESSORS)}")
    group = zarr.open_group(root / layout.GROUPS[spec.group], mode="r+")
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
