"""Exports to .npy, safetensors and HuggingFace datasets hold exactly the selection's vectors."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

import pipeline.query.export as export_module
from pipeline.query import QueryError, open_store


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
    with pytest.raises(QueryError, match="needs the datasets package: pip install datasets"):
        selection.export(tmp_path / "ds", "final", format="datasets")


def test_datasets_export(selection, tmp_path):
    datasets = pytest.importorskip("datasets")
    path = selection.export(tmp_path / "ds", ["final"])
    ds = datasets.load_from_disk(str(path))
    assert ds["row"] == selection.rows.tolist()
    np.testing.assert_array_equal(np.array(ds["final"], dtype=np.float16), selection.vectors("final"))


def test_bad_export_paths(selection, tmp_path):
    with pytest.raises(QueryError, match="cannot tell the export format"):
        selection.export(tmp_path / "out.csv", "final")
    with pytest.raises(QueryError, match="its directory does not exist"):
        selection.export(tmp_path / "no" / "out.npy", "final")
