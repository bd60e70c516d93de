"""What a report reads: the merged statistics tables, their summary, and one document's vectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from embwalk.errors import StoreError
from embwalk.stats.from_store import check_store
from embwalk.stats.partials import STATS, load_sample, read_summary, read_tables, stats_dir
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
    """One statistics directory of a store (``STORE/<name>/``): its summary and merged tables."""

    store: Store
    summary: dict
    tables: dict[str, pa.Table] = field(default_factory=dict)
    name: str = STATS  # the statistics directory under the store's root
    origin: str = ""  # how legends name the store, when a report draws another store's beside it

    @property
    def root(self) -> Path:
        return self.store.root

    @property
    def exclusions(self) -> str:
        """The options that left tokens out of these statistics, as text ("" when the summary's
        config predates them): ``exclude_positions=[0], exclude_massive=true``."""
        cfg = self.summary.get("config", {})
        parts = []
        if "exclude_positions" in cfg:
            parts.append(f"exclude_positions={list(cfg.get('exclude_positions') or [])}")
        if "exclude_massive" in cfg:
            massive = f"exclude_massive={str(bool(cfg.get('exclude_massive'))).lower()}"
            if cfg.get("exclude_massive") and cfg.get("massive_ratio"):
                massive += f" (over {cfg['massive_ratio']:g}x the median)"
            parts.append(massive)
        return ", ".join(parts)

    @property
    def label(self) -> str:
        """How a legend names this run: the directory and its exclusion options."""
        label = f"{self.name} ({self.exclusions})" if self.exclusions else self.name
        return f"{self.origin}: {label}" if self.origin else label

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


    def quantile_side(self, table: str, stat: str, q: float) -> dict[int, int]:
        """Where the binned quantile ``q`` of ``stat`` lies, per layer of the ``table``'s
        histogram (``<table>_hist``): -1 in the underflow bin (the value is below the first edge;
        the summary's number is then only an upper bound: the first edge, or the group's largest
        value when that is below it), +1 in the overflow bin (a lower bound), 0 inside the bins
        (a value, to within one bin). Layers without a histogram are left out."""
        return quantile_sides(self.rows(f"{table}_hist", stat=stat), q)

    def hist_edge(self, table: str, stat: str, side: int = -1) -> float | None:
        """The first (side -1) or last (+1) finite bin edge of ``stat``'s histogram."""
        h = self.rows(f"{table}_hist", stat=stat)
        if not h:
            return None
        edges = h["hi"][h["bin"] == 0] if side < 0 else h["lo"][h["bin"] == h["bin"].max()]
        return float(edges[0]) if len(edges) else None


def quantile_sides(h: dict[str, np.ndarray], q: float) -> dict[int, int]:
    """Per layer (one group, 0, for tables without layers) of one stat's histogram rows (stat,
    layer, bin, lo, hi, count; bin 0 is the underflow bin with lo = -inf, the last bin the
    overflow bin with hi = +inf): -1 when the quantile ``q`` falls in the underflow bin, +1 in
    the overflow bin, 0 otherwise.

    The rule of ``embwalk.stats.hist.quantile``: the quantile lies in the first bin whose
    cumulative count reaches q * n.
    """
    if not h:
        return {}
    out = {}
    groups = h["layer"] if "layer" in h else np.zeros(len(h["bin"]), np.int64)  # decoding: one group
    for layer in np.unique(groups):
        sel = groups == layer
        order = np.argsort(h["bin"][sel])
        count = h["count"][sel][order].astype(np.float64)
        lo, hi = h["lo"][sel][order], h["hi"][sel][order]
        total = count.sum()
        if total == 0:
            continue
        target = q * total
        under = count[np.isneginf(lo)].sum()
        over = count[np.isposinf(hi)].sum()
        out[int(layer)] = -1 if under >= target else (1 if total - over < target else 0)
    return out


def load_report_data(path: str | Path, stats: str = STATS) -> ReportData:
    """The summary and merged tables of the statistics directory ``STORE/<stats>/``."""
    store = check_store(path)
    summary = read_summary(store.root, out=stats)
    if summary is None:
        hint = "" if stats == STATS else f" stats.out={stats}"
        raise StoreError(f"no statistics in {stats_dir(store.root, out=stats)}: "
                         f"run embwalk stats store={store.root}{hint} first")
    return ReportData(store, summary, read_tables(store.root, out=stats), stats)


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
    sample = load_sample(store.root, out=data.name)
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


GENERATION_TABLES = ("generation", "generation_repetition", "generation_loops", "generation_self")


def has_generation(data: ReportData) -> bool:
    """The statistics hold the generation family's tables (with rows)."""
    return all(t in data.tables and data.tables[t].num_rows > 0 for t in GENERATION_TABLES)


def load_generation_data(path: str | Path, stats: str = STATS, role: str = "report.stores") -> ReportData:
    """A generation store's statistics directory ``STORE/<stats>/`` holding the generation
    family's tables, or a one-line StoreError naming the store (``role``: the option that named
    it) and how to compute them."""
    try:
        store = check_store(path)
    except StoreError as exc:
        raise StoreError(f"{role}: {exc}") from exc
    if "generation" not in store.manifest:
        raise StoreError(f"{role}: {store.root} is not a generation store (no 'generation' in its manifest): "
                         "write one with embwalk generate")
    run = f"run embwalk stats store={store.root} stats.families=[generation]" + (
        f" stats.out={stats}" if stats != STATS else "")
    summary = read_summary(store.root, out=stats)
    if summary is None:
        raise StoreError(f"{role}: {store.root} has no statistics in {stats_dir(store.root, out=stats)}: {run}")
    data = ReportData(store, summary, read_tables(store.root, out=stats), stats)
    if not has_generation(data):
        why = (summary.get("skipped") or {}).get("generation")
        raise StoreError(f"{role}: {store.root} has no generation statistics in {stats_dir(store.root, out=stats)}"
                         + (f" ({why})" if why else "") + f": {run}")
    return data
