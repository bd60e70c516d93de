"""Move rows through the shuffle buffer: read blocks (prefetched), hand out batches.

``order.ShuffleBuffer`` decides which rows go where; this module does the
reading and copying it calls for, and the skipping that resumes a run.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from embwalk.query import order
from embwalk.query.fetch import RowReader


def stream_batches(
    buffer: order.ShuffleBuffer, reader: RowReader, batch_size: int, skip: int, scratch: np.ndarray
) -> Iterator:
    """Move data as the buffer's events say; yield ``(rows, vectors)`` batches after skipping ``skip`` rows.

    While skipping nothing is read: the index-level buffer is replayed, and only
    the rows still inside it at the resume point are fetched. ``scratch`` holds
    the buffer's slots and, after them, room to stage two segments.
    """
    data = scratch[: buffer.size]
    loader = _Prefetcher(reader, buffer, data, scratch[buffer.size :])
    carry_rows, carry = np.empty(0, dtype=np.int64), data[:0]
    emitted, loads = 0, -1
    try:
        for event in buffer.events():
            if isinstance(event, order.Load):
                loads += 1
                if emitted >= skip:
                    loader.load(loads, event)
                continue
            slots = event.slots
            if emitted < skip:
                emitted += len(slots)
                if emitted < skip:
                    continue
                # The resume point: fetch what is still in the buffer, and the rest of this emission.
                slots = slots[len(slots) - (emitted - skip) :]
                live = np.concatenate([buffer.pool, slots])
                data[live] = reader.rows(buffer.slot_row[live])
                if not len(slots):
                    continue
            rows = buffer.slot_row[slots]  # read now: the next Load reuses these slots
            i = 0
            if len(carry_rows):
                i = min(batch_size - len(carry_rows), len(slots))
                carry_rows = np.concatenate([carry_rows, rows[:i]])
                carry = np.concatenate([carry, np.take(data, slots[:i], axis=0)])
                if len(carry_rows) < batch_size:
                    continue
                yield carry_rows, carry
                carry_rows = np.empty(0, dtype=np.int64)
            while i + batch_size <= len(slots):
                yield rows[i : i + batch_size], np.take(data, slots[i : i + batch_size], axis=0)
                i += batch_size
            if i < len(slots):
                carry_rows, carry = rows[i:], np.take(data, slots[i:], axis=0)
        if len(carry_rows):
            yield carry_rows, carry
    finally:
        loader.close()


class _Prefetcher:
    """Reads segment k+1 in a background thread while segment k's rows are handed out,
    so reading overlaps the shuffle and the trainer's own work.

    The read goes straight into the buffer when the slots it will fill are
    already known and contiguous (the buffer's first fill), else into one of
    two alternating staging areas, scattered into the slots at its ``Load``.
    """

    def __init__(self, reader: RowReader, buffer: order.ShuffleBuffer, data: np.ndarray, staging: np.ndarray):
        self.reader, self.buffer, self.data = reader, buffer, data
        half = len(staging) // 2
        self.stages = (staging[:half], staging[half : 2 * half])
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="embwalk-prefetch")
        self._finalizing = sys.is_finalizing  # kept: module globals are gone when it is needed
        self.pending: tuple[int, slice | None, Future] | None = None

    def load(self, k: int, event: order.Load) -> None:
        into = _contiguous(event.slots)
        if self.pending is not None and self.pending[0] == k:
            if self.pending[1] is not None and self.pending[1] != into:
                raise RuntimeError(f"prefetched segment {k} into slots {self.pending[1]}, but it loads into {into}")
            block = self.pending[2].result()
        else:
            block = self._read(k, into)
        segments = self.buffer.segments
        if k + 1 < len(segments):
            upcoming = _contiguous(self.buffer.upcoming_slots(segments[k + 1][1] - segments[k + 1][0]))
            self.pending = (k + 1, upcoming, self.pool.submit(self._read, k + 1, upcoming))
        else:
            self.pending = None
        if block is not None:
            self.data[event.slots] = block

    def _read(self, k: int, into: slice | None) -> np.ndarray | None:
        a, b = self.buffer.segments[k]
        if into is not None:
            self.reader.range(a, b, out=self.data[into])
            return None
        return self.reader.range(a, b, out=self.stages[k % 2][: b - a])

    def close(self) -> None:
        if self._finalizing():
            # A stream finalised at interpreter exit (kept alive by a trainer's module): the
            # pool's module may already be torn down, and its threads are joined by the
            # interpreter itself; nothing will reuse the scratch memory.
            return
        # Wait: a read still running would write into scratch memory the next epoch reuses.
        self.pool.shutdown(wait=True, cancel_futures=True)


def _contiguous(slots: np.ndarray | None) -> slice | None:
    if slots is None or len(slots) == 0 or slots[-1] - slots[0] != len(slots) - 1 or (np.diff(slots) != 1).any():
        return None
    return slice(int(slots[0]), int(slots[-1]) + 1)
