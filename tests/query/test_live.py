"""Reading while an extraction is still running sees only committed shards."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from embwalk.errors import StoreError
from embwalk.executors.local import extract_local
from embwalk.query import open_store
from embwalk.store import layout
from embwalk.store.fs import LocalFS
from tests.conftest import tiny_loaded
from tests.query.conftest import packed_config, reference_vectors, write_corpus


def test_a_running_extraction_shows_only_committed_shards(tmp_path, smollm2, monkeypatch):
    cfg = packed_config(tmp_path, write_corpus(tmp_path / "corpus.txt"), store="live")
    paused, resume = threading.Event(), threading.Event()
    original = LocalFS.write_atomic

    def write_atomic(self, rel, data):
        # Hold the run at shard 2's commit: its arrays and commit record are written, its token table is not.
        if rel == layout.tokens_file(2):
            paused.set()
            assert resume.wait(60)
        return original(self, rel, data)

    monkeypatch.setattr(LocalFS, "write_atomic", write_atomic)
    run = threading.Thread(target=extract_local, args=(cfg, tiny_loaded("llama", smollm2.tokenizer)))
    run.start()
    try:
        assert paused.wait(60)
        root = tmp_path / "live"
        assert (root / layout.commit_file(2)).exists()  # recorded, not committed
        assert not (root / layout.tokens_file(2)).exists()
        store = open_store(root)
        assert store.committed == [0, 1]
        assert store.n_tokens == 64 and store.info()["planned_tokens"] == 155
        assert store.select().rows.tolist() == list(range(64))
        assert len(store.select(row="60:100")) == 4
        assert store.sql("SELECT max(row) AS m FROM tokens").column("m")[0].as_py() == 63
        with pytest.raises(StoreError, match="row 70 .* not committed"):
            store.vectors([3, 70], "final")
        ds = store.dataset("resid_post.0", batch_size=10, with_rows=True)
        rows = torch.cat([r for r, _ in ds]).numpy()
        assert sorted(rows.tolist()) == list(range(64))
        with pytest.raises(StoreError, match="shard 2 .* not committed"):
            store.dataset("final", shards=[1, 2])
        with pytest.raises(StoreError, match="not committed"):
            store.attention(5)  # sequence 5 starts in shard 2
    finally:
        resume.set()
        run.join(120)
    assert not run.is_alive()
    store.refresh()
    assert store.n_tokens == 155 and len(store.select()) == 155
    np.testing.assert_array_equal(store.vectors([70], "final"), reference_vectors(root, "final", np.array([70]), None))
