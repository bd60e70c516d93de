"""Where a store lives: a local (or shared POSIX) directory, or any fsspec URL.

The writer and readers go through a ``StoreFS`` so that one code path serves
both. The two implementations differ in how a file becomes visible whole:

- ``LocalFS`` (a plain path or ``file://``): write a temporary file in the
  store's ``.tmp/``, fsync it, rename it over the final name, fsync the
  directory; Zarr's own chunk files are fsynced before a commit. This is the benchmarked path: it must stay as
  it was.
- ``FsspecFS`` (``memory://``, ``s3://``, ``gs://``, ...): each file is ONE
  ``pipe`` of its whole bytes. On object stores a put is atomic (the object
  appears whole or not at all) and durable when it returns, so there is no
  temporary name to rename and nothing to fsync.

All paths given to a ``StoreFS`` are relative to the store's root, with ``/``.
"""

from __future__ import annotations

import fnmatch
import io
import posixpath
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from embwalk.errors import StoreError, first_line
from embwalk.store.durable import atomic_write, disk_errors, fsync_path
from embwalk.store.layout import TMP_DIR

Writer = Callable[[BinaryIO], None]
LOCAL_PROTOCOLS = (None, "file", "local")


class StoreFS:
    """The few file operations a store needs, relative to its root."""

    location: str  # the store as the user named it, for messages
    local: bool  # a POSIX directory: fsync and rename, free-disk check, raw byte reads
    root: Path | str  # the directory (local) or the path inside ``fs`` (fsspec)

    def describe(self, rel: str = "") -> str:
        """A file's full name, for messages."""
        raise NotImplementedError

    def exists(self, rel: str = "") -> bool:
        raise NotImplementedError

    def is_file(self, rel: str) -> bool:
        raise NotImplementedError

    def is_dir(self, rel: str = "") -> bool:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def open_read(self, rel: str) -> BinaryIO:
        """A file opened for reading with seek (verification reads a shard's index, then its chunks)."""
        raise NotImplementedError

    def stat(self, rel: str) -> dict | None:
        """A file's ``size`` in bytes, and its ``mtime_ns`` where the filesystem keeps one
        (a commit records both, and a rerun compares them); None if it is missing."""
        raise NotImplementedError

    def write_atomic(self, rel: str, data: bytes | Writer) -> dict:
        """Write a whole file, ``data`` or what ``data(file)`` writes: a reader sees all of it or
        nothing. Returns what ``stat`` says of the file written."""
        raise NotImplementedError

    def clear_tmp(self) -> int:
        """Remove what killed writers left in the store's temporary directory; returns how many."""
        return 0

    def list(self, rel: str = "", pattern: str = "*") -> list[str]:
        """Names (not paths) of the entries of directory ``rel`` matching ``pattern``; [] if it is missing."""
        raise NotImplementedError

    def makedirs(self, rel: str) -> None:
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Remove a file or a whole directory, if it is there."""
        raise NotImplementedError

    def zarr_store(self, rel: str) -> Any:
        """What ``zarr.open_array`` / ``zarr.open_group`` take for the node at ``rel``."""
        raise NotImplementedError

    def sync(self, rel: str) -> None:
        """Make a file someone else wrote (Zarr) durable, if it exists."""
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        """Free space where the store goes; None when unknown (object stores: no check)."""
        raise NotImplementedError


class LocalFS(StoreFS):
    local = True

    def __init__(self, root: Path):
        self.root = root
        self.location = str(root)

    def describe(self, rel: str = "") -> str:
        return str(self.root / rel) if rel else str(self.root)

    def exists(self, rel: str = "") -> bool:
        return (self.root / rel).exists()

    def is_file(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def is_dir(self, rel: str = "") -> bool:
        return (self.root / rel).is_dir()

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    def open_read(self, rel: str) -> BinaryIO:
        return open(self.root / rel, "rb")

    def stat(self, rel: str) -> dict | None:
        try:
            st = (self.root / rel).stat()
        except FileNotFoundError:
            return None
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def write_atomic(self, rel: str, data: bytes | Writer) -> dict:
        path, tmp_dir = self.root / rel, self.root / TMP_DIR
        with disk_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp_dir.mkdir(exist_ok=True)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                if callable(data):
                    data(f)
                else:
                    f.write(data)

        atomic_write(path, write, tmp_dir)
        return self.stat(rel)  # the rename keeps the temporary's mtime

    def clear_tmp(self) -> int:
        tmp_dir = self.root / TMP_DIR
        leftovers = list(tmp_dir.iterdir()) if tmp_dir.is_dir() else []
        for path in leftovers:
            path.unlink(missing_ok=True)
        return len(leftovers)

    def list(self, rel: str = "", pattern: str = "*") -> list[str]:
        base = self.root / rel
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if fnmatch.fnmatchcase(p.name, pattern))

    def makedirs(self, rel: str) -> None:
        (self.root / rel).mkdir(parents=True, exist_ok=True)

    def remove(self, rel: str) -> None:
        path = self.root / rel
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def zarr_store(self, rel: str) -> Path:
        return self.root / rel  # zarr makes its LocalStore from a path

    def sync(self, rel: str) -> None:
        path = self.root / rel
        if path.exists():  # an all-zero chunk zarr chose not to write
            fsync_path(path)

    def free_bytes(self) -> int | None:
        probe = self.root
        while not probe.exists():
            probe = probe.parent
        return shutil.disk_usage(probe).free


class FsspecFS(StoreFS):
    local = False

    def __init__(self, location: str, fs: fsspec.AbstractFileSystem, root: str):
        self.location, self.fs, self.root = location, fs, root.rstrip("/")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _fresh(self, rel: str) -> str:
        # Listings are cached per process (s3fs, gcsfs); other processes (Ray
        # workers) write commit markers, so every question asks the store again.
        path = self._path(rel)
        self.fs.invalidate_cache(path)
        return path

    def describe(self, rel: str = "") -> str:
        return self.fs.unstrip_protocol(self._path(rel))

    def exists(self, rel: str = "") -> bool:
        return self.fs.exists(self._fresh(rel))

    def is_file(self, rel: str) -> bool:
        return self.fs.isfile(self._fresh(rel))

    def is_dir(self, rel: str = "") -> bool:
        return self.fs.isdir(self._fresh(rel))

    def read_bytes(self, rel: str) -> bytes:
        return self.fs.cat_file(self._path(rel))

    def open_read(self, rel: str) -> BinaryIO:
        return self.fs.open(self._path(rel), "rb")

    def stat(self, rel: str) -> dict | None:
        try:
            return {"size": int(self.fs.size(self._fresh(rel)))}  # object stores: no mtime to compare
        except FileNotFoundError:
            return None

    def write_atomic(self, rel: str, data: bytes | Writer) -> dict:
        if callable(data):
            buf = io.BytesIO()
            data(buf)
            data = buf.getvalue()
        with remote_errors(self.describe(rel)):
            self.fs.pipe_file(self._path(rel), data)  # one put: the object appears whole or not at all
        return {"size": len(data)}

    def list(self, rel: str = "", pattern: str = "*") -> list[str]:
        try:
            entries = self.fs.ls(self._fresh(rel), detail=False)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(str(e).rstrip("/")) for e in entries)
        return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))

    def makedirs(self, rel: str) -> None:
        with remote_errors(self.describe(rel)):
            self.fs.makedirs(self._path(rel), exist_ok=True)  # a no-op on object stores

    def remove(self, rel: str) -> None:
        with remote_errors(self.describe(rel)):
            try:
                self.fs.rm(self._path(rel), recursive=True)
            except FileNotFoundError:
                pass

    def zarr_store(self, rel: str) -> Any:
        from zarr.storage import FsspecStore

        # Zarr writes each shard object with one pipe too (FsspecStore.set).
        return FsspecStore.from_mapper(self.fs.get_mapper(self._path(rel)))

    def sync(self, rel: str) -> None:
        pass  # a put is durable when it returns

    def free_bytes(self) -> int | None:
        return None


def open_fs(location: str | Path | StoreFS, storage_options: dict | None = None) -> StoreFS:
    """The StoreFS for a path or URL: local for a plain path or ``file://``, fsspec for any other protocol.

    An unknown protocol or a backend that is not installed is a one-line StoreError.
    """
    if isinstance(location, StoreFS):
        return location
    root = local_path(location)
    if root is not None:
        return LocalFS(root)
    text = str(location)
    try:
        fs, path = fsspec.core.url_to_fs(text, **(storage_options or {}))
    except ImportError as exc:  # fsspec knows the protocol; its backend package is missing
        raise StoreError(f"cannot open store {text}: {first_line(exc)} (pip install it)") from exc
    except ValueError as exc:
        protocol = fsspec.core.split_protocol(text)[0]
        raise StoreError(
            f"cannot open store {text}: unknown protocol {protocol!r} ({first_line(exc)}); use a local path, "
            "file://, or a protocol of an installed fsspec backend (s3fs for s3://, gcsfs for gs://, adlfs for abfs://)"
        ) from exc
    return FsspecFS(text, fs, path)


def local_path(location: str | Path) -> Path | None:
    """The directory of a plain path or ``file://`` URL; None for any other protocol."""
    if isinstance(location, Path):
        return location.expanduser()
    protocol, path = fsspec.core.split_protocol(str(location))
    if protocol not in LOCAL_PROTOCOLS:
        return None
    return Path(path).expanduser()


def require_local(
    location: str | Path, what: str, hint: str = "extract to such a path, or copy the store there"
) -> Path:
    """The local directory of a store that ``what`` can only use on a local or shared filesystem."""
    root = local_path(location)
    if root is None:
        raise StoreError(
            f"{what}: the store must be on a local or shared filesystem (a path or file:// URL), not {location}; {hint}"
        )
    return root


@contextmanager
def remote_errors(where: str) -> Iterator[None]:
    """A remote write's failure (no bucket, no credentials) as one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise StoreError(f"cannot write {where}: {first_line(exc)}") from exc
