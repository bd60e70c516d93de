"""Writes that are either complete on disk or absent (stores on a local or
shared POSIX filesystem; pipeline/store/fs.py puts whole objects elsewhere).

A reader must never mistake half-written bytes for data, so every small file
(manifest, commit marker, token table) is written to a temporary name, fsynced,
renamed over its final name, and the directory fsynced. A full disk surfaces as
a one-line StoreError naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from embwalk.errors import StoreError


@contextmanager
def disk_errors(path: Path | str) -> Iterator[None]:
    """Turn the OS errors a user can cause (full disk, permissions) into StoreError."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(f"disk full while writing {path}") from exc
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreError(f"no permission to write {path}: {exc.strerror}") from exc
        raise


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[Path], None], tmp_dir: Path | None = None) -> None:
    """Call ``write(tmp)``, then make ``tmp`` durable and rename it to ``path``.

    ``tmp`` is a hidden name beside ``path``, or a unique name in ``tmp_dir`` (on the
    same filesystem, so the rename stays atomic), where a killed writer's leftovers
    are easy to find and remove, and never sit among the files readers list.
    """
    if tmp_dir is None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    else:
        tmp = tmp_dir / f"{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    with disk_errors(path):
        try:
            write(tmp)
            fsync_path(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_path(path.parent)


def atomic_write_json(path: Path, data: dict, tmp_dir: Path | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n"), tmp_dir)
