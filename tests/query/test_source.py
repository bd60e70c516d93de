"""Opening stores: local paths and fsspec URLs read the same; non-stores fail in one line."""

from __future__ import annotations

import json
import shutil

import fsspec
import numpy as np
import pytest

from embwalk.errors import StoreError
from embwalk.query import open_store
from embwalk.store.reader import Store


def test_summary_and_info(packed):
    store = open_store(packed)
    info = store.info()
    manifest = json.loads((packed / "manifest.json").read_text())
    assert info["model"] == "tiny-llama"
    assert info["committed_tokens"] == info["planned_tokens"] == manifest["n_tokens"]
    assert info["committed_shards"] == info["shards"] == manifest["plan"]["n_shards"]
    assert "resid_post.1" in info["sites"]
    text = store.summary()
    for fragment in ("model: tiny-llama", f"tokens: {manifest['n_tokens']} committed", "5/5 shards",
                     "resid_post.0-2", "activations.zarr/resid: [token=155 x layer=4 x d_model=32] float16",
                     "MB on disk", "tables: tokens"):
        assert fragment in text, text


def test_fsspec_urls_read_the_same_as_local_paths(packed):
    local = open_store(packed)
    fs = fsspec.filesystem("memory")
    fs.put(str(packed), "/embwalk-test/store", recursive=True)
    try:
        for url in (f"file://{packed}", "memory:///embwalk-test/store"):
            remote = open_store(url)
            assert remote.tables == ["tokens"]
            assert remote.select(regex="^ t").rows.tolist() == local.select(regex="^ t").rows.tolist()
            rows = np.array([5, 140, 33, 64])
            np.testing.assert_array_equal(remote.vectors(rows, ["resid_post.1", "final"]),
                                          local.vectors(rows, ["resid_post.1", "final"]))
            np.testing.assert_array_equal(remote.attention(2), local.attention(2))
            assert remote.n_tokens == local.n_tokens
    finally:
        fs.rm("/embwalk-test", recursive=True)


def test_one_reader_for_paths_and_urls(packed):
    """embwalk.store.reader.Store reads a memory:// copy as the local store, and open_store's
    summary is the reader's."""
    local = Store(packed)
    assert local.local == local.root == packed and local.committed == list(range(5))
    assert open_store(packed).summary() == local.summary() and open_store(packed).info() == local.info()
    fs = fsspec.filesystem("memory")
    fs.put(str(packed), "/embwalk-reader/store", recursive=True)
    try:
        remote = Store("memory:///embwalk-reader/store")
        assert remote.local is None and remote.root == "/embwalk-reader/store"
        assert remote.committed == local.committed
        assert remote.tokens().equals(local.tokens())
        assert remote.read_tokens(2, ["row", "token"]).equals(local.read_tokens(2, ["row", "token"]))
        np.testing.assert_array_equal(remote.rows("final", np.array([3, 140])), local.rows("final", np.array([3, 140])))
        assert remote.summary().splitlines()[0] == "store: memory:///embwalk-reader/store"
        assert remote.summary().splitlines()[1:-2] == local.summary().splitlines()[1:-2]
    finally:
        fs.rm("/embwalk-reader", recursive=True)


def test_missing_store(tmp_path):
    with pytest.raises(StoreError, match="store not found: .*nowhere"):
        open_store(tmp_path / "nowhere")
    with pytest.raises(StoreError, match="store not found: memory:///no/such/store"):
        open_store("memory:///no/such/store")


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not an embwalk store"):
        open_store(tmp_path)
    (tmp_path / "file.txt").write_text("hello")
    with pytest.raises(StoreError, match="not an embwalk store"):
        open_store(tmp_path / "file.txt")


def test_wrong_format_version(packed, tmp_path):
    root = tmp_path / "old"
    shutil.copytree(packed, root)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["format_version"] = 99
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="not an embwalk store of format version 2 .*version 99") as info:
        open_store(root)
    assert "\n" not in str(info.value)
    manifest["format_version"] = 1  # what embwalk 0.1 wrote: named, not a crash
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="format version 1; this embwalk reads version 2") as info:
        open_store(root)
    assert "\n" not in str(info.value)
