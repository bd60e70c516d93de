"""Walk statistics: mergeable accumulators over batches of activations.

One accumulator class per family (``EncodingWalk``, ``LogitLens``, ``DecodingWalk``,
``AttentionStats``, ``Geometry``), all with ``update(...)``, ``update_from(inputs)``,
``merge(other)`` (exact, refuses overlapping shard ids), ``result() -> dict[str, pyarrow.Table]``
and ``to_arrow()`` / ``Accumulator.from_arrow()`` for Parquet partials. Each declares
what it reads (``needs_*``, pipeline/stats/base.py); ``ACCUMULATORS`` is the registry
(complete once families.py is imported: every module that looks a family up imports it).
Formulas and sources: docs/statistics.md.

Over a whole run, ``WalkStats`` (walk.py) feeds every family one sequence at a time for
both routes: the two-step route over a stored run (from_store.py, run as a job by
job.py) and the in-pass route (inpass.py, an observer of the extraction's shard runner).
``write_shard_partials`` stores a shard's partials in ``STORE/stats/partials/`` and
``merge_store_stats`` merges them into ``STORE/stats/<table>.parquet`` (partials.py).
"""

from __future__ import annotations

from embwalk.lazy import lazy_attributes

# name -> the module that defines it: imported on first use (the configs stay light)
_WHERE = {
    "AttentionStats": "embwalk.stats.attention",
    "ACCUMULATORS": "embwalk.stats.families",
    "build_accumulators": "embwalk.stats.families",
    "Accumulator": "embwalk.stats.base",
    "ShardOverlapError": "embwalk.stats.base",
    "StatsMergeError": "embwalk.stats.base",
    "merge_all": "embwalk.stats.base",
    "read_partial": "embwalk.stats.base",
    "write_partial": "embwalk.stats.base",
    "FAMILIES": "embwalk.stats.config",
    "Bins": "embwalk.stats.config",
    "StatsConfig": "embwalk.stats.config",
    "StatsOptions": "embwalk.stats.config",
    "most_frequent_types": "embwalk.stats.config",
    "DecodingWalk": "embwalk.stats.decoding",
    "EncodingWalk": "embwalk.stats.encoding",
    "Geometry": "embwalk.stats.geometry",
    "ModelHead": "embwalk.stats.head",
    "InPassStats": "embwalk.stats.inpass",
    "required_sites": "embwalk.stats.inpass",
    "Offer": "embwalk.stats.inputs",
    "SequenceInputs": "embwalk.stats.inputs",
    "LogitLens": "embwalk.stats.lens",
    "merge_store_stats": "embwalk.stats.partials",
    "write_shard_partials": "embwalk.stats.partials",
    "similarity_map": "embwalk.stats.similarity",
    "WalkStats": "embwalk.stats.walk",
}
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
