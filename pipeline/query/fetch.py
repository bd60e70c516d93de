"""Read one site's vectors at any rows: sorted, grouped by chunk, then put back in the asked order."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from embwalk.query.direct import DirectReader
from embwalk.query.errors import QueryError
from embwalk.query.vector_sites import VectorSite
from embwalk.store.reader import Store


class VectorSource(Protocol):
    """What a selection and its exports read vectors from (a ``QueryStore``): the store's
    name and manifest, site resolution, and vectors of rows at sites."""

    location: str
    manifest: dict

    def sites(self, names: str | list[str]) -> list[VectorSite]: ...

    def vectors(self, rows, sites: str | list[str], direct: bool | None = None) -> np.ndarray: ...


class RowReader:
    """Rows of one site (one array, one layer) of ``store``. ``direct=None`` uses raw byte reads
    where the array allows them (local, uncompressed) and Zarr otherwise; True/False forces one."""

    def __init__(self, store: Store, site: VectorSite, direct: bool | None = None):
        spec = store.manifest["arrays"][site.array]
        self.site = site
        self.d = int(spec["shape"][-1])
        self.dtype = np.dtype(spec["dtype"])
        self.shard_rows = int(spec["shards"][0])
        self.array = store.open_array(spec["path"])
        self.direct = None
        if direct is not False:
            self.direct = DirectReader.for_array(self.array, store.local_path(spec["path"]))
            if direct and self.direct is None:
                raise QueryError(f"array {site.array} cannot be read directly (compressed, remote or other chunking)")

    def rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors [len(rows), d] in the order of ``rows`` (duplicates allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        uniq, inverse = np.unique(rows, return_inverse=True)
        out = np.empty((len(uniq), self.d), dtype=self.dtype)
        self._read_sorted(uniq, out)
        if len(uniq) == len(rows) and np.array_equal(uniq, rows):
            return out
        return out[inverse.reshape(-1)]

    def range(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Vectors of rows [start, stop), into ``out`` when given."""
        if out is None:
            out = np.empty((stop - start, self.d), dtype=self.dtype)
        if self.direct is not None:
            self.direct.read_range(start, stop, self.site.index, out)
        else:
            out[...] = self._zarr(start, stop)
        return out

    def _read_sorted(self, rows: np.ndarray, out: np.ndarray) -> None:
        if self.direct is not None:
            self.direct.read_sorted(rows, self.site.index, out)
            return
        # Through Zarr: one call per touched Zarr shard, over the span of rows it needs.
        # A call decodes its chunks concurrently; many small calls cost ~1 ms each.
        shard = rows // self.shard_rows
        cuts = np.flatnonzero(np.diff(shard)) + 1
        for part in np.split(np.arange(len(rows)), cuts):
            if len(part) == 0:
                continue
            lo, hi = int(rows[part[0]]), int(rows[part[-1]]) + 1
            out[part] = self._zarr(lo, hi)[rows[part] - lo]

    def _zarr(self, start: int, stop: int) -> np.ndarray:
        if self.site.index is None:
            return self.array[start:stop]
        return self.array[start:stop, self.site.index]
