"""Read a store: manifest, committed shards, token table and arrays.

A reader sees only committed shards: rows of a shard without its commit
marker may hold zeros or half-written data, so ``tokens()`` lists committed
rows only and ``rows()`` refuses rows outside them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from pipeline.errors import StoreError
from pipeline.store import layout
from pipeline.store.commits import committed_shards, read_manifest
from pipeline.store.fs import require_local


class Store:
    """A store on a local or shared filesystem (pipeline.query.open_store also reads fsspec URLs)."""

    def __init__(self, path: str | Path):
        self.root = require_local(path, "Store", "pipeline.query.open_store reads fsspec URLs")
        if not self.root.exists():
            raise StoreError(f"store not found: {self.root}")
        self.manifest = read_manifest(self.root)

    @property
    def committed(self) -> list[int]:
        return sorted(committed_shards(self.root))

    @property
    def array_names(self) -> list[str]:
        return list(self.manifest["arrays"])

    def array(self, name: str) -> zarr.Array:
        if name not in self.manifest["arrays"]:
            raise StoreError(f"store {self.root} has no array {name!r}; it has {', '.join(self.array_names)}")
        return zarr.open_array(self.root / self.manifest["arrays"][name]["path"], mode="r")

    def tokens(self) -> pa.Table:
        """The token table of every committed shard, in row order."""
        tables = [pq.read_table(layout.tokens_path(self.root, i)) for i in self.committed]
        if not tables:
            return layout.TOKEN_SCHEMA.empty_table()
        return pa.concat_tables(tables)

    def committed_rows(self) -> np.ndarray:
        """A boolean mask over the token axis: True where the row's shard is committed."""
        mask = np.zeros(self.manifest["n_tokens"], dtype=bool)
        shards = {s["index"]: s for s in self.manifest["shards"]}
        for i in self.committed:
            start, stop = shards[i]["rows"]
            mask[start:stop] = True
        return mask

    def rows(self, name: str, rows: np.ndarray | slice) -> np.ndarray:
        """Values of a per-token array at the given rows (committed rows only)."""
        index = np.arange(self.manifest["n_tokens"])[rows]
        if not self.committed_rows()[index].all():
            raise StoreError(f"rows requested from {self.root} include shards that are not committed")
        return self.array(name).get_orthogonal_selection((index,))

    def summary(self) -> str:
        m = self.manifest
        n_shards = len(m["shards"])
        lines = [
            f"store: {self.root.resolve()}",
            f"  model: {m['model']['id']} ({m['model']['family']}, {m['model']['n_layers']} layers, "
            f"d_model {m['model']['d_model']})",
            f"  tokens: {m['n_tokens']} in {m['n_sequences']} sequences from {m['n_documents']} documents "
            f"(seq_len {m['seq_len']}, {m['mode']} mode)",
            f"  shards: {len(self.committed)}/{n_shards} committed",
            f"  sites: {compact_sites(m['sites'])}",
        ]
        total = 0
        for spec in m["arrays"].values():
            nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
            total += nbytes
            dims = " x ".join(f"{d}={n}" for d, n in zip(spec["dims"], spec["shape"], strict=True))
            lines.append(f"  {spec['path']}: [{dims}] {spec['dtype']}, {nbytes / 1e6:.1f} MB")
        lines.append("  tokens/*.parquet: row, doc_id, seq_id, pos, doc_pos, token_id, token")
        lines.append(f"  arrays: {total / 1e6:.1f} MB in all")
        return "\n".join(lines)


def compact_sites(sites: list[str]) -> str:
    """resid_post.0 ... resid_post.29 -> resid_post.0-29."""
    groups: dict[str, list[str]] = {}
    for s in sites:
        kind, _, layer = s.partition(".")
        groups.setdefault(kind, []).append(layer)
    parts = []
    for kind, layers in groups.items():
        if layers == [""]:
            parts.append(kind)
        elif len(layers) > 2:
            parts.append(f"{kind}.{layers[0]}-{layers[-1]} ({len(layers)})")
        else:
            parts.append(", ".join(f"{kind}.{x}" for x in layers))
    return ", ".join(parts)
