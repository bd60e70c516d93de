"""Exports to .npy, safetensors and HuggingFace datasets hold exactly the selection's vectors."""

from __future__ import annotations

import json
import sys

import datasets  # requirements-dev.txt: the export target is tested, not skipped
import numpy as np
import pyarrow as pa
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import embwalk.query.export as export_module
from embwalk.query import QueryError, open_store
from tests.query.conftest import reference_tokens, reference_vectors


@pytest.fixture(scope="module")
def selection(packed):
    return open_store(packed).select(regex="^ [a-z]")


def test_npy(selection, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "PIECE_ROWS", 5)  # several pieces
    one = selection.export(tmp_path / "one.npy", "resid_post.1")
    np.testing.assert_array_equal(np.load(one), selection.vectors("resid_post.1"))
    two = selection.export(tmp_path / "two.npy", ["resid_pre.0", "final"])
    np.testing.assert_array_equal(np.load(two), selection.vectors(["resid_pre.0", "final"]))
    empty = open_store(selection.store.location).select(doc=999).export(tmp_path / "empty.npy", "final")
    assert np.load(empty).shape == (0, 32)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_safetensors(selection, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "PIECE_ROWS", 4)
    path = selection.export(tmp_path / "sel.safetensors", ["resid_post.1", "blocks.2.hook_resid_post"])
    tensors = load_file(path)
    assert sorted(tensors) == ["resid_post.1", "resid_post.2", "row"]
    np.testing.assert_array_equal(tensors["row"], selection.rows)
    np.testing.assert_array_equal(tensors["resid_post.2"], selection.vectors("resid_post.2"))
    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert json.loads(meta["sites"]) == ["resid_post.1", "resid_post.2"] and meta["model"] == "tiny-llama"


def test_datasets_export_without_the_package(selection, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(QueryError, match="needs the datasets package: pip install datasets") as info:
        selection.export(tmp_path / "ds", "final", format="datasets")
    assert len(str(info.value).splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def spy_on_reads(monkeypatch, store, fail_at: int | None = None) -> list[int]:
    """Record the number of rows of each vector read from ``store``; the ``fail_at``-th read fails."""
    read: list[int] = []
    real = type(store).vectors

    def vectors(self, rows, *args, **kwargs):
        read.append(len(rows))
        if len(read) == fail_at:
            raise OSError("disk full")
        return real(self, rows, *args, **kwargs)

    monkeypatch.setattr(type(store), "vectors", vectors)
    return read


# store fixture, selection, the sites with their (zarr array, layer index) for the direct reading, and a
# piece limit: rows, or bytes of vectors (2 sites x 32 float32 = 256 bytes a row: 5 rows)
DATASET_CASES = {
    "packed-float16": ("packed", dict(regex="^ [a-z]", row="20:140"),
                       {"resid_post.1": ("resid", 2), "final": ("final", None), "resid_mid.2": ("resid_mid", 2)},
                       ("PIECE_ROWS", 7, 7)),
    "documents-float32": ("documents", dict(pos="1:"), {"resid_post.1": ("resid", 0), "final": ("final", None)},
                          ("PIECE_BYTES", 5 * 256 + 100, 5)),
}


@pytest.mark.parametrize("case", list(DATASET_CASES))
def test_datasets_export_equals_a_direct_reading(case, tmp_path, monkeypatch, request):
    fixture, selectors, sites, (limit, value, piece_rows) = DATASET_CASES[case]
    path = request.getfixturevalue(fixture)
    monkeypatch.setattr(export_module, limit, value)  # several pieces, cut inside shards
    sel = open_store(path).select(**selectors)
    shard_tokens = sel.store.manifest["shard_tokens"]
    assert len(set((sel.rows // shard_tokens).tolist())) >= 3, "the selection must span shards"
    read = spy_on_reads(monkeypatch, sel.store)
    out = sel.export(tmp_path / "ds", list(sites), format="datasets")
    assert max(read) == piece_rows and sum(read) == len(sel) * len(sites)  # memory holds one piece
    ds = datasets.load_from_disk(str(out))

    ref = reference_tokens(path).to_pandas()
    ref = ref[ref.row.isin(sel.rows)].reset_index(drop=True)  # the condition itself is tested in test_selection
    assert len(ds) == len(ref) == len(sel) > 10
    assert ds.column_names == [*ref.columns, *sites]
    for column in ref.columns:
        assert ds[column][:] == ref[column].tolist(), column
    dtype = np.dtype(sel.store.manifest["dtype"])
    for site, (array, index) in sites.items():
        want = reference_vectors(path, array, ref.row.to_numpy(), index)
        assert ds.features[site].feature.dtype == dtype.name and ds.features[site].length == want.shape[1]
        stored = ds.with_format("arrow")[:][site]  # as stored: datasets' numpy format makes floats float32
        assert stored.type.value_type == pa.from_numpy_dtype(dtype)
        got = stored.combine_chunks().values.to_numpy().reshape(len(ds), -1)
        np.testing.assert_array_equal(got, want, err_msg=site)
    # with_format("torch") gives [n, d_model] tensors (datasets makes floats float32)
    batch = ds.with_format("torch")[:5]
    np.testing.assert_array_equal(batch["final"].numpy(), reference_vectors(path, "final", ref.row[:5], None))
    assert batch["row"].tolist() == ref.row[:5].tolist()
    about = json.loads(ds.info.description)
    assert about["sites"] == list(sites) and about["store"] == sel.store.location
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temporary files or directories left


def test_datasets_export_of_an_empty_selection(selection, tmp_path):
    empty = open_store(selection.store.location).select(doc=999)
    ds = datasets.load_from_disk(str(empty.export(tmp_path / "empty", ["final"], format="datasets")))
    assert len(ds) == 0
    assert ds.column_names == ["row", "doc_id", "seq_id", "pos", "doc_pos", "token_id", "token", "final"]
    assert ds.features["final"].length == 32


def test_a_failed_datasets_export_leaves_nothing(selection, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "PIECE_ROWS", 5)
    spy_on_reads(monkeypatch, selection.store, fail_at=3)
    with pytest.raises(OSError, match="disk full"):
        selection.export(tmp_path / "ds", ["final"], format="datasets")
    assert list(tmp_path.iterdir()) == []


def test_datasets_export_replaces_an_earlier_export_and_nothing_else(selection, tmp_path):
    out = tmp_path / "ds"
    selection.export(out, ["final"], format="datasets")
    few = open_store(selection.store.location).select(doc=1)
    few.export(out, ["resid_post.1"], format="datasets")
    ds = datasets.load_from_disk(str(out))
    assert ds["row"] == few.rows.tolist() and ds.column_names[-1] == "resid_post.1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(QueryError, match="exists and is not an earlier datasets export"):
        few.export(mine, ["final"], format="datasets")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_bad_export_paths(selection, tmp_path):
    with pytest.raises(QueryError, match="cannot tell the export format"):
        selection.export(tmp_path / "out.csv", "final")
    with pytest.raises(QueryError, match="its directory does not exist"):
        selection.export(tmp_path / "no" / "out.npy", "final")
