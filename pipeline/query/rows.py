"""Which token rows a reader may touch: rows of committed shards, nothing else."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.errors import StoreError
from pipeline.query.errors import QueryError


class CommittedRows:
    """The committed shards' row ranges, checked with a binary search (no per-token mask)."""

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


def as_rows(obj) -> np.ndarray:
    """Row numbers from a Selection, a table or data frame with a ``row`` column, or numbers."""
    if isinstance(getattr(obj, "rows", None), np.ndarray):  # a Selection
        return obj.rows
    if isinstance(obj, (pa.Table, pa.RecordBatch)):
        if "row" not in obj.column_names:
            raise QueryError(f"the table has no 'row' column to join on (columns: {', '.join(obj.column_names)})")
        return obj.column("row").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if hasattr(obj, "to_arrow_table"):  # a DuckDB relation
        return as_rows(obj.to_arrow_table())
    if hasattr(obj, "columns") and hasattr(obj, "__getitem__") and not isinstance(obj, np.ndarray):  # pandas
        if "row" not in obj.columns:
            columns = ", ".join(map(str, obj.columns))
            raise QueryError(f"the data frame has no 'row' column to join on (columns: {columns})")
        return np.asarray(obj["row"], dtype=np.int64)
    if isinstance(obj, slice):
        raise QueryError("give rows as numbers or a range(...), not a slice")
    rows = np.asarray(obj)
    if rows.dtype.kind not in "iu" and rows.size:
        raise QueryError(f"rows must be integers, got {rows.dtype}")
    return rows.astype(np.int64, copy=False).reshape(-1)
