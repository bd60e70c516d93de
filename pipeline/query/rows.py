"""Row numbers from whatever a user hands over: a Selection, a table with a ``row`` column, numbers.

(Which rows may be read, those of committed shards, is ``embwalk.store.reader.CommittedRows``.)
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from embwalk.query.errors import QueryError


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
