"""Where a store lives: a local directory or an fsspec URL, and the files in it.

Every reader in this package goes through a ``StoreSource`` so that a store on
S3, GCS or in memory is read the same way as a local one. Local stores keep a
``local`` path, which lets the row reader bypass Zarr for raw byte reads.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import fsspec
import zarr

from pipeline.errors import StoreError
from pipeline.store import layout
from pipeline.store.commits import committed_shards, read_manifest
from pipeline.store.fs import open_fs


class StoreSource:
    def __init__(self, location: str | Path, storage_options: dict | None = None):
        text = str(location)
        self.location = text
        self.storage_options = dict(storage_options or {})
        self.store = open_fs(location, self.storage_options)  # the writer's view: manifest and commit markers
        if self.store.local:
            self.local: Path | None = self.store.root
            self.fs, self.root = fsspec.filesystem("file"), str(self.local)
        else:
            self.local = None
            self.fs, self.root = self.store.fs, self.store.root
        if not self.store.exists():
            raise StoreError(f"store not found: {text}")

    def __repr__(self) -> str:
        return f"StoreSource({self.location!r})"

    # -- paths ---------------------------------------------------------------------------

    def path(self, rel: str) -> str:
        """A path DuckDB, pyarrow and Zarr understand: plain for local stores, a URL otherwise."""
        if self.local is not None:
            return str(self.local / rel)
        return self.fs.unstrip_protocol(f"{self.root}/{rel}")

    def local_path(self, rel: str) -> Path | None:
        return None if self.local is None else self.local / rel

    # -- contents ------------------------------------------------------------------------

    def manifest(self) -> dict:
        if self.local is not None:
            if not self.local.is_dir():
                raise StoreError(f"not an embwalk store (not a directory): {self.location}")
        return read_manifest(self.store)  # same checks and messages as the writer's

    def committed(self) -> list[int]:
        """Indices of committed shards: the markers are the only thing a reader trusts."""
        return sorted(committed_shards(self.store))

    def token_files(self, shards: list[int]) -> list[str]:
        return [self.path(layout.tokens_file(i)) for i in shards]

    def stats_tables(self) -> dict[str, list[str]]:
        """Every Parquet table under stats/: ``stats/NAME.parquet`` or ``stats/NAME/**/*.parquet``.

        Hidden and underscore names are skipped: they are temporary files of
        atomic writes or Spark/Hive markers, never finished tables.
        """
        base = f"{self.root}/{layout.STATS_DIR}"
        if not self.fs.isdir(base):
            return {}
        tables: dict[str, list[str]] = {}
        for entry in sorted(self.fs.ls(base, detail=True), key=lambda e: e["name"]):
            name = PurePosixPath(entry["name"]).name
            if name.startswith((".", "_")):
                continue
            if entry["type"] == "directory":
                found = self.fs.glob(f"{entry['name']}/**/*.parquet")
                files = sorted(f for f in found if not _hidden(PurePosixPath(f).relative_to(entry["name"])))
                key = name
            elif name.endswith(".parquet"):
                files, key = [entry["name"]], name[: -len(".parquet")]
            else:
                continue
            if files:
                tables.setdefault(key, []).extend(self._full(f) for f in files)
        return tables

    def disk_bytes(self) -> int:
        return int(self.fs.du(self.root, total=True))

    def open_array(self, rel: str) -> zarr.Array:
        if self.local is not None:
            return zarr.open_array(self.local / rel, mode="r")
        return zarr.open_array(self.path(rel), mode="r", storage_options=self.storage_options or None)

    def _full(self, fs_path: str) -> str:
        return fs_path if self.local is not None else self.fs.unstrip_protocol(fs_path)


def _hidden(path: PurePosixPath) -> bool:
    return any(part.startswith((".", "_")) for part in path.parts)
