"""A set of token rows picked from a store, and their vectors at chosen sites."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from embwalk.query.display import format_table
from embwalk.query.export import export
from embwalk.query.fetch import VectorSource

if TYPE_CHECKING:  # heavy, imported only when used
    import torch
    import xarray

TOKEN_COLUMNS = ("row", "doc_id", "seq_id", "pos", "doc_pos", "token_id", "token")


class Selection:
    """Token rows (``table``: row, doc_id, seq_id, pos, doc_pos, token_id, token, plus any extra columns)
    of ``store`` (the QueryStore that selected them), which reads their vectors."""

    def __init__(self, store: VectorSource, table: pa.Table):
        self.store = store
        self.table = table
        self.rows = table.column("row").to_numpy(zero_copy_only=False).astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return f"Selection of {len(self)} rows from {self.store.location}\n{format_table(self.table, 10)}"

    def to_pandas(self):
        return self.table.to_pandas()

    def vectors(self, sites: str | list[str], direct: bool | None = None) -> np.ndarray:
        """``[n, d_model]`` for one site named as a string, else ``[n, n_sites, d_model]``."""
        return self.store.vectors(self.rows, sites, direct=direct)

    def tensor(self, sites: str | list[str]) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.vectors(sites))

    def xarray(self, sites: str | list[str]) -> xarray.DataArray:
        """Labelled ``[token, site, d_model]``.

        Each token carries its row, doc_id, seq_id, pos, doc_pos, token_id and text.
        """
        import xarray as xr

        names = [s.name for s in self.store.sites(sites)]
        data = self.store.vectors(self.rows, names)
        coords = {"site": names}
        for column in self.table.column_names:
            values = self.table.column(column).to_numpy(zero_copy_only=False)
            # "token" names the dimension (as in the store's arrays); the text goes by "text"
            coords["text" if column == "token" else column] = ("token", values)
        model = self.store.manifest["model"]
        return xr.DataArray(
            data, dims=("token", "site", "d_model"), coords=coords, name="vectors",
            attrs={"store": self.store.location, "model": model["id"], "dtype": self.store.manifest["dtype"]},
        )

    def export(self, path: str | Path, sites: str | list[str], format: str | None = None) -> Path:
        """Write the vectors (and row labels) to .npy, .safetensors or a HuggingFace dataset directory."""
        return export(self.store, self.rows, self.table, path, sites, format)
