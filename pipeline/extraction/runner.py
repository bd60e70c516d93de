"""Extract shards: batches through the hooked model, rows into the store.

``ShardRunner`` owns one loaded model and processes any shard of a plan, so
the local executor and Ray workers share it. It reads only the corpus rows of
the shard at hand (``tokens_for(shard)``: from the store's staged token rows,
or a window of an in-memory corpus). Compute and I/O overlap: the
store writes of shard n (and the pattern writes of each batch) run on one
writer thread, in order, while shard n+1 computes. ``run`` returns a future
that resolves to the shard's commit record once its data is durable; at most
``max_pending`` shards wait for their writes, which bounds memory.

Observers (``ShardObserver``: the in-pass walk statistics, pipeline/stats/inpass.py)
see every shard at three fixed points: its start, each batch's captures, and just
before its commit, on the writer thread.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from embwalk.corpus.sequences import ShardTokens
from embwalk.corpus.shuffle import SOURCE_POS
from embwalk.extraction.allocator import keep_freed_memory
from embwalk.models.capture import CaptureLayout, Capturer
from embwalk.models.loading import LoadedModel
from embwalk.plan import Shard
from embwalk.store import layout as store_layout
from embwalk.store.writer import StoreWriter


class ShardObserver(Protocol):
    """What the runner tells an observer of its shards, in this order per shard."""

    def start_shard(self, shard: Shard) -> Any:
        """A shard starts computing; returns the observer's state for it."""

    def on_batch(self, state: Any, got: dict[str, torch.Tensor], batch: list[int], starts: list[int],
                 lengths: list[int], shard: Shard, win: ShardTokens) -> None:
        """A batch's captures ``got`` (the capture buffers: read them before returning)."""

    def before_commit(self, state: Any, shard: Shard) -> None:
        """On the writer thread, after the shard's pattern writes and before its commit;
        raising fails the shard (no commit)."""


