"""SQL over tokens and every stats table, and query results joined back to vectors."""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embwalk.query import QueryError, open_store
from tests.query.conftest import reference_tokens, reference_vectors


@pytest.fixture
def with_stats(packed, tmp_path):
    """A copy of the store with stats tables in both layouts, plus files that are not tables."""
    root = tmp_path / "store"
    shutil.copytree(packed, root)
    stats = root / "stats"
    encoding = pa.table({"stat": ["norm", "norm"], "layer": [0, 1], "mean": [1.5, 2.5]})
    pq.write_table(encoding, stats / "encoding.parquet")
    (stats / "per_token").mkdir()
    n = reference_tokens(packed).num_rows
    score = np.random.default_rng(0).random(n)
    half = n // 2
    pq.write_table(pa.table({"row": np.arange(half), "score": score[:half]}), stats / "per_token" / "part-0.parquet")
    pq.write_table(pa.table({"row": np.arange(half, n), "score": score[half:]}), stats / "per_token" / "part-1.parquet")
    pq.write_table(pa.table({"row": [0]}), stats / "per_token" / ".part-2.parquet.tmp-1")  # an atomic write in flight
    pq.write_table(pa.table({"bad": [1]}), stats / ".hidden.parquet")
    (stats / "notes.txt").write_text("not a table")
    pq.write_table(pa.table({"x": [1, 2, 3]}), stats / "tokens.parquet")  # clashes with the token table
    return root, score


def test_sql_over_tokens(packed):
    store = open_store(packed)
    ref = reference_tokens(packed).to_pandas()
    got = store.sql("SELECT doc_id, count(*) AS n FROM tokens GROUP BY doc_id ORDER BY doc_id")
    assert got.column("n").to_pylist() == ref.groupby("doc_id").size().tolist()
    assert store.sql("SELECT count(*) AS n FROM tokens WHERE token = ?", [" the"]).column("n")[0].as_py() == (
        ref.token == " the").sum()
    assert store.tables == ["tokens"]


def test_stats_tables_are_registered_by_name(with_stats):
    root, score = with_stats
    store = open_store(root)
    assert store.tables == ["tokens", "encoding", "per_token"]
    assert store.sql("SELECT mean FROM encoding ORDER BY layer").column("mean").to_pylist() == [1.5, 2.5]
    got = store.sql("SELECT score FROM per_token ORDER BY row").column("score").to_numpy()
    np.testing.assert_array_equal(got, score)  # both files, not the temporary one
    assert store.sql("SELECT sum(x) AS s FROM stats.tokens").column("s")[0].as_py() == 6
    assert store.sql("SELECT count(*) AS n FROM tokens").column("n")[0].as_py() == len(score)  # tokens stays tokens


def test_condition_over_stats_and_join_back_to_vectors(with_stats):
    root, score = with_stats
    store = open_store(root)
    ref = reference_tokens(root).to_pandas()
    sel = store.select(where="row IN (SELECT row FROM per_token WHERE score > 0.7)", pos="2:")
    expected = ref[(score > 0.7) & (ref.pos >= 2)]
    assert sel.rows.tolist() == expected.row.tolist()

    top = store.sql("SELECT p.row, p.score FROM per_token p JOIN tokens t USING (row) ORDER BY p.score DESC LIMIT 7")
    order = np.argsort(-score)[:7]
    assert top.column("row").to_pylist() == order.tolist()
    np.testing.assert_array_equal(store.vectors(top, "resid_post.2"), reference_vectors(root, "resid", order, 3))
    from_pandas = store.vectors(top.to_pandas(), "final")
    np.testing.assert_array_equal(from_pandas, reference_vectors(root, "final", order, None))

    sel = store.select(sql="SELECT t.row, p.score FROM tokens t JOIN per_token p USING (row) "
                           "ORDER BY p.score DESC LIMIT 7")
    assert sel.rows.tolist() == order.tolist()
    assert sel.table.column("score").to_pylist() == score[order].tolist()


def test_duckdb_connection_for_relational_work(packed):
    store = open_store(packed)
    rel = store.duckdb.sql("SELECT row FROM tokens WHERE pos = 3")
    np.testing.assert_array_equal(store.vectors(rel, "final"), store.select(pos=3).vectors("final"))


@pytest.mark.parametrize(
    "query, fragment",
    [
        ("SELEC row FROM tokens", "syntax error"),
        ("SELECT row FROM no_such_table", "no_such_table"),
        ("SELECT no_such_column FROM tokens", "no_such_column"),
    ],
)
def test_malformed_sql_is_one_line(packed, query, fragment):
    with pytest.raises(QueryError, match=fragment) as info:
        open_store(packed).sql(query)
    assert "\n" not in str(info.value)


def test_sql_selection_needs_a_row_column(packed):
    with pytest.raises(QueryError, match="must return a 'row' column"):
        open_store(packed).select(sql="SELECT doc_id FROM tokens")
    with pytest.raises(QueryError, match="put doc into it"):
        open_store(packed).select(sql="SELECT row FROM tokens", doc=1)
