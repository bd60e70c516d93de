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

# name -> the module that defines it: imported on first use
_API = {
    "open_store": "embwalk.query",
    "sae_metadata": "embwalk.query.saelens",
    "export_saelens": "embwalk.query.saelens",
    "extract": "embwalk.executors.dispatch",
    "compute_store_stats": "embwalk.stats.job",
    "verify_store": "embwalk.store.verify",
    "build_report": "embwalk.report.build",
    "Store": "embwalk.store.reader",
    "EmbwalkError": "embwalk.errors",
    "ExtractConfig": "embwalk.extraction.config",
    "CaptureConfig": "embwalk.extraction.config",
    "ModelConfig": "embwalk.models.config",
    "CorpusConfig": "embwalk.corpus.config",
    "StoreConfig": "embwalk.store.config",
    "ClusterConfig": "embwalk.executors.config",
    "StatsOptions": "embwalk.stats.config",
    "ReportOptions": "embwalk.report.options",
}
__all__ = sorted(_API)
__getattr__, __dir__ = lazy_attributes(__name__, _API)
