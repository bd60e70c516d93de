"""embwalk: activation extraction and walk statistics for transformer models.

The public API, imported lazily so that ``import embwalk`` stays light::

    import embwalk
    cfg = embwalk.ExtractConfig.from_dict({"corpus": {"max_tokens": 4096}, "store": {"path": "stores/a"}})
    embwalk.extract(cfg)                        # the extract job (cluster.kind: local or ray)
    store = embwalk.open_store("stores/a")      # select, SQL, vectors, datasets, export
    embwalk.compute_store_stats("stores/a")     # walk statistics of a stored run

The same jobs run from the command line: ``embwalk extract|stats|report|query|verify ...``.
"""

from __future__ import annotations

from embwalk.lazy import lazy_attributes

# module -> the names it defines: imported on first use
_API = {
    "embwalk.query": ["open_store"],
    "embwalk.query.saelens": ["sae_metadata", "export_saelens"],
    "embwalk.executors.dispatch": ["extract"],
    "embwalk.stats.job": ["compute_store_stats"],
    "embwalk.store.verify": ["verify_store"],
    "embwalk.report.build": ["build_report"],
    "embwalk.store.reader": ["Store"],
    "embwalk.errors": ["EmbwalkError"],
    "embwalk.extraction.config": ["ExtractConfig", "CaptureConfig"],
    "embwalk.models.config": ["ModelConfig"],
    "embwalk.corpus.config": ["CorpusConfig"],
    "embwalk.store.config": ["StoreConfig"],
    "embwalk.executors.config": ["ClusterConfig"],
    "embwalk.stats.config": ["StatsOptions"],
    "embwalk.report.options": ["ReportOptions"],
}
__all__ = sorted(name for names in _API.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
