"""The order a dataset streams rows in: pure index arithmetic, no data.

An epoch is a permutation of *blocks* (chunk-aligned row ranges inside one
shard, read with one request each) seeded by (seed, epoch). Their
concatenation is one virtual stream of every committed row; each rank takes a
contiguous share of it, and each DataLoader worker a contiguous share of its
rank's, cut at whole batches. Every consumer then mixes its rows through a
bounded shuffle buffer. Because everything is a function of (seed, epoch,
rank, world size, worker, workers), a resumed run can replay the index-level
buffer to the exact point it stopped without reading any data.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np


def cut_blocks(ranges: list[tuple[int, int]], block_rows: int) -> np.ndarray:
    """``[n, 2]`` start/stop of every block: each shard range cut into ``block_rows`` pieces."""
    out = [(a, min(a + block_rows, stop)) for start, stop in ranges for a in range(start, stop, block_rows)]
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def epoch_blocks(blocks: np.ndarray, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return blocks
    return blocks[np.random.default_rng([seed, epoch]).permutation(len(blocks))]


def rank_span(n_rows: int, rank: int, world: int, drop_last: bool) -> tuple[int, int]:
    """A rank's share of the stream; with ``drop_last`` every rank gets exactly n_rows // world."""
    if drop_last:
        per = n_rows // world
        return rank * per, (rank + 1) * per
    return n_rows * rank // world, n_rows * (rank + 1) // world


def worker_span(span: tuple[int, int], worker: int, workers: int, batch_size: int, drop_last: bool) -> tuple[int, int]:
    """A worker's share of its rank's span, cut at whole batches so only the rank's last batch can be short."""
    lo, hi = span
    full = (hi - lo) // batch_size
    start = lo + batch_size * (full * worker // workers)
    stop = lo + batch_size * (full * (worker + 1) // workers)
    if worker == workers - 1 and not drop_last:
        stop = hi
    return start, stop


def batch_count(span: tuple[int, int], batch_size: int) -> int:
    return -(-(span[1] - span[0]) // batch_size)


def segments(blocks: np.ndarray, span: tuple[int, int]) -> list[tuple[int, int]]:
    """Row ranges that make up positions [lo, hi) of the stream formed by ``blocks`` in order."""
    lo, hi = span
    ends = np.cumsum(blocks[:, 1] - blocks[:, 0])
    begins = ends - (blocks[:, 1] - blocks[:, 0])
    first = int(np.searchsorted(ends, lo, side="right"))
    out = []
    for i in range(first, len(blocks)):
        if begins[i] >= hi:
            break
        a = int(blocks[i, 0] + max(lo - begins[i], 0))
        b = int(blocks[i, 1] - max(ends[i] - hi, 0))
        if b > a:
            out.append((a, b))
    return out


def resume_point(counts: list[int], batches: int) -> tuple[list[int], int]:
    """How many of each worker's batches are among the first ``batches`` a DataLoader yielded,
    and which worker's batch came next.

    A DataLoader takes batches from its workers in turn, skipping workers that
    have run out; so round r takes one batch from every worker with more than r.
    A resumed DataLoader starts its turns at worker 0 again, so the caller
    rotates worker roles by the returned worker to continue the same sequence.
    """
    counts_ = np.asarray(counts, dtype=np.int64)
    batches = min(int(batches), int(counts_.sum()))
    lo, hi = 0, int(counts_.max(initial=0))
    while lo < hi:  # the number of whole rounds: largest r with sum(min(c, r)) <= batches
        mid = (lo + hi + 1) // 2
        if np.minimum(counts_, mid).sum() <= batches:
            lo = mid
        else:
            hi = mid - 1
    done = np.minimum(counts_, lo)
    left = batches - int(done.sum())
    served = np.flatnonzero(counts_ > lo)[:left]
    done[served] += 1
    following = int(served[-1]) + 1 if left else 0
    return done.tolist(), following % max(len(counts_), 1)


class Load(NamedTuple):
    start: int  # rows [start, stop) of the array go into buffer slots ``slots``
    stop: int
    slots: np.ndarray


class Emit(NamedTuple):
    slots: np.ndarray  # buffer slots whose rows leave the buffer now, in this order


class ShuffleBuffer:
    """A bounded shuffle buffer over slot numbers.

    After each segment is loaded, rows beyond ``capacity`` leave the buffer,
    drawn uniformly from everything in it; at the end the rest leaves in a
    random order. ``rng=None`` keeps stream order (no shuffling). The caller
    moves the data: ``Load`` events say which rows to write into which slots,
    ``Emit`` events which slots to read out, before the next ``Load`` reuses them.
    """

    def __init__(self, segments: list[tuple[int, int]], capacity: int, rng: np.random.Generator | None):
        total = sum(b - a for a, b in segments)
        self.segments, self.capacity, self.rng = segments, min(max(0, capacity), total), rng
        largest = max((b - a for a, b in segments), default=0)
        self.size = self.capacity + largest
        self.slot_row = np.full(self.size, -1, dtype=np.int64)
        self.pool = np.empty(0, dtype=np.int64)  # occupied slots, in arrival order
        self._free = np.arange(self.size, dtype=np.int64)

    def events(self) -> Iterator[Load | Emit]:
        for a, b in self.segments:
            slots, self._free = self._free[: b - a], self._free[b - a :]
            self.slot_row[slots] = np.arange(a, b)
            self.pool = np.concatenate([self.pool, slots])
            yield Load(a, b, slots)
            if len(self.pool) > self.capacity:
                yield self._emit(len(self.pool) - self.capacity)
        if len(self.pool):
            yield self._emit(len(self.pool))

    def upcoming_slots(self, n: int) -> np.ndarray | None:
        """The slots the next ``Load`` of ``n`` rows will get, if already known (emissions
        only append freed slots, so the first free ones are settled), else None."""
        return self._free[:n] if len(self._free) >= n else None

    def _emit(self, k: int) -> Emit:
        if self.rng is None:
            out, self.pool = self.pool[:k], self.pool[k:]
        else:
            pick = self.rng.choice(len(self.pool), size=k, replace=False)
            out = self.pool[pick]
            keep = np.ones(len(self.pool), dtype=bool)
            keep[pick] = False
            self.pool = self.pool[keep]
        self._free = np.concatenate([self._free, out])
        return Emit(out)
