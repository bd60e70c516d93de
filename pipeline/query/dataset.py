"""Stream one site's vectors into a trainer: a torch IterableDataset of shuffled batches.

    ds = store.dataset("resid_post.6", batch_size=4096, seed=0)
    loader = DataLoader(ds, batch_size=None, num_workers=2)   # ds yields whole batches
    for step, x in enumerate(loader): ...                     # x: [4096, d_model]

Reads go block by block (``block_rows`` rows of one shard, one read each) in an
order shuffled across shards by (seed, epoch), and rows are mixed through a
bounded shuffle buffer (``buffer_rows``). Ranks (``torch.distributed``, or
``rank``/``world_size``) and DataLoader workers each take a disjoint share, so
every committed row comes exactly once per epoch. ``set_epoch(e)`` picks the
epoch; ``state_dict(batches)`` / ``load_state_dict`` resume after the first
``batches`` batches this rank consumed (with the same workers, world size and
options). The order is a function of seed, epoch, world size, workers and the
options, so a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from embwalk.errors import SiteError, StoreError
from embwalk.query import order
from embwalk.query.errors import QueryError
from embwalk.query.fetch import RowReader
from embwalk.query.stream import stream_batches
from embwalk.query.vector_sites import vector_sites
from embwalk.store.reader import CommittedRows, Store

BLOCK_BYTES = 8 << 20  # one read: big enough to stream at disk speed, small enough to mix shards well
BUFFER_BYTES = 256 << 20  # default shuffle buffer per worker


class Snapshot(Protocol):
    """A reader with a snapshot of its committed shards: a ``QueryStore``."""

    reader: Store
    committed: list[int]


class VectorDataset(IterableDataset):
    def __init__(
        self,
        store: Store | Snapshot | str | Path,
        site: str,
        *,
        batch_size: int = 4096,
        shuffle: bool = True,
        seed: int = 0,
        buffer_rows: int | None = None,
        block_rows: int | None = None,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        dtype: torch.dtype | None = None,
        with_rows: bool = False,
        shards: list[int] | None = None,
        storage_options: dict | None = None,
        direct: bool | None = None,
    ):
        """``batch_size`` rows per yielded tensor; ``buffer_rows`` (default: 256 MB worth) bounds the
        shuffle buffer of each worker; ``block_rows`` (default: a shard, at most 8 MB) is one read;
        ``drop_last`` drops the rank's short last batch and evens ranks out (DDP needs equal counts);
        ``dtype`` converts batches (default: the store's dtype); ``with_rows`` yields ``(rows, vectors)``;
        ``shards`` pins the shards read (default: those committed now, a snapshot).

        ``store``: a reader (``embwalk.store.reader.Store``), a ``QueryStore`` (its snapshot of
        committed shards is the default and what ``shards`` must be in), or a location opened
        with ``storage_options``. Workers reopen the store from its location, options and manifest."""
        if isinstance(store, (str, Path)):
            store = Store(store, storage_options)
        reader = store if isinstance(store, Store) else store.reader
        committed = store.committed  # a reader's committed shards now, or a QueryStore's snapshot
        sites = vector_sites(reader.manifest, site)
        if len(sites) != 1:
            raise SiteError(f"a dataset streams one site; {site!r} names {len(sites)} (e.g. resid_post.6)")
        self.site = sites[0]
        self.location, self.storage_options = reader.location, reader.storage_options
        self.manifest = reader.manifest
        self.shards = sorted(committed if shards is None else {int(s) for s in shards})
        not_committed = sorted(set(self.shards) - set(committed))
        if not_committed:
            raise StoreError(f"shard {not_committed[0]} of {reader.location} is not committed (yet)")
        spec = self.manifest["arrays"][self.site.array]
        self.d_model = int(spec["shape"][-1])
        row_bytes = self.d_model * np.dtype(spec["dtype"]).itemsize
        chunk = int(spec["chunks"][0])
        for name, value in (("batch_size", batch_size), ("buffer_rows", buffer_rows), ("block_rows", block_rows)):
            if value is not None and (not isinstance(value, int) or value < (0 if name == "buffer_rows" else 1)):
                raise QueryError(f"{name} must be a positive integer, got {value!r}")
        default_block = min(int(spec["shards"][0]), max(chunk, BLOCK_BYTES // row_bytes // chunk * chunk))
        self.block_rows = block_rows or default_block
        self.buffer_rows = max(self.block_rows, BUFFER_BYTES // row_bytes) if buffer_rows is None else buffer_rows
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, int(seed), drop_last
        self.rank, self.world_size = rank, world_size
        self.dtype, self.with_rows, self.direct = dtype, with_rows, direct
        self.ranges = CommittedRows(self.manifest, self.shards).ranges
        self.n_rows = sum(b - a for a, b in self.ranges)
        self._blocks = order.cut_blocks(self.ranges, self.block_rows)
        # (epoch, batches to skip) in shared memory: persistent DataLoader workers see set_epoch
        self._position = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._seen = 0

    # -- position ------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning (call before each epoch, as with DistributedSampler)."""
        self._position[0], self._position[1], self._seen = int(epoch), 0, 0

    @property
    def epoch(self) -> int:
        return int(self._position[0])

    def state_dict(self, batches: int | None = None) -> dict:
        """The position after ``batches`` batches of the current epoch on this rank
        (default: as counted by ``endless()`` or a worker-less loop)."""
        return {
            "site": self.site.name, "seed": self.seed, "batch_size": self.batch_size,
            "world_size": self._rank_world()[1], "shards": list(self.shards),
            "epoch": self.epoch, "batches": self._seen if batches is None else int(batches),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position: the next iteration skips the batches already consumed."""
        mine = self.state_dict()
        for key in ("site", "seed", "batch_size", "world_size", "shards"):
            if state.get(key) != mine[key]:
                raise QueryError(f"cannot resume: the saved position has {key}={_short(state.get(key))}, "
                                 f"this dataset {_short(mine[key])}")
        self._position[0], self._position[1] = int(state["epoch"]), int(state["batches"])
        self._seen = int(state["batches"])

    def __len__(self) -> int:
        """Batches per epoch on this rank (all its workers together)."""
        rank, world = self._rank_world()
        span = order.rank_span(self.n_rows, rank, world, self.drop_last)
        full, rest = divmod(span[1] - span[0], self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def endless(self, **loader_options) -> Iterator[torch.Tensor]:
        """Batches epoch after epoch through a DataLoader (``num_workers`` etc. as options):
        a SAELens ``DataProvider``, or ``data`` for dictionary_learning's ``trainSAE``."""
        if loader_options.get("num_workers"):
            loader_options.setdefault("persistent_workers", True)  # they follow set_epoch
        loader = DataLoader(self, batch_size=None, **loader_options)
        workers = loader.num_workers > 0
        while True:
            for batch in loader:
                if workers:  # without workers, __iter__ counts in this process itself
                    self._seen += 1
                yield batch
            self.set_epoch(self.epoch + 1)

    # -- iteration -----------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        rank, world = self._rank_world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        span = order.rank_span(self.n_rows, rank, world, self.drop_last)
        spans = [order.worker_span(span, w, workers, self.batch_size, self.drop_last) for w in range(workers)]
        epoch, start = self._position.tolist()
        done, following = order.resume_point([order.batch_count(s, self.batch_size) for s in spans], start)
        role = (worker + following) % workers  # a resumed DataLoader starts at worker 0: rotate to continue in turn
        skip = done[role] * self.batch_size
        blocks = order.epoch_blocks(self._blocks, self.seed, epoch, self.shuffle)
        rng = np.random.default_rng([self.seed, epoch, rank, role, 1]) if self.shuffle else None
        buffer = order.ShuffleBuffer(order.segments(blocks, spans[role]), self.buffer_rows if self.shuffle else 0, rng)
        store = Store(self.location, self.storage_options, manifest=self.manifest)
        reader = RowReader(store, self.site, self.direct)
        for rows, vectors in stream_batches(buffer, reader, self.batch_size, skip, self._scratch(buffer, reader)):
            out = torch.from_numpy(vectors)
            if self.dtype is not None:
                out = out.to(self.dtype)
            if info is None:
                self._seen += 1
            yield (torch.from_numpy(rows), out) if self.with_rows else out

    def _scratch(self, buffer: order.ShuffleBuffer, reader: RowReader) -> np.ndarray:
        # Kept between epochs: a fresh buffer costs a page fault per 4 KB on first write.
        rows = buffer.size + 2 * max((b - a for a, b in buffer.segments), default=0)
        have = getattr(self, "_scratch_array", None)
        if have is None or have.shape[0] < rows or have.shape[1] != reader.d or have.dtype != reader.dtype:
            have = self._scratch_array = np.empty((rows, reader.d), dtype=reader.dtype)
        return have[:rows]

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_scratch_array", None)  # workers allocate their own
        return state

    def _rank_world(self) -> tuple[int, int]:
        if self.rank is None and self.world_size is None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                return torch.distributed.get_rank(), torch.distributed.get_world_size()
            return 0, 1
        rank, world = int(self.rank or 0), int(self.world_size or 1)
        if not 0 <= rank < world:
            raise QueryError(f"rank {rank} is outside world_size {world}")
        return rank, world


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
