"""One sequence's attention: the stored pattern, cropped to the sequence's length."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from embwalk.errors import SiteError, StoreError
from embwalk.query import open_store
from tests.query.conftest import reference_tokens


def test_pattern_of_a_sequence(packed):
    store = open_store(packed)
    stored = zarr.open_array(packed / "attention.zarr" / "pattern", mode="r")
    got = store.attention(4)
    np.testing.assert_array_equal(got, stored[4])  # full sequences in pack mode
    assert got.shape == (3, 4, 16, 16)
    np.testing.assert_array_equal(store.attention(4, layers=["attn_pattern.2", 0], heads=[3, 1]),
                                  stored[4][[2, 0]][:, [3, 1]])


def test_lengths_and_labels_in_document_mode(documents):
    store = open_store(documents)
    ref = reference_tokens(documents).to_pandas()
    stored = zarr.open_array(documents / "attention.zarr" / "pattern", mode="r")
    for seq, rows in ref.groupby("seq_id"):
        n = len(rows)
        got = store.attention(seq)
        assert got.shape == (2, 2, n, n)
        np.testing.assert_array_equal(got, stored[seq][:, :, :n, :n])
        np.testing.assert_allclose(got.sum(-1), 1, atol=1e-5)
    da = store.attention(2, layers=[2], heads=[3], labelled=True)
    assert da.dims == ("layer", "head", "query", "key")
    assert da["layer"].values.tolist() == [2] and da["head"].values.tolist() == [3]
    assert da.query_token.values.tolist() == ref[ref.seq_id == 2].token.tolist()


def test_bad_attention_requests(packed, documents):
    store = open_store(documents)
    with pytest.raises(SiteError, match="attn_pattern.1 is not in this store"):
        store.attention(0, layers=[1])
    with pytest.raises(SiteError, match="attention head 0 is not in this store; it has heads \\[1, 3\\]"):
        store.attention(0, heads=[0])
    with pytest.raises(StoreError, match="sequence 99 is outside this store"):
        store.attention(99)
    no_attention = open_store(packed)
    no_attention.manifest = {**no_attention.manifest, "arrays": {
        k: v for k, v in no_attention.manifest["arrays"].items() if k != "pattern"}}
    with pytest.raises(SiteError, match="has no attention patterns"):
        no_attention.attention(0)
