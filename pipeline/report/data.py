"""What a report reads: the merged statistics tables, their summary, and one document's vectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from embwalk.errors import StoreError
from embwalk.stats.from_store import check_store
from embwalk.stats.partials import load_sample, read_summary, read_tables, stats_dir
from embwalk.store.reader import Store


@dataclass
class Document:
    """One document's residual vectors: ``resid`` [n, layers, d] float32, its token ids and texts."""

    doc_id: int
    seq_id: int
    token_ids: np.ndarray
    tokens: list[str]
    resid: np.ndarray
    resid_layers: list[int]
    source: str  # "store" (the activations) or "sample" (kept by the statistics)


@dataclass
class ReportData:
    store: Store
    summary: dict
    tables: dict[str, pa.Table] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.store.root

    def rows(self, table: str, **where) -> dict[str, np.ndarray]:
        """Columns of ``table`` as numpy arrays, rows filtered by equality on ``where``."""
        t = self.tables.get(table)
        if t is None:
            return {}
        cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}
        keep = np.ones(t.num_rows, dtype=bool)
        for k, v in where.items():
            keep &= cols[k] == v
        return {c: v[keep] for c, v in cols.items()}


def load_report_data(path: str | Path) -> ReportData:
    store = check_store(path)
    summary = read_summary(store.root)
    if summary is None:
        raise StoreError(f"no statistics in {stats_dir(store.root)}: run python -m jobs.stats store={store.root} first")
    return ReportData(store, summary, read_tables(store.root))


def load_document(data: ReportData, doc_id: int | None = None, max_tokens: int = 64,
                  min_tokens: int = 12) -> Document | None:
    """A document's vectors from the store's activations, or else from the statistics' sample.

    Default document: the first one of at least ``min_tokens`` tokens (else the longest) in
    the first committed shard; at most ``max_tokens`` of its tokens, from the sequence
    holding its first one.
    """
    store = data.store
    if "resid" in store.manifest["arrays"]:
        # one shard's token table at a time: a store may hold billions of rows
        for index in store.committed:
            tokens = store.read_tokens(index)
            docs = tokens.column("doc_id").to_numpy()
            want = _pick_doc(docs, min_tokens) if doc_id is None else doc_id
            rows = np.flatnonzero(docs == want)
            if rows.size:
                break
        else:
            raise StoreError(f"document {doc_id} is not in the committed rows of {store.root}")
        seq = tokens.column("seq_id").to_numpy()[rows]
        rows = rows[seq == seq[0]][:max_tokens]  # one sequence's part of it: one context
        table_rows = tokens.column("row").to_numpy()[rows]
        resid = store.array("resid").get_orthogonal_selection((table_rows,)).astype(np.float32)
        return Document(int(want), int(seq[0]), tokens.column("token_id").to_numpy()[rows].astype(np.int64),
                        [str(t) for t in tokens.column("token").to_numpy(zero_copy_only=False)[rows]],
                        resid, list(store.manifest["arrays"]["resid"]["layers"]), "store")
    sample = load_sample(store.root)
    if sample is None:
        return None
    docs = sample["doc_ids"]
    if doc_id is None:
        doc_id = _pick_doc(docs, min_tokens)
    keep = np.flatnonzero(docs == doc_id)[:max_tokens]
    if keep.size == 0:
        return None
    return Document(int(doc_id), int(sample["seq_id"][0]), sample["token_ids"][keep], [],
                    sample["resid"][keep].astype(np.float32), [int(v) for v in sample["resid_layers"]], "sample")


def _pick_doc(docs: np.ndarray, min_tokens: int) -> int:
    ids, first, counts = np.unique(docs, return_index=True, return_counts=True)
    order = np.argsort(first)
    for i in order:
        if counts[i] >= min_tokens:
            return int(ids[i])
    return int(ids[np.argmax(counts)])
