"""Write vectors of chosen rows to .npy, .safetensors or a HuggingFace ``datasets`` directory.

``Selection.export`` calls ``export`` with its store (a ``VectorSource``), rows and token table.

Every format is written piece by piece (``PIECE_ROWS`` rows at a time) to a
temporary name and renamed, so an export of millions of rows never holds them
all in memory and a failed export leaves no half file or directory behind.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from embwalk.query.errors import QueryError
from embwalk.query.fetch import VectorSource

FORMATS = ("npy", "safetensors", "datasets")
PIECE_ROWS = 65536
PIECE_BYTES = 256 << 20  # at most this much of vectors in memory at once (datasets export)
_SAFETENSORS_DTYPES = {"float16": "F16", "float32": "F32", "int64": "I64"}


def export(
    source: VectorSource, rows: np.ndarray, table: pa.Table, path: str | Path, sites: str | list[str],
    format: str | None = None,
) -> Path:
    """Write the vectors of ``rows`` at ``sites`` (read from ``source``; ``table``: the rows' token
    columns, one row each); the format comes from the suffix unless given.

    - npy: ``[n, d_model]`` for one site named as a string, else ``[n, n_sites, d_model]``;
    - safetensors: one ``[n, d_model]`` tensor per site (named by the site) and ``row`` [n] int64,
      with the store, model and sites in the metadata;
    - datasets: ``Dataset.save_to_disk`` of the token columns plus one vector column per site.
    """
    path = Path(path).expanduser()
    by_suffix = {".npy": "npy", ".safetensors": "safetensors", "": "datasets"}
    fmt = format or by_suffix.get(path.suffix)
    if fmt not in FORMATS:
        raise QueryError(f"cannot tell the export format of {path}; use a .npy or .safetensors name, or a "
                         f"directory with format=datasets (one of: {', '.join(FORMATS)})")
    resolved = source.sites(sites)
    names = [s.name for s in resolved]
    widths = {s.name: int(source.manifest["arrays"][s.array]["shape"][-1]) for s in resolved}
    if fmt == "npy" and len(set(widths.values())) > 1:  # a router's logits beside d_model vectors
        sizes = sorted(set(widths.values()))
        raise QueryError(f"cannot export {', '.join(names)} as one .npy: their vectors are {sizes} wide; export "
                         "them apart, or as safetensors or datasets (a tensor or column per site)")
    if not path.parent.is_dir():
        raise QueryError(f"cannot write {path}: its directory does not exist")
    if fmt == "datasets":
        _datasets(source, rows, table, path, widths)
        return path
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "npy":
            _npy(source, rows, tmp, sites if isinstance(sites, str) and len(names) == 1 else names, widths)
        else:
            _safetensors(source, rows, tmp, widths)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _pieces(n: int, step: int | None = None):
    step = step or PIECE_ROWS
    for start in range(0, n, step):
        yield start, min(start + step, n)


def _npy(store: VectorSource, rows: np.ndarray, path: Path, sites: str | list[str], widths: dict[str, int]) -> None:
    (d,) = set(widths.values())  # one width: d_model, or a router's experts
    shape = (len(rows), d) if isinstance(sites, str) else (len(rows), len(sites), d)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.dtype(store.manifest["dtype"]), shape=shape)
    for a, b in _pieces(len(rows)):
        out[a:b] = store.vectors(rows[a:b], sites)
    out.flush()
    del out


def _safetensors(store: VectorSource, rows: np.ndarray, path: Path, widths: dict[str, int]) -> None:
    """The safetensors layout: u64 header size, JSON header (offsets into the data), then raw bytes.
    ``widths``: each site's vector width (d_model, or a router's experts), in order."""
    dtype = np.dtype(store.manifest["dtype"])
    names = list(widths)
    header: dict = {"__metadata__": {
        "store": store.location, "model": store.manifest["model"]["id"], "sites": json.dumps(names),
        "format": "embwalk selection: one [n, d_model] tensor per site, row = token row in the store",
    }}
    offset = 0
    tensors = [("row", np.dtype(np.int64), [len(rows)])] + [(n, dtype, [len(rows), widths[n]]) for n in names]
    for name, dt, shape in tensors:
        size = int(np.prod(shape)) * dt.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dt.name], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(np.ascontiguousarray(rows, dtype="<i8").tobytes())
        for name in names:
            for a, b in _pieces(len(rows)):
                f.write(np.ascontiguousarray(store.vectors(rows[a:b], name)).tobytes())
        f.flush()
        os.fsync(f.fileno())


def _datasets(store: VectorSource, rows: np.ndarray, table: pa.Table, path: Path, widths: dict[str, int]) -> None:
    """The token columns (and any extra ones) plus one fixed-size-list column per site (``widths``:
    each site's vector width, in order)."""
    names = list(widths)
    datasets = datasets_module("exporting to a HuggingFace dataset")
    clash = sorted(set(names) & set(table.column_names))
    if clash:
        raise QueryError(f"cannot export site(s) {', '.join(clash)}: the selection has columns of the same name")
    check_dataset_target(path)
    dtype = pa.from_numpy_dtype(np.dtype(store.manifest["dtype"]))
    # a piece holds every site's vectors of its rows: bound it in bytes, not only rows
    step = max(1, min(PIECE_ROWS, PIECE_BYTES // max(1, sum(widths.values()) * dtype.byte_width)))

    def pieces():
        for a, b in _pieces(len(rows), step):
            columns = table.slice(a, b - a).columns
            for name in names:
                flat = store.vectors(rows[a:b], name).reshape(-1)
                columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, type=dtype), widths[name]))
            yield pa.Table.from_arrays(columns, names=[*table.column_names, *names])

    about = {"store": store.location, "model": store.manifest["model"]["id"], "sites": names,
             "format": "embwalk selection: token columns, one [d_model] vector column per site"}
    schema = table.schema
    for name in names:
        schema = schema.append(pa.field(name, pa.list_(dtype, widths[name])))
    save_dataset(pieces(), schema, datasets.DatasetInfo(description=json.dumps(about)), path)


