"""SAE metadata and the SAELens cached-activations export (scripts/check_saelens.py runs SAELens itself)."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from embwalk.query import open_store
from embwalk.query.errors import QueryError
from embwalk.query.saelens import export_saelens, sae_metadata


def test_metadata_names_the_model_hook_and_sizes(packed):
    store = open_store(packed)
    meta = sae_metadata(store, "resid_post.1")
    assert meta["hook_name"] == meta["submodule_name"] == "blocks.1.hook_resid_post"
    assert meta["d_in"] == meta["activation_dim"] == store.manifest["model"]["d_model"]
    assert meta["context_size"] == store.manifest["seq_len"] and meta["layer"] == 1
    assert meta["model_name"] == store.manifest["config"]["model"]["name"]
    assert meta["embwalk_weights_fingerprint"] == store.manifest["model"]["weights_fingerprint"]
    assert sae_metadata(store, "blocks.1.hook_resid_post")["embwalk_site"] == "resid_post.1"  # TL names work
    assert sae_metadata(store, "final")["hook_name"] == "ln_final.hook_normalized"


def test_export_is_one_row_per_sequence_with_the_stores_values(packed, tmp_path):
    store = open_store(packed)
    ctx = store.manifest["seq_len"]
    path = export_saelens(store, "resid_post.1", tmp_path / "cache")
    ds = datasets.load_from_disk(str(path))
    hook = "blocks.1.hook_resid_post"
    assert ds.features[hook].shape == (ctx, store.manifest["model"]["d_model"])
    tokens = store.sql("select row, seq_id, token_id from tokens order by row")
    seq = tokens.column("seq_id").to_numpy()
    full = [s for s in np.unique(seq) if (seq == s).sum() == ctx]
    assert len(ds) == len(full) >= 2
    ds.set_format("numpy")
    for k, s in enumerate(full):
        rows = tokens.column("row").to_numpy()[seq == s]
        np.testing.assert_array_equal(ds[k][hook], store.vectors(rows, "resid_post.1"))
        np.testing.assert_array_equal(ds[k]["token_ids"], tokens.column("token_id").to_numpy()[seq == s])
    again = export_saelens(store, "resid_post.1", path)  # an earlier export is replaced
    assert len(datasets.load_from_disk(str(again))) == len(full)


def test_export_refuses_to_overwrite_what_is_not_an_export(packed, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(QueryError, match="not an earlier datasets export"):
        export_saelens(open_store(packed), "resid_post.1", tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_store_without_full_sequences_is_refused_and_nothing_written(documents, tmp_path):
    with pytest.raises(QueryError, match="no committed sequence of 24 tokens"):
        export_saelens(open_store(documents), "resid_post.1", tmp_path / "cache")
    assert not list(tmp_path.iterdir())


def test_full_sequences_are_read_shard_by_shard_and_joined_across_shards():
    """A sequence that runs on into the next committed shard is joined; one cut by an
    uncommitted shard is left out; shorter ones are left out."""
    import pyarrow as pa

    from embwalk.query.saelens import _full_sequences

    seqs = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]  # rows 0..14; shards of 4 rows
    shards = {i: (4 * i, min(4 * i + 4, len(seqs))) for i in range(4)}

    class Reader:
        def read_tokens(self, index, columns):
            a, b = shards[index]
            return pa.table({"row": range(a, b), "seq_id": seqs[a:b], "token_id": [10 + r for r in range(a, b)]})

    class FakeStore:
        reader, committed = Reader(), [0, 1, 3]  # shard 2 (rows 8-11) is not committed
    got = [(rows.tolist(), ids.tolist()) for rows, ids in _full_sequences(FakeStore(), 4)]
    # sequence 0 is short; 1 (rows 3-6) runs from shard 0 into 1 and is joined; 2 (rows 7-10) and
    # 3 (rows 11-14) each have rows in the uncommitted shard 2
    assert got == [([[3, 4, 5, 6]], [[13, 14, 15, 16]])]
