"""Selector values -> SQL conditions, and the one-line errors for values that make no sense."""

from __future__ import annotations

import pytest

from embwalk.query import QueryError, open_store
from embwalk.query.selectors import token_condition


def test_conditions():
    assert token_condition() == ("TRUE", [])
    assert token_condition(doc=3) == ("doc_id = 3", [])
    assert token_condition(pos="2:5") == ("pos >= 2 AND pos < 5", [])
    assert token_condition(pos=":5", seq=(4, None)) == ("seq_id >= 4 AND pos < 5", [])
    assert token_condition(token_id=[1, 2]) == ("token_id IN (1, 2)", [])
    assert token_condition(row=[]) == ("FALSE", [])
    assert token_condition(token=["a", "b"], regex="x+") == (
        "token IN (?, ?) AND regexp_matches(token, ?)", ["a", "b", "x+"])
    assert token_condition(doc="7", where="pos > 1") == ("doc_id = 7 AND (pos > 1)", [])
    assert token_condition(doc=3, doc_pos="0:16") == ("doc_id = 3 AND doc_pos >= 0 AND doc_pos < 16", [])
    assert token_condition(pos=0, doc_pos=[0, 4]) == ("pos = 0 AND doc_pos IN (0, 4)", [])


@pytest.mark.parametrize(
    "selectors, fragment",
    [
        (dict(doc="three"), "doc='three': expected an integer"),
        (dict(pos="a:b"), "its ends must be integers"),
        (dict(doc_pos="first"), "doc_pos='first': expected an integer"),
        (dict(seq=[1, "x"]), "every item of the list must be an integer"),
        (dict(row=slice(0, 10, 2)), "ranges take no step"),
        (dict(token=5), "expected a token's text"),
        (dict(regex=3), "expected a regular expression"),
        (dict(where=""), "expected an SQL condition"),
        (dict(doc=True), "expected an integer"),
    ],
)
def test_bad_values(selectors, fragment):
    with pytest.raises(QueryError, match=fragment):
        token_condition(**selectors)


@pytest.mark.parametrize("pattern", ["(", "[a-", "(?=lookahead)", "a{2,1}"])
def test_regex_that_does_not_compile(packed, pattern):
    with pytest.raises(QueryError, match="invalid regular expression") as info:
        open_store(packed).select(regex=pattern)
    assert "\n" not in str(info.value) and repr(pattern) in str(info.value)


def test_malformed_where(packed):
    with pytest.raises(QueryError, match="query failed: Parser Error") as info:
        open_store(packed).select(where="pos >")
    assert "\n" not in str(info.value)