def datasets_module(what: str):
    """The ``datasets`` package, or a one-line error saying ``what`` needs it."""
    try:
        import datasets
    except ImportError as exc:
        raise QueryError(f"{what} needs the datasets package: pip install datasets") from exc
    return datasets


def check_dataset_target(path: Path) -> None:
    """Refuse to write over anything but an earlier export (or an empty directory)."""
    if path.exists() and not _is_saved_dataset(path):
        raise QueryError(f"cannot write a dataset to {path}: it exists and is not an earlier datasets export")


def save_dataset(pieces: Iterable[pa.Table], schema: pa.Schema, info, path: Path) -> None:
    """Tables of ``schema``, piece by piece, as a ``datasets`` directory saved at ``path``.

    The pieces go into one Arrow stream next to ``path``, which ``datasets`` memory-maps and
    saves in its own layout (its shards, state.json, dataset_info.json) to a temporary
    directory that is renamed at the end: memory holds one piece, and a failed export leaves
    nothing that looks like a dataset. The cost is writing the data twice.
    """
    import datasets

    stream = path.with_name(f".{path.name}.tmp-{os.getpid()}.arrow")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        n_rows = 0
        with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as writer:
            for piece in pieces:
                writer.write_table(piece.cast(schema))
                n_rows += piece.num_rows
        # an empty export still gets one (empty) shard: datasets would write none, and no schema
        shards = None if n_rows else 1
        datasets.Dataset.from_file(str(stream), info=info).save_to_disk(str(tmp), num_shards=shards)
        _replace_dir(tmp, path)
    finally:
        stream.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _is_saved_dataset(path: Path) -> bool:
    """An earlier export (or an empty directory), which an export may replace; anything else is the user's."""
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    meta = {"state.json", "dataset_info.json"}
    return not names or (meta <= names and all(re.fullmatch(r"data-\d+-of-\d+\.arrow", n) for n in names - meta))


def _replace_dir(new: Path, path: Path) -> None:
    """Move ``new`` to ``path``; an earlier export there is moved aside first and then removed."""
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
