"""A store opened for questions: summary, selections, SQL, vectors, attention and datasets.

``open_store`` takes a snapshot of the committed shards: while an extraction is
still running, everything here sees only the shards committed when the store
was opened (or last ``refresh()``-ed), never half-written rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from embwalk.errors import StoreError
from embwalk.query.errors import QueryError
from embwalk.query.fetch import RowReader
from embwalk.query.patterns import sequence_pattern
from embwalk.query.rows import as_rows
from embwalk.query.selection import TOKEN_COLUMNS, Selection
from embwalk.query.selectors import token_condition
from embwalk.query.tables import Tables
from embwalk.query.vector_sites import VectorSite, vector_sites
from embwalk.store.layout import CROSS_KINDS, INPUT_LEN, SEQUENCE_ARRAYS
from embwalk.store.reader import CommittedRows, Store
from embwalk.store.stacks import STACK_DIRS, read_stacks

if TYPE_CHECKING:  # torch is imported only by code that streams to a trainer
    from embwalk.query.dataset import VectorDataset


def open_store(location: str | Path, storage_options: dict | None = None, stack: str | None = None) -> QueryStore:
    """Open a store at a local path or an fsspec URL (``s3://bucket/store``, ``memory://x``).

    ``stack``: of a two-stack store (an encoder-decoder model's, pipeline/store/stacks.py), the
    stack whose tokens to read, "enc" or "dec" (the same as opening ``location/encoder`` or
    ``location/decoder``); sequence s is the same record in both."""
    if stack is not None:
        location = _stack_location(location, stack, storage_options)
    return QueryStore(location, storage_options)


def _stack_location(location: str | Path, stack: str, storage_options: dict | None) -> str:
    if stack not in STACK_DIRS:
        raise StoreError(f"stack must be one of {', '.join(STACK_DIRS)}, got {stack!r}")
    stacks = read_stacks(str(location), storage_options)
    if stacks is None:
        raise StoreError(f"{location} is not a two-stack store (an encoder-decoder model's encoder and decoder "
                         "tokens): open it without stack=")
    return stacks[stack]


class QueryStore:
    """The query facade over one ``reader`` (embwalk.store.reader.Store), with a snapshot of
    its committed shards (``committed``, ``committed_rows``) that every question here sees."""

    def __init__(self, location: str | Path, storage_options: dict | None = None):
        self.reader = Store(location, storage_options)
        self.location = self.reader.location
        self._readers: dict[tuple[VectorSite, bool | None], RowReader] = {}
        self._tables: Tables | None = None
        self.refresh()

    def refresh(self) -> QueryStore:
        """See shards committed since the store was opened."""
        self.committed = self.reader.committed
        self.committed_rows = CommittedRows(self.manifest, self.committed)
        if self._tables is not None:
            self._tables.close()
            self._tables = None
        return self

    # -- what is in it -------------------------------------------------------------------

    @property
    def manifest(self) -> dict:
        """The reader's manifest (one dict: what the reader, its row readers and this facade see)."""
        return self.reader.manifest

    @manifest.setter
    def manifest(self, manifest: dict) -> None:
        self.reader.manifest = manifest

    @property
    def n_tokens(self) -> int:
        """Rows readable now (committed shards); the manifest's ``n_tokens`` is the planned total."""
        return self.committed_rows.count

    @property
    def tables(self) -> list[str]:
        return list(self._sql_tables().names)

    def sites(self, names: str | list[str]) -> list[VectorSite]:
        return vector_sites(self.manifest, names)

    def info(self) -> dict:
        return self.reader.info(self.committed)

    def summary(self) -> str:
        return self.reader.summary(self.committed)

    # -- SQL and selections --------------------------------------------------------------

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run DuckDB SQL over ``tokens`` and the stats tables; returns an Arrow table."""
        return self._sql_tables().sql(query, params)

    @property
    def duckdb(self):
        """The DuckDB connection with every table registered, for relational work beyond ``sql``."""
        return self._sql_tables().con

    def select(
        self, *, row=None, doc=None, seq=None, pos=None, doc_pos=None, token_id=None, token=None,
        regex: str | None = None, where: str | None = None, sql: str | None = None,
        columns: list[str] | None = None, limit: int | None = None,
    ) -> Selection:
        """Token rows matching every selector given (see ``embwalk.query.selectors``), in row order.

        ``sql`` instead runs a whole query that returns a ``row`` column (a join
        with a stats table, say); the rows keep the query's order and columns.
        """
        tables = self._sql_tables()
        if sql is not None:
            given = [k for k, v in dict(row=row, doc=doc, seq=seq, pos=pos, doc_pos=doc_pos, token_id=token_id,
                                        token=token, regex=regex, where=where, columns=columns).items()
                     if v is not None]
            if given:
                raise QueryError(f"sql= is a whole query; put {', '.join(given)} into it instead")
            return self._from_query(tables.sql(sql), limit)
        if regex is not None:
            tables.check_regex(regex)
        condition, params = token_condition(
            row=row, doc=doc, seq=seq, pos=pos, doc_pos=doc_pos, token_id=token_id, token=token, regex=regex,
            where=where,
        )
        extra = "".join(f", {c}" for c in columns or [])
        query = f"SELECT tokens.*{extra} FROM tokens WHERE {condition} ORDER BY row"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return Selection(self, tables.sql(query, params))

    def take(self, rows) -> Selection:
        """A selection of given rows (numbers, or anything with a ``row`` column) in the given order."""
        return self._from_query(pa.table({"row": as_rows(rows)}), None)

    # -- vectors -------------------------------------------------------------------------

    def vectors(self, rows, sites: str | list[str], direct: bool | None = None) -> np.ndarray:
        """Vectors of ``rows`` (numbers, a Selection, or a table with a ``row`` column).

        ``[n, d_model]`` for one site given as a string, else ``[n, n_sites, d_model]``.
        """
        rows = as_rows(rows)
        resolved = self.sites(sites)
        self.committed_rows.check(rows, f"store {self.location}")
        parts = [self._reader(s, direct).rows(rows) for s in resolved]
        if isinstance(sites, str) and len(resolved) == 1:
            return parts[0]
        d = int(self.manifest["model"]["d_model"])
        for site, part in zip(resolved, parts, strict=True):
            if part.shape[-1] != d:  # a router's logits: one per expert
                raise QueryError(f"{site.name} is {part.shape[-1]} wide, not d_model ({d}): read it alone, "
                                 f"vectors(rows, {site.name!r})")
        return np.stack(parts, axis=1) if parts else np.empty((len(rows), 0, d))

    def tensor(self, rows, sites: str | list[str]):
        import torch

        return torch.from_numpy(self.vectors(rows, sites))

    def attention(self, seq: int, layers: list[int | str] | None = None, heads: list[int] | None = None,
                  labelled: bool = False, kind: str = "attn_pattern"):
        """Attention of one sequence, ``[layer, head, query, key]`` cropped to its length: the
        probabilities (``kind="attn_pattern"``), or another per-sequence site kind a store holds:
        a T5 decoder store's ``cross_pattern`` (keys: the pair's encoder inputs) and the score's
        terms ``attn_score``, ``attn_content``, ``attn_bias``, ``cross_score`` (docs/seq2seq.md).

        ``labelled=True`` returns an xarray DataArray with block and head numbers and the
        sequence's token texts on the query axis (and the key axis, for its own tokens).
        """
        length = keys = None
        if kind != "attn_pattern":  # only probabilities show their length by themselves
            length, keys = self._sequence_extent(int(seq), kind in CROSS_KINDS)
        data, blocks, heads_ = sequence_pattern(self.reader, self.committed, seq, layers, heads, kind, length, keys)
        if not labelled:
            return data
        import xarray as xr

        n = data.shape[-2]
        tokens = self.sql("SELECT token FROM tokens WHERE seq_id = ? ORDER BY row", [int(seq)]).column("token")
        text = tokens.to_pylist()[:n] if len(tokens) >= n else [None] * n
        coords = {"layer": blocks, "head": heads_, "query_token": ("query", text)}
        if kind not in CROSS_KINDS:
            coords["key_token"] = ("key", text)
        return xr.DataArray(
            data, dims=("layer", "head", "query", "key"), coords=coords,
            name=SEQUENCE_ARRAYS[kind] if kind != "attn_pattern" else "attention",
            attrs={"seq": int(seq), "store": self.location, "kind": kind},
        )

    def _sequence_extent(self, seq: int, cross: bool) -> tuple[int, int | None]:
        """A sequence's committed rows and, for a cross-attention, its encoder input's length (the
        token table's ``input_len``; None in a store written before it). A sequence that runs on into
        a shard not committed yet is refused rather than cut short."""
        cross = cross and INPUT_LEN in self.sql("SELECT * FROM tokens LIMIT 0").column_names
        extra = f", max({INPUT_LEN}) AS k" if cross else ""
        got = self.sql(f"SELECT count(*) AS n, max(row) AS last{extra} FROM tokens WHERE seq_id = ?", [seq])
        n, last = got.column("n")[0].as_py(), got.column("last")[0].as_py()
        shards = self.manifest["shards"]
        end = next((s for s in shards if last is not None and s["rows"][0] <= last < s["rows"][1]), None)
        if end is not None and last == end["rows"][1] - 1 and end["index"] + 1 < len(shards):
            after = shards[end["index"] + 1]
            if after["seqs"][0] <= seq < after["seqs"][1] and after["index"] not in self.committed:
                raise StoreError(f"sequence {seq} runs on into shard {after['index']}, which is not committed (yet)")
        return int(n), (int(got.column("k")[0].as_py()) if cross else None)

    def dataset(self, site: str, **options) -> VectorDataset:
        """A torch IterableDataset over one site; see ``VectorDataset`` for the options."""
        from embwalk.query.dataset import VectorDataset  # lazily: torch

        return VectorDataset(self, site, **options)

    # -- internals -----------------------------------------------------------------------

    def _sql_tables(self) -> Tables:
        if self._tables is None:
            self._tables = Tables(self.reader, self.committed)
        return self._tables

    def _reader(self, site: VectorSite, direct: bool | None) -> RowReader:
        """The row reader of one site (cached); ``self.reader`` is the store's reader underneath."""
        key = (site, direct)
        if key not in self._readers:
            self._readers[key] = RowReader(self.reader, site, direct)
        return self._readers[key]

    def _from_query(self, result: pa.Table, limit: int | None) -> Selection:
        """Attach the token columns to a query result that has a ``row`` column, keeping its order."""
        if "row" not in result.column_names:
            raise QueryError(f"the query must return a 'row' column to select rows (it returns "
                             f"{', '.join(result.column_names) or 'no columns'})")
        if limit is not None:
            result = result.slice(0, int(limit))
        con = self._sql_tables().con
        have = set(result.column_names)
        numbered = result.append_column("_embwalk_i", pa.array(np.arange(result.num_rows, dtype=np.int64)))
        con.register("_embwalk_result", numbered)
        try:
            token_cols = [f"r.{c}" if c in have else f"t.{c}" for c in TOKEN_COLUMNS]
            rest = [f'r."{c}"' for c in result.column_names if c not in TOKEN_COLUMNS]
            joined = con.sql(
                f"SELECT {', '.join(token_cols + rest)}, t.row IS NULL AS _embwalk_missing "
                "FROM _embwalk_result r LEFT JOIN tokens t ON r.row = t.row ORDER BY r._embwalk_i"
            ).to_arrow_table()
        finally:
            con.unregister("_embwalk_result")
        missing = joined.column("_embwalk_missing").to_numpy(zero_copy_only=False)
        if missing.any():
            bad = int(joined.column("row")[int(np.argmax(missing))].as_py())
            self.committed_rows.check(np.array([bad]), f"store {self.location}")
            raise StoreError(f"row {bad} has no entry in the token table of {self.location}")
        return Selection(self, joined.drop_columns(["_embwalk_missing"]))
