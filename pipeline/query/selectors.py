"""Selectors -> one SQL condition over ``tokens``.

Integer selectors (``row``, ``doc``, ``seq``, ``pos``, ``doc_pos``, ``token_id``)
take a number, a list of numbers, or a half-open range: ``(start, stop)``, a
``slice``, a ``range`` or the string ``"start:stop"`` (either end may be left
out, as in Python). ``token`` is exact text (or a list of texts), ``regex`` an
RE2 regular expression searched anywhere in the token text (anchor it with
``^...$``), ``where`` any SQL condition, which may use subqueries over the
stats tables. Everything given must hold.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable

from embwalk.query.errors import QueryError

INT_COLUMNS = {
    "row": "row", "doc": "doc_id", "seq": "seq_id", "pos": "pos", "doc_pos": "doc_pos", "token_id": "token_id",
}


def token_condition(
    *,
    row=None, doc=None, seq=None, pos=None, doc_pos=None, token_id=None,
    token: str | list[str] | None = None, regex: str | None = None, where: str | None = None,
) -> tuple[str, list]:
    """The WHERE clause (``TRUE`` when nothing is selected) and its parameters."""
    clauses: list[str] = []
    params: list = []
    values = {"row": row, "doc": doc, "seq": seq, "pos": pos, "doc_pos": doc_pos, "token_id": token_id}
    for name, value in values.items():
        if value is not None:
            clauses.append(_int_condition(INT_COLUMNS[name], name, value))
    if token is not None:
        texts = [token] if isinstance(token, str) else list(token) if _listlike(token) else None
        if texts is None or not all(isinstance(t, str) for t in texts):
            raise QueryError(f"token={token!r}: expected a token's text or a list of texts")
        clauses.append(f"token IN ({', '.join('?' * len(texts))})" if texts else "FALSE")
        params += texts
    if regex is not None:
        if not isinstance(regex, str):
            raise QueryError(f"regex={regex!r}: expected a regular expression as a string")
        clauses.append("regexp_matches(token, ?)")
        params.append(regex)
    if where is not None:
        if not isinstance(where, str) or not where.strip():
            raise QueryError(f"where={where!r}: expected an SQL condition as a string")
        clauses.append(f"({where})")
    return (" AND ".join(clauses) or "TRUE"), params


def _int_condition(column: str, name: str, value) -> str:
    bounds = _range(value)
    if bounds is not None:
        lo, hi = bounds
        parts = ([f"{column} >= {lo}"] if lo is not None else []) + ([f"{column} < {hi}"] if hi is not None else [])
        return " AND ".join(parts) or "TRUE"
    number = _int(value)
    if number is not None:
        return f"{column} = {number}"
    if _listlike(value):
        numbers_ = [_int(v) for v in value]
        if any(n is None for n in numbers_):
            raise QueryError(f"{name}={_show(value)}: every item of the list must be an integer")
        return f"{column} IN ({', '.join(map(str, numbers_))})" if numbers_ else "FALSE"
    raise QueryError(f"{name}={_show(value)}: expected an integer, a list of integers or a range 'start:stop'")


def _range(value) -> tuple[int | None, int | None] | None:
    if isinstance(value, (slice, range)):
        if value.step not in (None, 1):
            raise QueryError(f"ranges take no step: {value!r}")
        ends = (value.start, value.stop)
    elif isinstance(value, tuple) and len(value) == 2:
        ends = value
    elif isinstance(value, str) and ":" in value:
        ends = tuple(part.strip() or None for part in value.split(":", 1))
    else:
        return None
    out = []
    for end in ends:
        number = None if end is None else _int(end)
        if end is not None and number is None:
            raise QueryError(f"range {_show(value)}: its ends must be integers")
        out.append(number)
    return out[0], out[1]


def _int(value) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _listlike(value) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, dict))


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