class ShardRunner:
    def __init__(
        self,
        loaded: LoadedModel,
        layout: CaptureLayout,
        tokens_for: Callable[[Shard], ShardTokens],
        writer: StoreWriter,
        vocabulary: list[str],
        dtype: torch.dtype = torch.float16,
        batch_size: int = 8,
        seq_len: int = 256,
        max_pending: int = 2,
        store_arrays: bool = True,
        observers: Sequence[ShardObserver] = (),
        forward: Callable[..., dict[str, torch.Tensor]] | None = None,
    ):
        """``layout`` says what the hooks capture; ``observers`` see every shard
        (``ShardObserver``: e.g. the in-pass walk statistics); ``store_arrays=False``
        stores none of the captured arrays. ``forward`` replaces the one forward pass per
        batch (``forward(capturer, ids, mask, out, batch, starts, win)`` fills the capture
        buffers and the window's rows: a generation, pipeline/generation/forward.py)."""
        keep_freed_memory()  # batches reuse activation memory instead of faulting it in again
        self.loaded, self.tokens_for, self.writer = loaded, tokens_for, writer
        self.layout, self.dtype, self.batch_size = layout, dtype, batch_size
        self.forward = forward
        self.capturer = Capturer(loaded, layout, dtype, run_to_end=forward is not None)
        self.seq_len = seq_len
        self.vocabulary = pa.array(vocabulary, type=pa.string())
        self.pad_id = _pad_id(loaded.tokenizer)
        per_token = [a for a in writer.manifest["arrays"].values() if a["dims"][0] == "token"]
        self.chunk_rows = per_token[0]["chunks"][0] if per_token else 1  # the same for every per-token array
        self.max_rows = -(-writer.manifest["shard_tokens"] // self.chunk_rows) * self.chunk_rows
        self._buffer_pool: queue.SimpleQueue = queue.SimpleQueue()
        self.store_arrays = store_arrays
        self.observers = list(observers)
        # One writer thread: writes run in submission order, so a shard's commit
        # always follows its own pattern writes.
        self.writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embwalk-writer")
        self.max_pending = max_pending
        self.pending: list[Future] = []
        self.compute_lock = threading.Lock()  # Ray workers call run from two threads

    def run(self, shard: Shard, on_tokens: Callable[[int], None] | None = None) -> Future:
        """Compute a shard and queue its writes; the future resolves after its commit."""
        with self.compute_lock:
            self._wait_for_room()
            future = self._compute(shard, on_tokens)
            self.pending.append(future)
        return future

    def _wait_for_room(self) -> None:
        """Block while ``max_pending`` shards still wait for their writes (errors
        stay in each shard's own future, for its caller to see)."""
        self.pending = [f for f in self.pending if not f.done()]
        while len(self.pending) >= self.max_pending:
            wait([self.pending.pop(0)])

    def _compute(self, shard: Shard, on_tokens: Callable[[int], None] | None) -> Future:
        started, started_at = time.perf_counter(), time.time()
        win = self.tokens_for(shard)
        bufs, flats = self._shard_buffers(shard)
        pattern_files: dict[str, dict] = {}  # filled on the writer thread: what the commit record lists
        pattern_writes: list[Future] = []
        observed = [(obs, obs.start_shard(shard)) for obs in self.observers]
        for batch in self._batches(shard, win):
            starts = [win.sequence_rows(s)[0] for s in batch]
            lengths = [win.sequence_rows(s)[1] - a for s, a in zip(batch, starts, strict=True)]
            ids, mask = self._inputs(win, starts, lengths)
            out = self._direct_views(batch, starts, lengths, bufs, shard)
            if self.forward is None:
                got = self.capturer.run(ids, mask, out)
            else:
                got = self.forward(self.capturer, ids, mask, out, batch, starts, win)
            if out is None:
                self._scatter(got, starts, lengths, bufs, shard)
            for obs, state in observed:
                obs.on_batch(state, got, batch, starts, lengths, shard, win)
            for kind, name in store_layout.SEQUENCE_ARRAYS.items():
                if name in got and self.store_arrays:
                    keys = lengths
                    if kind in store_layout.CROSS_KINDS:  # a decoder store: keys are the pair's encoder inputs
                        keys = [len(win.inputs[s - win.seq0]) for s in batch]
                    self._queue_patterns(name, got[name], batch, lengths, keys, shard, pattern_files,
                                         pattern_writes)
            if on_tokens:
                on_tokens(_owned(starts, lengths, shard))
        if self.loaded.device.type == "cuda":
            torch.cuda.current_stream(self.loaded.device).synchronize()  # asynchronous copies into pinned buffers
        arrays = {name: buf.numpy() for name, buf in bufs.items()}
        extra = {
            "seqs": list(shard.seqs),
            "started_at": started_at,
            "compute_seconds": round(time.perf_counter() - started, 3),
        }
        tokens = self._token_table(shard, win)

        def commit() -> dict:
            try:
                for write in pattern_writes:
                    write.result()  # a failed pattern write fails the shard: no commit
                for obs, state in observed:  # before the commit: a committed shard always has its statistics
                    obs.before_commit(state, shard)
                return self.writer.write_shard(shard.index, shard.rows, arrays, tokens, extra, pattern_files)
            finally:
                self._buffer_pool.put(flats)

        return self.writer_thread.submit(commit)

    def close(self) -> None:
        """Wait for every queued write and remove the hooks."""
        try:
            self.writer_thread.shutdown(wait=True)
        finally:
            self.capturer.close()

    # -- batching ------------------------------------------------------------------------

    def _batches(self, shard: Shard, win: ShardTokens) -> list[list[int]]:
        seqs = list(range(*shard.seqs))
        alone: list[list[int]] = []
        if self.forward is not None:
            # A generation that straddles two shards is generated by both: alone in its batch, so
            # both compute exactly the same tokens and values (batch shapes change float rounding).
            r0, r1 = shard.rows
            inside = {s: r0 <= win.sequence_rows(s)[0] and win.sequence_rows(s)[1] <= r1 for s in seqs}
            alone = [[s] for s in seqs if not inside[s]]
            seqs = [s for s in seqs if inside[s]]
        # Longest first: batches of similar length waste little on padding.
        seqs.sort(key=lambda s: np.subtract(*win.sequence_rows(s)))
        return alone + [seqs[i : i + self.batch_size] for i in range(0, len(seqs), self.batch_size)]

    def _inputs(
        self, win: ShardTokens, starts: list[int], lengths: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = [win.token_ids[win.rows(a, a + n)] for a, n in zip(starts, lengths, strict=True)]
        return right_padded(rows, self.pad_id)

    def _shard_buffers(self, shard: Shard) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Host buffers for a shard's per-token arrays, layer-major ([layer, row, d]).

        Layer-major makes every hook's copy contiguous and every Zarr chunk
        (a block of rows of one layer) a contiguous slice, so the store writes
        the buffer as it lies (store/shardfile.py). Rows are padded to whole
        chunks; the padding is zeroed so the files are deterministic.
        """
        rows = -(-shard.n_rows // self.chunk_rows) * self.chunk_rows
        shapes = {
            name: (shape[0], rows, shape[1]) if len(shape) == 2 else (rows, shape[0])
            for name, shape in self._per_token_shapes().items()
        }
        flats = self._take_flat_buffers(shapes)
        bufs = {}
        for name, shape in shapes.items():
            buf = flats[name][: math.prod(shape)].view(shape)
            (buf[:, shard.n_rows :] if buf.ndim == 3 else buf[shard.n_rows :]).zero_()
            bufs[name] = buf
        return bufs, flats

    def _take_flat_buffers(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        """Reuse the buffers of a committed shard: fresh pages cost page faults on
        the CPU, and pinned memory (for asynchronous copies from a GPU) is slow to
        allocate. At most max_pending + 1 sets exist."""
        try:
            return self._buffer_pool.get_nowait()
        except queue.Empty:
            pin = self.loaded.device.type == "cuda"
            return {
                name: torch.empty(math.prod(shape[:-2]) * self.max_rows * shape[-1], dtype=self.dtype, pin_memory=pin)
                for name, shape in shapes.items()
            }

    def _direct_views(self, batch, starts, lengths, bufs, shard: Shard) -> dict[str, torch.Tensor] | None:
        """Views of the shard buffers the hooks can fill in place: a CPU batch of
        equal-length, consecutive sequences that lie inside the shard's rows."""
        if not bufs or self.loaded.device.type != "cpu":
            return None
        first, width, n = starts[0], lengths[0], len(batch)
        consecutive = batch == list(range(batch[0], batch[0] + n))
        inside = shard.rows[0] <= first and first + width * n <= shard.rows[1]
        if not consecutive or min(lengths) != width or not inside:
            return None
        out = self.capturer.scratch(n, width)
        start = first - shard.rows[0]
        for name, buf in bufs.items():
            if buf.ndim == 3:  # [layer, batch*seq, d] seen as [batch, seq, layer, d]: the layout the hooks write
                out[name] = buf[:, start : start + width * n].view(buf.shape[0], n, width, -1).permute(1, 2, 0, 3)
            else:
                out[name] = buf[start : start + width * n].view(n, width, -1)
        return out

    def _scatter(self, got, starts, lengths, bufs, shard: Shard) -> None:
        r0, r1 = shard.rows
        for j, (start, n) in enumerate(zip(starts, lengths, strict=True)):
            lo, hi = max(start, r0), min(start + n, r1)  # the part of the sequence this shard owns
            for name, buf in bufs.items():
                src = got[name][j, lo - start : hi - start]
                if buf.ndim == 3:
                    buf[:, lo - r0 : hi - r0].copy_(src.transpose(0, 1), non_blocking=True)
                else:
                    buf[lo - r0 : hi - r0].copy_(src, non_blocking=True)

    def _queue_patterns(self, name: str, pattern, batch, lengths, keys, shard: Shard, files: dict,
                        writes: list[Future]) -> None:
        """Queue the per-sequence array ``name``'s writes: sequence j's ``lengths[j]`` queries over its
        ``keys[j]`` keys (its own tokens; a decoder store's cross patterns: its encoder inputs)."""
        p0, p1 = shard.pattern_seqs
        for j, (s, n, m) in enumerate(zip(batch, lengths, keys, strict=True)):
            if not p0 <= s < p1:
                continue
            # The next batch reuses the capture buffer: copy the sequence out, zeros past its length.
            shape = (1, *pattern.shape[1:3], self.seq_len, self.seq_len)
            full = n == m == self.seq_len
            block = (np.empty if full else np.zeros)(shape, dtype=_np_dtype(self.dtype))
            block[0, :, :, :n, :m] = pattern[j, :, :, :n, :m].cpu().numpy()
            writes.append(self.writer_thread.submit(self._write_pattern, name, s, block, files))

    def _write_pattern(self, name: str, seq: int, block: np.ndarray, files: dict[str, dict]) -> None:
        files.update(self.writer.write_patterns(seq, block, name))  # on the writer thread, in sequence order

    def _per_token_shapes(self) -> dict[str, tuple[int, ...]]:
        if not self.store_arrays:
            return {}
        arrays = self.writer.manifest["arrays"]  # [token, layer, width]: d_model, or a router's experts
        names = [*self.layout.array_layers(), *(["final"] if self.layout.final else [])]
        return {name: tuple(arrays[name]["shape"][1:]) for name in names}

    def _token_table(self, shard: Shard, win: ShardTokens) -> pa.Table:
        r0, r1 = shard.rows
        rows = win.rows(r0, r1)
        token_ids = win.token_ids[rows]
        seq_ids = win.seq0 + np.searchsorted(win.seq_offsets, np.arange(r0, r1), side="right") - 1
        table = pa.table(
            {
                "row": pa.array(np.arange(r0, r1, dtype=np.int64)),
                "doc_id": pa.array(win.doc_ids[rows].astype(np.int64)),
                "seq_id": pa.array(seq_ids.astype(np.int64)),
                "pos": pa.array(win.positions[rows].astype(np.int32)),
                "doc_pos": pa.array(win.doc_positions[rows].astype(np.int32)),
                "token_id": pa.array(token_ids.astype(np.int32)),
                "token": self.vocabulary.take(pa.array(token_ids.astype(np.int64))),
            },
            schema=store_layout.TOKEN_SCHEMA,
        )
        if win.source_positions is not None:
            # a shuffled store (pipeline/corpus/shuffle.py): where each fed token stood in its sequence,
            # an extra last column, so unshuffled stores keep TOKEN_SCHEMA exactly
            table = table.append_column(pa.field(SOURCE_POS, pa.int32()), pa.array(win.source_positions[rows]))
        for name, values in (win.columns or {}).items():  # a generation's (pipeline/generation/)
            table = table.append_column(name, _arrow(values[rows]))
        if win.inputs is not None:  # a decoder store: each row's encoder input length (its cross-attention's keys)
            lengths = np.fromiter(map(len, win.inputs), dtype=np.int32, count=len(win.inputs))
            table = table.append_column(pa.field(store_layout.INPUT_LEN, pa.int32()),
                                        pa.array(lengths[seq_ids - win.seq0]))
        return table


def _arrow(values: np.ndarray) -> pa.Array:
    """A column from a numpy array: masked entries become nulls, a 2-d array a fixed-size list per row."""
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) else None
    data = np.ma.getdata(values)
    if data.ndim == 2:
        row_mask = None if mask is None else pa.array(mask.all(axis=1))
        return pa.FixedSizeListArray.from_arrays(pa.array(data.ravel()), data.shape[1], mask=row_mask)
    return pa.array(data, mask=mask)


def right_padded(sequences: Sequence[np.ndarray], pad_id: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids [batch, longest] right-padded with ``pad_id``, and the attention mask (None when
    every sequence has the longest length: nothing is padded)."""
    lengths = [len(x) for x in sequences]
    width = max(lengths)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for j, x in enumerate(sequences):
        ids[j, : len(x)] = torch.from_numpy(np.asarray(x))
    if min(lengths) == width:
        return ids, None
    return ids, (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


def _owned(starts: list[int], lengths: list[int], shard: Shard) -> int:
    r0, r1 = shard.rows
    return int(sum(max(0, min(a + n, r1) - max(a, r0)) for a, n in zip(starts, lengths, strict=True)))


def _pad_id(tokenizer) -> int:
    for attr in ("pad_token_id", "eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, attr, None) if tokenizer is not None else None
        if value is not None:
            return int(value)
    return 0  # padded positions are masked and never stored, so any id works


def _np_dtype(dtype: torch.dtype):
    return torch.empty((), dtype=dtype).numpy().dtype
