"""Selections return exactly the rows a direct pyarrow/zarr reading of the store gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embwalk.query import open_store
from tests.query.conftest import reference_tokens, reference_vectors

# selector -> the same condition on the reference token table (a pandas frame)
CASES = {
    "doc": (dict(doc=2), lambda t: t.doc_id == 2),
    "doc-list": (dict(doc=[0, 5, 11]), lambda t: t.doc_id.isin([0, 5, 11])),
    "doc-range-str": (dict(doc="3:6"), lambda t: (t.doc_id >= 3) & (t.doc_id < 6)),
    "doc-range-tuple": (dict(doc=(None, 2)), lambda t: t.doc_id < 2),
    "seq-range": (dict(seq=range(2, 4)), lambda t: t.seq_id.isin([2, 3])),
    "pos": (dict(pos=0), lambda t: t.pos == 0),
    "pos-open": (dict(pos="10:"), lambda t: t.pos >= 10),
    "doc_pos": (dict(doc_pos=0), lambda t: t.doc_pos == 0),
    "doc_pos-range": (dict(doc_pos="12:"), lambda t: t.doc_pos >= 12),
    "doc-doc_pos": (dict(doc=[3, 5], doc_pos=[0, 1, 16]), lambda t: t.doc_id.isin([3, 5]) & t.doc_pos.isin([0, 1, 16])),
    "rows-across-shards": (dict(row=slice(25, 70)), lambda t: (t.row >= 25) & (t.row < 70)),
    "token": (dict(token=" the"), lambda t: t.token == " the"),
    "token-list": (dict(token=[" the", "."]), lambda t: t.token.isin([" the", "."])),
    "regex": (dict(regex="^ [A-Z]"), lambda t: t.token.str.contains(r"^ [A-Z]", regex=True)),
    "regex-anywhere": (dict(regex="he"), lambda t: t.token.str.contains("he", regex=False)),
    "where": (dict(where="pos % 5 = 0 AND doc_id > 1"), lambda t: (t.pos % 5 == 0) & (t.doc_id > 1)),
    "combined": (dict(doc=5, pos="0:8", regex="[a-z]"), lambda t: (t.doc_id == 5) & (t.pos < 8)
                 & t.token.str.contains("[a-z]", regex=True)),
    "empty-doc": (dict(doc=999), lambda t: t.doc_id == 999),
    "empty-token": (dict(token="no such token"), lambda t: t.token == "no such token"),
    "empty-regex": (dict(regex="^zzz$"), lambda t: t.token == "zzz"),
    "empty-list": (dict(row=[]), lambda t: t.row < 0),
    "everything": (dict(), lambda t: t.row >= 0),
}


@pytest.fixture(scope="module")
def store(packed):
    return open_store(packed)


@pytest.fixture(scope="module")
def ref(packed):
    return reference_tokens(packed).to_pandas()


@pytest.mark.parametrize("name", list(CASES))
def test_selectors_match_a_direct_reading(name, store, ref, packed):
    selectors, condition = CASES[name]
    sel = store.select(**selectors)
    expected = ref[condition(ref)].sort_values("row")
    got = sel.to_pandas()
    assert got.columns.tolist() == ["row", "doc_id", "seq_id", "pos", "doc_pos", "token_id", "token"]
    assert got.to_dict("list") == expected.reset_index(drop=True).to_dict("list")
    rows = expected.row.to_numpy()
    np.testing.assert_array_equal(sel.vectors("resid_post.1"), reference_vectors(packed, "resid", rows, 2))
    np.testing.assert_array_equal(sel.vectors("final"), reference_vectors(packed, "final", rows, None))
    np.testing.assert_array_equal(sel.vectors("resid_mid.2"), reference_vectors(packed, "resid_mid", rows, 2))


def test_cases_cover_empty_results_and_shard_spanning(store):
    shard_rows = store.manifest["shard_tokens"]
    spans = store.select(row=slice(25, 70)).rows // shard_rows
    assert len(set(spans.tolist())) == 3
    assert len(store.select(doc=999)) == 0
    assert store.select(doc=999).vectors("final").shape == (0, 32)
    assert store.select(doc=999).vectors(["final", "resid_pre.0"]).shape == (0, 2, 32)


def test_doc_pos_counts_within_the_document_where_pos_restarts(store, ref, packed):
    # doc 3 starts at pos 1 of a sequence and runs into the next one: its first 16 tokens
    # are doc_pos 0..15, while pos="0:16" also takes the tokens it has in the next sequence
    doc3 = ref[ref.doc_id == 3].sort_values("row")
    assert doc3.seq_id.nunique() == 2 and doc3.pos.iloc[0] > 0 and len(doc3) > 16
    first16 = doc3.row.iloc[:16].tolist()
    sel = store.select(doc=3, doc_pos="0:16")
    assert sel.rows.tolist() == first16
    assert sel.table.column("doc_pos").to_pylist() == list(range(16))
    assert len(set(sel.table.column("seq_id").to_pylist())) == 2
    assert store.select(doc=3, pos="0:16").rows.tolist() != first16
    np.testing.assert_array_equal(sel.vectors("final"), reference_vectors(packed, "final", np.array(first16), None))
    # doc 5 runs over a shard boundary: doc_pos carries on in the next shard's token file
    shard_rows = store.manifest["shard_tokens"]
    doc5 = ref[ref.doc_id == 5].sort_values("row")
    assert doc5.row.iloc[0] // shard_rows != doc5.row.iloc[-1] // shard_rows
    sel = store.select(doc=5, doc_pos=(1, None))
    assert sel.rows.tolist() == doc5.row.iloc[1:].tolist()
    assert sel.table.column("doc_pos").to_pylist() == list(range(1, len(doc5)))


def test_document_mode_doc_pos_is_pos(documents):
    ref = reference_tokens(documents).to_pandas()
    assert ref.doc_pos.tolist() == ref.pos.tolist()
    store = open_store(documents)
    assert store.select(doc_pos="0:3").rows.tolist() == store.select(pos="0:3").rows.tolist()


def test_site_names_and_aliases_address_the_same_vectors(store):
    sel = store.select(doc=3)
    post1 = sel.vectors("resid_post.1")
    np.testing.assert_array_equal(sel.vectors("resid_pre.2"), post1)
    np.testing.assert_array_equal(sel.vectors("blocks.1.hook_resid_post"), post1)
    both = sel.vectors(["resid_pre.0", "resid_post.1"])
    assert both.shape == (len(sel), 2, 32)
    np.testing.assert_array_equal(both[:, 1], post1)
    assert sel.vectors("resid_post").shape == (len(sel), 3, 32)  # a bare kind: every layer
    assert sel.vectors(["resid_post.1"]).shape == (len(sel), 1, 32)


def test_random_rows_any_order_with_duplicates(store, packed):
    rows = np.array([150, 3, 77, 3, 31, 32, 0, 154, 77])
    np.testing.assert_array_equal(store.vectors(rows, "resid_post.0"), reference_vectors(packed, "resid", rows, 1))
    through_zarr = store.vectors(rows, "resid_post.0", direct=False)
    np.testing.assert_array_equal(through_zarr, store.vectors(rows, "resid_post.0"))


def test_tensor_and_xarray_outputs(store):
    sel = store.select(seq=1, pos="0:4")
    t = sel.tensor("resid_post.1")
    assert t.dtype == torch.float16 and t.shape == (4, 32)
    da = sel.xarray(["resid_pre.0", "final"])
    assert da.dims == ("token", "site", "d_model")
    assert da.site.values.tolist() == ["resid_pre.0", "final"]
    assert da.row.values.tolist() == sel.rows.tolist()
    assert da.text.values.tolist() == sel.table.column("token").to_pylist()
    np.testing.assert_array_equal(da.sel(site="final").values, sel.vectors("final"))


def test_limit_and_extra_columns(store):
    sel = store.select(pos="1:", limit=5, columns=["length(token) AS chars", "pos * 2 AS twice"])
    assert len(sel) == 5
    assert sel.table.column_names[-2:] == ["chars", "twice"]
    assert sel.table.column("twice").to_pylist() == [2 * p for p in sel.table.column("pos").to_pylist()]


def test_sql_selection_keeps_the_query_order_and_columns(store, ref):
    sel = store.select(sql="SELECT row, pos + 100 AS later FROM tokens WHERE token = ' the' ORDER BY row DESC")
    expected = ref[ref.token == " the"].sort_values("row", ascending=False)
    assert sel.rows.tolist() == expected.row.tolist()
    assert sel.table.column_names == ["row", "doc_id", "seq_id", "pos", "doc_pos", "token_id", "token", "later"]
    assert sel.table.column("token").to_pylist() == expected.token.tolist()


def test_take_keeps_the_given_order(store, ref):
    sel = store.take([40, 2, 40, 99])
    assert sel.rows.tolist() == [40, 2, 40, 99]
    assert sel.table.column("token").to_pylist() == [ref.token[r] for r in [40, 2, 40, 99]]


def test_compressed_store_reads_through_zarr(documents):
    store = open_store(documents)
    ref = reference_tokens(documents).to_pandas()
    sel = store.select(regex="^[a-z]+$", pos="1:")
    expected = ref[ref.token.str.fullmatch("[a-z]+") & (ref.pos >= 1)]
    assert sel.rows.tolist() == expected.row.tolist() and len(sel) > 10
    assert store._reader(store.sites("final")[0], None).direct is None  # zstd: no raw path
    np.testing.assert_array_equal(sel.vectors("resid_post.1"), reference_vectors(documents, "resid", sel.rows, 0))
