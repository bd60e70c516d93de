"""Query and export: find any token's walk in a store, SQL over its tables, stream vectors to trainers.

    from embwalk.query import open_store
    store = open_store("stores/default")
    print(store.summary())
    sel = store.select(doc=3, doc_pos="0:16")       # or seq=, pos=, token=, regex=, where=, sql=
    x = sel.vectors("resid_post.6")                 # numpy [n, d_model]
    store.sql("select token, count(*) from tokens group by 1 order by 2 desc limit 5")
    ds = store.dataset("resid_post.6", batch_size=4096, seed=0)

See docs/query.md.
"""

from embwalk.query.errors import QueryError
from embwalk.query.selection import Selection
from embwalk.query.store import QueryStore, open_store

__all__ = ["QueryError", "QueryStore", "Selection", "VectorDataset", "open_store"]


def __getattr__(name: str):
    # torch is imported only by code that streams to a trainer
    if name == "VectorDataset":
        from embwalk.query.dataset import VectorDataset

        return VectorDataset
    raise AttributeError(f"module 'embwalk.query' has no attribute {name!r}")
