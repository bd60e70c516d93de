"""Check committed shards before anything trusts them again.

Two levels, the same checks on every location a store can live:

- ``quick`` (every rerun, before it skips a committed shard): the commit record
  reads and matches the plan's rows; every file the shard owns is in the record
  and on disk with the recorded size; every array shard file's index (its last
  bytes) passes its CRC-32C and points inside the file; the token table's
  CRC-32C matches the record (token tables are ~1% of a store). An array file
  whose mtime is not the one recorded at its commit (written to since: an edit
  in place, a copy without ``-p``) gets every chunk checked. Otherwise it reads
  a few KB per array file, so it stays small on a large store, and it catches
  truncation, missing, replaced or edited files and cut-off copies.
- ``full`` (``python -m jobs.verify``, or ``store.verify=full`` on a rerun):
  also every stored chunk's CRC-32C, i.e. every byte of the shard.

A flipped byte inside a chunk that only ``full`` finds is still never served as
data: every Zarr reader checks that chunk's CRC-32C when it decodes it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import google_crc32c
from tqdm.auto import tqdm

from embwalk.store import layout
from embwalk.store.commits import committed_shards, read_manifest, read_record, recorded_shards, uncommit
from embwalk.store.fs import StoreFS, open_fs
from embwalk.store.shardfile import check_shard_file

THREADS = 8  # verification is I/O: a few threads hide the latency of a shared filesystem


@dataclass(frozen=True)
class Damage:
    shard: int
    file: str  # relative to the store's root
    problem: str

    def describe(self, fs: StoreFS) -> str:
        return f"shard {self.shard}: {fs.describe(self.file)}: {self.problem}"


def check_shard(fs: StoreFS, manifest: dict, index: int, full: bool = False) -> Damage | None:
    """The first problem found in committed shard ``index``, or None."""
    tokens = layout.tokens_file(index)
    record = read_record(fs, index)
    if record is None:
        return Damage(index, layout.commit_file(index), "commit record missing or unreadable")
    if record.get("rows") != manifest["shards"][index]["rows"]:
        return Damage(index, layout.commit_file(index), f"records rows {record.get('rows')}, the plan has "
                      f"{manifest['shards'][index]['rows']}")
    recorded = record.get("files", {})
    for rel, name in {**layout.shard_files(manifest, index), tokens: None}.items():
        expected = recorded.get(rel, {})
        if "size" not in expected:
            return Damage(index, rel, "not in the commit record")
        stat = fs.stat(rel)
        if stat is None:
            return Damage(index, rel, "missing")
        if stat["size"] != expected["size"]:
            return Damage(index, rel, f"{stat['size']} bytes, the commit recorded {expected['size']}")
        if name is None:
            problem = _check_tokens(fs, rel, expected)
        else:  # a file written to since its commit gets every byte checked, even on a quick check
            changed = "mtime_ns" in expected and stat.get("mtime_ns") != expected["mtime_ns"]
            problem = _check_array_file(fs, rel, stat["size"], manifest["arrays"][name], full or changed)
        if problem:
            return Damage(index, rel, problem)
    return None


def check_shards(
    fs: StoreFS, manifest: dict, shards: list[int], full: bool = False,
    on_checked: Callable[[int], None] | None = None,
) -> list[Damage]:
    """Check every shard in ``shards`` (on a few threads); the damaged ones, in shard order."""
    def one(index: int) -> Damage | None:
        try:
            return check_shard(fs, manifest, index, full)
        except OSError as exc:  # unreadable: damage too, named like the rest
            return Damage(index, layout.tokens_file(index), f"unreadable: {exc}")
        finally:
            if on_checked:
                on_checked(index)

    with ThreadPoolExecutor(THREADS, thread_name_prefix="embwalk-verify") as pool:
        found = list(pool.map(one, sorted(shards)))
    return [d for d in found if d is not None]


@dataclass
class Verification:
    """What ``verify_store`` found."""

    location: str
    planned: int  # shards in the plan
    checked: int  # committed shards checked
    nbytes: int  # bytes those shards' files hold
    seconds: float
    damaged: list[Damage] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)  # records whose token table never appeared
    repaired: bool = False


def verify_store(location: str | Path, full: bool = True, repair: bool = False, progress: bool = True) -> Verification:
    """Check every committed shard of a store (every byte with ``full``); with ``repair``,
    un-commit the damaged ones (and clear interrupted commits) so the next run rewrites only them."""
    fs = open_fs(location)
    manifest = read_manifest(fs)
    started = time.perf_counter()
    committed = sorted(committed_shards(fs))
    interrupted = sorted(recorded_shards(fs) - set(committed))
    with tqdm(total=len(committed), unit="shard", desc="verify", disable=not progress) as bar:
        damaged = check_shards(fs, manifest, committed, full, on_checked=lambda _: bar.update(1))
    nbytes = 0
    for index in set(committed) - {d.shard for d in damaged}:
        nbytes += sum(f.get("size", 0) for f in (read_record(fs, index) or {}).get("files", {}).values())
    result = Verification(fs.location, len(manifest["shards"]), len(committed), nbytes,
                          time.perf_counter() - started, damaged, interrupted)
    if repair:
        for index in sorted({d.shard for d in damaged} | set(interrupted)):
            uncommit(fs, index)
        result.repaired = True
    return result


def _check_array_file(fs: StoreFS, rel: str, size: int, spec: dict, full: bool) -> str | None:
    n_chunks = math.prod(s // c for s, c in zip(spec["shards"], spec["chunks"], strict=True))
    with fs.open_read(rel) as f:
        return check_shard_file(f, size, n_chunks, full)


def _check_tokens(fs: StoreFS, rel: str, recorded: dict) -> str | None:
    crc = google_crc32c.value(fs.read_bytes(rel))
    if crc != recorded.get("crc32c"):
        return f"CRC-32C {crc}, the commit recorded {recorded.get('crc32c')}"
    return None
