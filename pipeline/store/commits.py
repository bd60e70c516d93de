"""What a store says about itself: its manifest, and which shards are committed.

Format version 2 commits a shard in two steps, after its array files are durable:

1. ``commits/shard-N.json``, the commit record: rows, and every file the shard
   wrote with its size (and the token table's CRC-32C), for verification;
2. ``tokens/shard-N.parquet``, the token table, renamed into place (or put, on
   an object store) last. **Its appearance commits the shard.**

So ``tokens/`` holds exactly the committed shards at every moment, and a raw
reader of it (pyarrow, DuckDB) needs no extra step. A record without its token
table is an interrupted commit: not committed, rewritten by the next run. To
un-commit, the token table goes first. The writer and every reader use this
module; it writes no data, only the manifest and the plan of a store's shards.

The manifest does not list the shards (244k of them for 1B tokens): a reader
derives them in pack mode, and reads ``plan.parquet`` (one row per shard: its
rows, sequences and pattern sequences) in document mode, where they cannot be
derived; ``read_manifest`` gives them back as ``manifest["shards"]``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from embwalk.errors import StoreError
from embwalk.plan import pack_shards
from embwalk.store import layout
from embwalk.store.fs import StoreFS, open_fs
from embwalk.store.stacks import is_two_stack, two_stack_error


def read_manifest(store: StoreFS | str | Path) -> dict:
    """The manifest, with its ``shards`` list filled in: derived in pack mode, read from
    ``plan.parquet`` in document mode (the manifest itself stays small at any scale)."""
    fs = open_fs(store)
    if not fs.is_file(layout.MANIFEST):
        raise StoreError(f"not an embwalk store (no {layout.MANIFEST}): {fs.location}")
    manifest = parse_manifest(fs.read_bytes(layout.MANIFEST), fs.describe(layout.MANIFEST), fs.location)
    manifest["shards"] = _shards(fs, manifest)
    return manifest


def parse_manifest(raw: bytes, where: str, location: str | None = None) -> dict:
    """Decode a manifest and check it is one this version reads (``where`` names it in errors;
    ``location``, the store's, names a two-stack store's stacks)."""
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"unreadable manifest {where}: {exc}") from exc
    if is_two_stack(manifest):
        raise two_stack_error(location or where)
    fmt, version = manifest.get("format"), manifest.get("format_version")
    if fmt == layout.FORMAT and isinstance(version, int) and version < layout.FORMAT_VERSION:
        raise StoreError(
            f"{where} is an embwalk store of format version {version}; this embwalk reads version "
            f"{layout.FORMAT_VERSION} (per-chunk checksums, verified commits): extract it again into a new store"
        )
    if fmt != layout.FORMAT or version != layout.FORMAT_VERSION:
        raise StoreError(
            f"{where} is not an embwalk store of format version {layout.FORMAT_VERSION} "
            f"(format {fmt!r}, version {version!r})"
        )
    return manifest


def committed_shards(store: StoreFS | str | Path) -> set[int]:
    """The committed shards: those whose token table is in ``tokens/``."""
    return _indices(open_fs(store).list(layout.TOKENS_DIR, "shard-*.parquet"))


def recorded_shards(store: StoreFS | str | Path) -> set[int]:
    """Shards with a commit record (committed, or whose commit was cut off before its token table)."""
    return _indices(open_fs(store).list(layout.COMMITS_DIR, "shard-*.json"))


def read_record(fs: StoreFS, index: int) -> dict | None:
    """Shard ``index``'s commit record; None when it is missing or unreadable."""
    try:
        record = json.loads(fs.read_bytes(layout.commit_file(index)))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def uncommit(fs: StoreFS, index: int) -> None:
    """Take a shard back out of the committed set: its token table first (readers stop
    seeing it at once), then its record; the next run rewrites it whole."""
    for rel in (layout.tokens_file(index), layout.commit_file(index)):
        if fs.exists(rel):
            fs.remove(rel)


def _indices(names: list[str]) -> set[int]:
    return {i for i in map(layout.shard_index_of, names) if i is not None}


def write_manifest(fs: StoreFS, manifest: dict, with_plan: bool = True) -> None:
    """Write the manifest without its ``shards`` list, which a reader derives (pack mode:
    arithmetic) or reads from ``plan.parquet`` (written first, with ``with_plan``, when they
    cannot be derived: document mode). So the manifest stays a few KB at any scale."""
    shards = manifest["shards"]
    derivable = manifest.get("mode") == "pack" and shards == _pack_shards(manifest)
    manifest["plan"] = {"n_shards": len(shards), "file": None if derivable else layout.PLAN_FILE}
    if with_plan and not derivable:
        keys = [key for key in _RANGES if all(key in s for s in shards)]
        columns = {f"{key}_{end}": [s[key][i] for s in shards]
                   for key in keys for i, end in enumerate(("start", "stop"))}
        buf = io.BytesIO()
        pq.write_table(pa.table(columns, schema=pa.schema([(c, pa.int64()) for c in columns])), buf)
        fs.write_atomic(layout.PLAN_FILE, buf.getvalue())
    write_json(fs, layout.MANIFEST, {k: v for k, v in manifest.items() if k != "shards"})


def write_json(fs: StoreFS, rel: str, data: dict) -> None:
    fs.write_atomic(rel, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())


_RANGES = ("rows", "seqs", "pattern_seqs", "seq_rows")


def _shards(fs: StoreFS, manifest: dict) -> list[dict]:
    plan = manifest.get("plan") or {}
    if plan.get("file") is None:
        return _pack_shards(manifest)
    table = pq.read_table(io.BytesIO(fs.read_bytes(plan["file"]))).to_pydict()
    keys = [key for key in _RANGES if f"{key}_start" in table]
    return [{"index": i, **{key: [table[f"{key}_start"][i], table[f"{key}_stop"][i]] for key in keys}}
            for i in range(plan["n_shards"])]


def _pack_shards(manifest: dict) -> list[dict]:
    return [s.to_dict() for s in pack_shards(manifest["n_tokens"], manifest["shard_tokens"], manifest["seq_len"])]
