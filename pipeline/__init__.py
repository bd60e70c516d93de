"""embwalk: activation extraction and walk statistics for transformer models.

``from pipeline import open_store`` opens a store for queries; the import is
lazy so that ``import pipeline`` stays light for the jobs that do not query.
"""


def __getattr__(name: str):
    if name == "open_store":
        from pipeline.query import open_store

        return open_store
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
