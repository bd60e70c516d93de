"""The two-step route: walk statistics of one committed shard of a stored run.

A shard's statistics cover the sequences whose first token lies in its rows
(see ``embwalk.stats.walk``). Those are read in blocks of whole sequences
by a background thread while the previous block is computed, so reading and
statistics overlap; the time of each is measured apart, which is how the job
reports whether statistics keep up with reading.

Stored values (float16 by default) are upcast to float32 before any statistic:
exactly what the in-pass route feeds after rounding its captures to the store dtype.
Only the arrays the families declare they read are opened (``WalkStats.reads``).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from embwalk.errors import StoreError
from embwalk.stats.config import StatsConfig
from embwalk.stats.head import ModelHead
from embwalk.stats.inputs import ARRAYS, column_numpy, column_tensor
from embwalk.stats.partials import write_shard_partials
from embwalk.stats.walk import WalkStats, shard_label
from embwalk.store import layout as store_layout
from embwalk.store.fs import require_local
from embwalk.store.reader import Store

BLOCK_ROWS = 1024  # rows read at once: several sequences, a few MB per layer


@dataclass(frozen=True)
class Span:
    """One sequence: its id and its rows [start, stop)."""

    seq_id: int
    start: int
    stop: int


class ShardNotReady(Exception):
    """A sequence of the shard runs into rows of a shard that is not committed."""


def store_layers(store: Store) -> dict:
    """What the store holds for the statistics: resid layers, final, pattern layers/heads."""
    arrays = store.manifest["arrays"]
    resid = arrays.get("resid")
    pattern = arrays.get("pattern")
    return {
        "resid_layers": list(resid["layers"]) if resid else None,
        "has_final": "final" in arrays,
        "pattern_layers": list(pattern["layers"]) if pattern else None,
        "pattern_heads": list(pattern["heads"]) if pattern else None,
    }


def has_activations(store: Store) -> bool:
    arrays = store.manifest["arrays"]
    return any(name in arrays for name in ARRAYS)


def walk_stats_for(store: Store, config: StatsConfig, head: ModelHead, index: int) -> WalkStats:
    """A WalkStats laid out like the store's arrays, covering shard ``index``."""
    lay = store_layers(store)
    return WalkStats(
        config, head, shard_label(index),
        resid_layers=lay["resid_layers"] or list(range(head.n_layers + 1)),
        pattern_layers=lay["pattern_layers"], pattern_heads=lay["pattern_heads"],
        has_resid=lay["resid_layers"] is not None, has_final=lay["has_final"],
        columns=store_layout.generation_columns(store.manifest),
    )


