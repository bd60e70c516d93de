"""SQL over a store's tables: ``tokens`` (committed shards only) and every table under stats/.

Tables are DuckDB views over the Parquet files, so nothing is loaded until a
query runs and filters are pushed down into the files. A stats table is
registered by its name and also as ``stats.NAME`` (the name to use if it
clashes with ``tokens``); quote names that are not identifiers
(``select * from "encoding-00003"``).
"""

from __future__ import annotations

import duckdb
import pyarrow as pa

from embwalk.query.errors import QueryError, first_line
from embwalk.store import layout
from embwalk.store.reader import Store


class Tables:
    def __init__(self, store: Store, committed: list[int]):
        self.con = duckdb.connect()
        if store.local is None:
            self.con.register_filesystem(store.fsspec)  # DuckDB reads remote Parquet through fsspec
        files = store.token_files(committed)
        if files:
            self.con.execute(f"CREATE VIEW tokens AS SELECT * FROM read_parquet({_list(files)})")
        else:  # nothing committed yet: an empty table of the right schema
            self.con.register("tokens", layout.TOKEN_SCHEMA.empty_table())
        stats = store.stats_tables()
        self.names = store.table_names(stats)
        if stats:
            self.con.execute("CREATE SCHEMA stats")
        for name, paths in stats.items():
            scan = f"SELECT * FROM read_parquet({_list(paths)}, union_by_name = true)"
            self.con.execute(f"CREATE VIEW stats.{_ident(name)} AS {scan}")
            if name != "tokens":  # a stats table called tokens is only stats.tokens
                self.con.execute(f"CREATE VIEW {_ident(name)} AS {scan}")

    def sql(self, query: str, params: list | dict | None = None) -> pa.Table:
        """Run a query; a user's mistake (syntax, unknown table or column, bad regex) is one line."""
        try:
            return self.con.sql(query, params=params).to_arrow_table()
        except duckdb.Error as exc:
            raise QueryError(f"query failed: {first_line(exc)} (in: {_short(query)})") from exc

    def check_regex(self, pattern: str) -> None:
        """RE2 (DuckDB's engine) refuses some Python syntax, such as look-arounds; say so up front."""
        try:
            self.con.execute("SELECT regexp_matches('', ?)", [pattern]).fetchall()
        except duckdb.Error as exc:
            detail = first_line(exc).removeprefix("Invalid Input Error: ")
            raise QueryError(f"invalid regular expression {pattern!r} (RE2 syntax): {detail}") from exc

    def close(self) -> None:
        self.con.close()


def _list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 80 else text[:77] + "..."
