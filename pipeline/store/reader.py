"""Read a store, wherever it lives: manifest, committed shards, token tables, arrays, stats tables.

``Store`` is the one reader of the package: a local (or shared POSIX) directory
or any fsspec URL (``s3://``, ``gs://``, ``memory://`` ...), through the same
``StoreFS`` the writer uses (pipeline/store/fs.py), and the manifest and commit
protocol of pipeline/store/commits.py. The query package (pipeline/query) reads
through it too.

A reader sees only committed shards: rows of a shard without its token table
may hold zeros or half-written data, so ``tokens()`` lists committed rows only
and ``rows()`` refuses rows outside them. ``committed`` is the one reader-side
answer to "which shards": the token tables in ``tokens/`` now, sorted.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from embwalk.errors import StoreError
from embwalk.store import layout
from embwalk.store.commits import committed_shards, read_manifest
from embwalk.store.fs import StoreFS, open_fs


class Store:
    """A store at a local path or an fsspec URL.

    - ``location``: the store as named (a path or URL, as given), for messages;
    - ``fs``: its ``StoreFS`` (``LocalFS`` or ``FsspecFS``);
    - ``root``: the local directory (a ``Path``) of a local store; for a URL, the path
      inside its fsspec filesystem (a ``str`` without the protocol, as ``fs.root``);
    - ``local``: the local directory, or None for a URL (no raw byte reads, no statistics);
    - ``storage_options``: what fsspec was given for a URL (credentials, endpoint ...);
    - ``manifest``: the manifest with its ``shards`` list (``manifest=`` skips reading it
      again when the caller already has it, e.g. a DataLoader worker reopening the store).
    """

    def __init__(self, location: str | Path, storage_options: dict | None = None, *, manifest: dict | None = None):
        self.location = str(location)
        self.storage_options = dict(storage_options or {})
        self.fs: StoreFS = open_fs(location, self.storage_options)
        self.root: Path | str = self.fs.root
        self.local: Path | None = self.fs.root if self.fs.local else None
        # What DuckDB, pyarrow and fsspec's listings take: the local filesystem, or the URL's backend.
        self.fsspec: fsspec.AbstractFileSystem = fsspec.filesystem("file") if self.fs.local else self.fs.fs
        if not self.fs.exists():
            raise StoreError(f"store not found: {self.location}")
        if self.local is not None and not self.local.is_dir():
            raise StoreError(f"not an embwalk store (not a directory): {self.location}")
        self.manifest = read_manifest(self.fs) if manifest is None else manifest

    def __repr__(self) -> str:
        return f"Store({self.location!r})"

    # -- paths ---------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        """A path DuckDB, pyarrow and Zarr understand: plain for local stores, a URL otherwise."""
        if self.local is not None:
            return str(self.local / rel)
        return self.fs.describe(rel)

    def local_path(self, rel: str) -> Path | None:
        return None if self.local is None else self.local / rel

    # -- shards and rows -----------------------------------------------------------------

    @property
    def committed(self) -> list[int]:
        """The committed shards, sorted: listed afresh each time (an extraction may be running)."""
        return sorted(committed_shards(self.fs))

    def committed_rows(self) -> np.ndarray:
        """A boolean mask over the token axis: True where the row's shard is committed."""
        mask = np.zeros(self.manifest["n_tokens"], dtype=bool)
        for start, stop in CommittedRows(self.manifest, self.committed).ranges:
            mask[start:stop] = True
        return mask

    # -- arrays --------------------------------------------------------------------------

    @property
    def array_names(self) -> list[str]:
        return list(self.manifest["arrays"])

    def array(self, name: str) -> zarr.Array:
        if name not in self.manifest["arrays"]:
            raise StoreError(f"store {self.location} has no array {name!r}; it has {', '.join(self.array_names)}")
        return self.open_array(self.manifest["arrays"][name]["path"])

    def open_array(self, rel: str) -> zarr.Array:
        """The Zarr array at ``rel`` (e.g. ``activations.zarr/resid``), read-only."""
        if self.local is not None:
            return zarr.open_array(self.local / rel, mode="r")
        return zarr.open_array(self.path(rel), mode="r", storage_options=self.storage_options or None)

    def rows(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Values of a per-token array at the given rows (committed rows only)."""
        index = np.arange(self.manifest["n_tokens"])[rows]
        CommittedRows(self.manifest, self.committed).check(index, f"store {self.location}")
        return self.array(name).get_orthogonal_selection((index,))

    # -- tables --------------------------------------------------------------------------

    def token_files(self, shards: list[int]) -> list[str]:
        """The token tables of ``shards`` as paths (local) or URLs, for DuckDB and pyarrow."""
        return [self.path(layout.tokens_file(i)) for i in shards]

    def read_tokens(self, index: int, columns: list[str] | None = None) -> pa.Table:
        """One committed shard's token table (``columns`` of it, when given)."""
        rel = layout.tokens_file(index)
        try:
            if self.local is not None:
                return pq.read_table(self.local / rel, columns=columns)
            with self.fs.open_read(rel) as f:
                return pq.read_table(f, columns=columns)
        except FileNotFoundError as exc:
            raise StoreError(f"shard {index} of {self.location} is not committed (no {rel})") from exc

    def tokens(self) -> pa.Table:
        """The token table of every committed shard, in row order."""
        tables = [self.read_tokens(i) for i in self.committed]
        if not tables:
            return layout.TOKEN_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def stats_tables(self) -> dict[str, list[str]]:
        """Every Parquet table under stats/: ``stats/NAME.parquet`` or ``stats/NAME/**/*.parquet``.

        Hidden and underscore names are skipped: they are temporary files of
        atomic writes or Spark/Hive markers, never finished tables.
        """
        base = f"{self._fsspec_root}/{layout.STATS_DIR}"
        if not self.fsspec.isdir(base):
            return {}
        tables: dict[str, list[str]] = {}
        for entry in sorted(self.fsspec.ls(base, detail=True), key=lambda e: e["name"]):
            name = PurePosixPath(entry["name"]).name
            if name.startswith((".", "_")):
                continue
            if entry["type"] == "directory":
                found = self.fsspec.glob(f"{entry['name']}/**/*.parquet")
                files = sorted(f for f in found if not _hidden(PurePosixPath(f).relative_to(entry["name"])))
                key = name
            elif name.endswith(".parquet"):
                files, key = [entry["name"]], name[: -len(".parquet")]
            else:
                continue
            if files:
                tables.setdefault(key, []).extend(map(self._full, files))
        return tables

    def table_names(self, stats: dict[str, list[str]] | None = None) -> list[str]:
        """The SQL tables of the store: ``tokens``, then each stats table (one named ``tokens`` is
        only ``stats.tokens``); ``stats`` is what ``stats_tables()`` returned, when at hand."""
        stats = self.stats_tables() if stats is None else stats
        return ["tokens"] + [name for name in stats if name != "tokens"]

    def disk_bytes(self) -> int:
        return int(self.fsspec.du(self._fsspec_root, total=True))

    # -- summary -------------------------------------------------------------------------

    def info(self, committed: list[int] | None = None) -> dict:
        """What ``summary`` prints, as a dict. ``committed``: the shards to count as committed
        (a reader's snapshot, such as a QueryStore's); by default those committed now."""
        m = self.manifest
        committed = self.committed if committed is None else committed
        arrays = {
            name: int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize for name, spec in m["arrays"].items()
        }
        return {
            "location": self.location,
            "model": m["model"]["id"],
            "n_layers": m["model"]["n_layers"],
            "d_model": m["model"]["d_model"],
            "sites": list(m["sites"]),
            "planned_tokens": m["n_tokens"],
            "committed_tokens": CommittedRows(m, committed).count,
            "committed_shards": len(committed),
            "shards": len(m["shards"]),
            "array_bytes": arrays,
            "tables": self.table_names(),
        }

    def summary(self, committed: list[int] | None = None) -> str:
        """A few lines on the store: model, tokens and shards committed, sites, arrays, bytes, tables."""
        info, m = self.info(committed), self.manifest
        lines = [
            f"store: {self.location}",
            f"  model: {info['model']} ({m['model']['family']}, {info['n_layers']} layers, d_model {info['d_model']})",
            f"  tokens: {info['committed_tokens']} committed of {info['planned_tokens']} "
            f"({info['committed_shards']}/{info['shards']} shards; {m['n_sequences']} sequences, "
            f"{m['n_documents']} documents, seq_len {m['seq_len']}, {m['mode']} mode)",
            f"  sites: {compact_sites(m['sites'])}",
        ]
        for name, spec in m["arrays"].items():
            dims = " x ".join(f"{d}={n}" for d, n in zip(spec["dims"], spec["shape"], strict=True))
            lines.append(f"  {spec['path']}: [{dims}] {spec['dtype']}, {info['array_bytes'][name] / 1e6:.1f} MB")
        lines.append(
            f"  bytes: {sum(info['array_bytes'].values()) / 1e6:.1f} MB of arrays, "
            f"{self.disk_bytes() / 1e6:.1f} MB on disk"
        )
        lines.append(f"  tables: {', '.join(info['tables'])}")
        return "\n".join(lines)

    # -- internals -----------------------------------------------------------------------

    @property
    def _fsspec_root(self) -> str:
        return str(self.local) if self.local is not None else self.fs.root

    def _full(self, fs_path: str) -> str:
        return fs_path if self.local is not None else self.fsspec.unstrip_protocol(fs_path)


class CommittedRows:
    """The row ranges of given committed shards, checked with a binary search (no per-token mask)."""

    def __init__(self, manifest: dict, committed: list[int]):
        shards = {s["index"]: s["rows"] for s in manifest["shards"]}
        ranges = sorted(shards[i] for i in committed if i in shards)
        self.starts = np.array([r[0] for r in ranges], dtype=np.int64)
        self.stops = np.array([r[1] for r in ranges], dtype=np.int64)
        self.n_tokens = int(manifest["n_tokens"])

    @property
    def count(self) -> int:
        return int((self.stops - self.starts).sum())

    @property
    def ranges(self) -> list[tuple[int, int]]:
        return list(zip(self.starts.tolist(), self.stops.tolist(), strict=True))

    def check(self, rows: np.ndarray, where: str) -> None:
        """Raise a one-line StoreError for a row outside the store or of a shard not committed."""
        if len(rows) == 0:
            return
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= self.n_tokens:
            bad = lo if lo < 0 else hi
            raise StoreError(f"row {bad} is outside {where} (rows 0..{self.n_tokens - 1})")
        i = np.searchsorted(self.starts, rows, side="right") - 1
        ok = (i >= 0) & (rows < self.stops[np.maximum(i, 0)])
        if not ok.all():
            bad = int(rows[~ok][0])
            raise StoreError(f"row {bad} of {where} belongs to a shard that is not committed (yet)")


def compact_sites(sites: list[str]) -> str:
    """resid_post.0 ... resid_post.29 -> resid_post.0-29."""
    groups: dict[str, list[str]] = {}
    for s in sites:
        kind, _, layer = s.partition(".")
        groups.setdefault(kind, []).append(layer)
    parts = []
    for kind, layers in groups.items():
        if layers == [""]:
            parts.append(kind)
        elif len(layers) > 2:
            parts.append(f"{kind}.{layers[0]}-{layers[-1]} ({len(layers)})")
        else:
            parts.append(", ".join(f"{kind}.{x}" for x in layers))
    return ", ".join(parts)


def _hidden(path: PurePosixPath) -> bool:
    return any(part.startswith((".", "_")) for part in path.parts)
