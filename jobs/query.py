"""Query a store: ``python -m jobs.query store=PATH [doc=3] [regex='^ the$'] [sites=[resid_post.6]] ...``.

Prints the selected token rows (with vector norms at ``sites``) or, with
``export.path``, writes their vectors. ``sql=...`` prints any DuckDB query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from embwalk.errors import EmbwalkError
from embwalk.jobs._entry import run_job, store_shorthand
from embwalk.query import open_store
from embwalk.query.display import format_table

SELECTORS = ("row", "doc", "seq", "pos", "doc_pos", "token_id", "token", "regex", "where")


def query(config: dict) -> int:
    store_cfg = config.get("store") or {}
    store = open_store(store_cfg["path"], store_cfg.get("storage_options") or None)
    if config.get("summary"):
        print(store.summary())
    sites = list(config.get("sites") or [])
    export = config.get("export") or {}
    if export.get("format") == "saelens":  # the whole store, one row per sequence (docs/query.md)
        from embwalk.query.saelens import export_saelens

        if len(sites) != 1 or not export.get("path"):
            raise EmbwalkError("export.format=saelens takes export.path and one site, e.g. sites=[resid_post.6]")
        print(f"wrote SAELens cached activations of {sites[0]} to {export_saelens(store, sites[0], export['path'])}")
        return 0
    if config.get("sql") and not export.get("path"):
        print(format_table(store.sql(config["sql"]), config["show"]))
        return 0
    if config.get("sql"):
        selection = store.select(sql=config["sql"], limit=config.get("limit"))
    else:
        chosen = {k: config.get(k) for k in SELECTORS}
        selection = store.select(**chosen, columns=list(config.get("columns") or []) or None, limit=config.get("limit"))
    if export.get("path"):
        if not sites:
            raise EmbwalkError("export.path needs the sites to export, e.g. sites=[resid_post.6]")
        path = selection.export(export["path"], sites if len(sites) > 1 else sites[0], export.get("format"))
        print(f"wrote {len(selection)} rows x {', '.join(sites)} to {path}")
        return 0
    shown = selection.table.slice(0, max(0, config["show"]))
    for site in [s.name for s in store.sites(sites)] if sites else []:
        vectors = store.vectors(shown, site).astype(np.float32)
        shown = shown.append_column(f"|{site}|", pa.array(np.linalg.norm(vectors, axis=-1)))
    print(format_table(shown, config["show"], total=len(selection)))
    return 0


@dataclass
class QueryStoreOptions:
    """The store to read."""

    path: str = "???"  # a store directory or an fsspec URL; `store=PATH` is short for store.path=PATH
    storage_options: dict = field(default_factory=dict)  # passed to fsspec for URLs (endpoint, credentials, ...)


@dataclass
class ExportOptions:
    """Write the selection's vectors instead of printing rows."""

    path: str | None = None  # write the selection's vectors: FILE.npy, FILE.safetensors or a directory
    format: str | None = None  # npy | safetensors | datasets | saelens (default: from the path's suffix)


@dataclass
class QueryJob:
    """Selectors take N, [N,M,...] or a half-open range 'start:stop'; every selector given must hold."""

    store: QueryStoreOptions = field(default_factory=QueryStoreOptions)
    summary: bool = False  # print the store's summary (model, sites, tokens, shards, bytes) first
    row: Any = None
    doc: Any = None
    seq: Any = None
    pos: Any = None  # position in the sequence
    doc_pos: Any = None  # position in the document (in pack mode a document spans sequences)
    token_id: Any = None
    token: Any = None  # exact token text, e.g. "token=' the'" (or a list of texts)
    regex: str | None = None  # RE2 regular expression searched in the token text, e.g. "regex='^ [A-Z]'"
    where: str | None = None  # SQL condition over tokens; may use stats tables in subqueries
    sql: str | None = None  # a whole DuckDB query over tokens and stats tables, printed as is
    columns: list[str] = field(default_factory=list)  # extra SQL expressions to show, e.g. ["length(token) AS chars"]
    limit: int | None = None  # keep at most this many rows
    sites: list[str] = field(default_factory=list)  # sites whose vector norms are shown, and which are exported
    show: int = 20  # rows printed
    export: ExportOptions = field(default_factory=ExportOptions)


SCHEMA = QueryJob


def main(argv: list[str] | None = None) -> None:
    run_job("query", SCHEMA, query, store_shorthand(argv, "store.path"))


if __name__ == "__main__":
    main()
