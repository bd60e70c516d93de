"""Query errors: what a user can get wrong when asking a store a question."""

from embwalk.errors import EmbwalkError


class QueryError(EmbwalkError):
    """A selection, SQL query or regular expression that cannot be run, in one line."""


def first_line(exc: BaseException) -> str:
    """DuckDB and friends put a caret diagram under the message; the first line is the message."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