def owned_spans(store: Store, index: int, columns: Sequence[str] = ()) -> tuple[list[Span], dict[str, np.ndarray]]:
    """The sequences whose first token lies in shard ``index``, with their token and doc ids
    and ``columns`` of the token table (masked where null: ``column_numpy``); rows of later
    shards included where a document-mode sequence runs past the shard."""
    shards = {s["index"]: s for s in store.manifest["shards"]}
    committed = set(store.committed)
    base = ["row", "seq_id", "pos", "token_id", "doc_id"]
    cols = base + [c for c in columns if c not in base]

    def read(i: int) -> dict[str, np.ndarray]:
        t = store.read_tokens(i, cols)
        return {c: t.column(c).to_numpy() if c in base else column_numpy(t.column(c)) for c in cols}

    own = read(index)
    starts = np.flatnonzero(own["pos"] == 0)
    if starts.size == 0:  # every row continues a sequence that started in an earlier shard
        return [], {}
    own = {c: v[starts[0]:] for c, v in own.items()}
    parts, last_seq, nxt = [own], int(own["seq_id"][-1]), index + 1
    # the last sequence may run on through the following shard(s): their first sequence is it
    while nxt in shards and int(shards[nxt]["seqs"][0]) == last_seq:
        if nxt not in committed:
            raise ShardNotReady(f"sequence {last_seq} runs into {store_layout.shard_name(nxt)}, "
                                "which is not committed")
        more = read(nxt)
        keep = more["seq_id"] == last_seq
        parts.append({c: v[keep] for c, v in more.items()})
        if not keep.all():
            break
        nxt += 1
    data = {c: (np.concatenate if c in base else np.ma.concatenate)([p[c] for p in parts]) for c in cols}
    seq = data["seq_id"]
    edges = np.concatenate([[0], np.flatnonzero(np.diff(seq)) + 1, [len(seq)]])
    row0 = int(data["row"][0])
    spans = [Span(int(seq[a]), row0 + int(a), row0 + int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    extra = {c: data[c] for c in columns}
    return spans, {"token_id": data["token_id"], "doc_id": data["doc_id"], "row0": np.array([row0]), **extra}


def _blocks(spans: list[Span], rows: int = BLOCK_ROWS) -> list[list[Span]]:
    out: list[list[Span]] = [[]]
    size = 0
    for s in spans:
        if out[-1] and size + (s.stop - s.start) > rows:
            out.append([])
            size = 0
        out[-1].append(s)
        size += s.stop - s.start
    return [b for b in out if b]


def shard_stats(root: str | Path, index: int, config: StatsConfig, head: ModelHead,
                device: torch.device | str = "cpu") -> dict:
    """Compute and write shard ``index``'s partials; returns its timings.

    Raises ShardNotReady when one of its sequences needs rows of an uncommitted shard.
    """
    started = time.perf_counter()
    device = torch.device(device)
    head = _on_device(head, device)
    store = Store(root)
    ws = walk_stats_for(store, config, head, index)
    spans, ids = owned_spans(store, index, ws.columns)
    need = ws.reads()
    arrays = {name: store.array(name) for name in need}
    read_seconds = 0.0
    n_bytes = 0
    todo: queue.Queue = queue.Queue(maxsize=2)

    def reader() -> None:
        nonlocal read_seconds, n_bytes
        try:
            for block in _blocks(spans):
                t0 = time.perf_counter()
                r0, r1 = block[0].start, block[-1].stop
                got = {name: arrays[name][r0:r1] for name in need if name != "pattern"}
                if "pattern" in need:
                    got["pattern"] = [arrays["pattern"][s.seq_id] for s in block]
                read_seconds += time.perf_counter() - t0
                n_bytes += sum(v.nbytes for v in got.values() if isinstance(v, np.ndarray))
                n_bytes += sum(p.nbytes for p in got.get("pattern", []))
                todo.put((block, got))
        except BaseException as exc:  # surfaces in the computing thread
            todo.put(exc)
            return
        todo.put(None)

    thread = threading.Thread(target=reader, name=f"stats-read-{index}", daemon=True)
    thread.start()
    compute_seconds = 0.0
    row0 = int(ids["row0"][0]) if spans else 0
    while (item := todo.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        block, got = item
        t0 = time.perf_counter()
        b0 = block[0].start
        for k, s in enumerate(block):
            lo, hi = s.start - b0, s.stop - b0
            n = s.stop - s.start
            resid = _tensor(got.get("resid"), lo, hi, device)
            final = _tensor(got.get("final"), lo, hi, device)
            pattern = None
            if "pattern" in got:
                pattern = torch.from_numpy(got["pattern"][k][..., :n, :n]).to(device)
            t = slice(s.start - row0, s.stop - row0)
            columns = {c: column_tensor(ids[c][t]) for c in ws.columns} if ws.columns else None
            ws.update_sequence(resid, final, torch.from_numpy(ids["token_id"][t].astype(np.int64)),
                               torch.from_numpy(ids["doc_id"][t].astype(np.int64)), pattern, seq_id=s.seq_id,
                               columns=columns)
        compute_seconds += time.perf_counter() - t0
    thread.join()
    t0 = time.perf_counter()
    info = {
        "route": "two-step",
        "read_seconds": round(read_seconds, 4),
        "compute_seconds": round(compute_seconds, 4),
        "bytes_read": int(n_bytes),
    }
    write_shard_partials(root, index, ws, info)
    info.update(shard=index, n_tokens=ws.n_tokens, n_sequences=ws.n_sequences,
                write_seconds=round(time.perf_counter() - t0, 4),
                seconds=round(time.perf_counter() - started, 4),
                family_seconds={k: round(v, 4) for k, v in ws.seconds.items()})
    return info


_HEADS: dict[tuple[int, str], ModelHead] = {}


def _on_device(head: ModelHead, device: torch.device) -> ModelHead:
    """``head`` on ``device``, moved once per worker process and kept."""
    if head.unembed is None or head.unembed.device == device:
        return head
    key = (id(head), str(device))
    if key not in _HEADS:
        _HEADS.clear()
        _HEADS[key] = head.to(device)
    return _HEADS[key]


def _tensor(arr: np.ndarray | None, lo: int, hi: int, device: torch.device) -> torch.Tensor | None:
    if arr is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(arr[lo:hi])).to(device)


def check_store(path: str | Path) -> Store:
    """Open a store for statistics, or fail in one line."""
    root = require_local(path, "statistics")  # partials go through StoreFS; URL stores are untested: refused
    if not (root / store_layout.MANIFEST).is_file():
        if root.exists():
            raise StoreError(f"not an embwalk store (no {store_layout.MANIFEST}): {root}")
        raise StoreError(f"store not found: {root}")
    store = Store(root)
    if not store.committed:
        raise StoreError(f"store {root} has no committed shard yet")
    return store
