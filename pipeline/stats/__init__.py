"""Walk statistics: mergeable accumulators over batches of activations.

One accumulator class per family (``EncodingWalk``, ``LogitLens``, ``DecodingWalk``,
``AttentionStats``, ``Geometry``, ``BiasShare``, ``GenerationWalk``), all with ``update(...)``, ``update_from(inputs)``,
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

# module -> the names it defines: imported on first use (the configs stay light)
_WHERE = {
    "embwalk.stats.attention": ["AttentionStats"],
    "embwalk.stats.bias_share": ["BiasShare"],
    "embwalk.stats.families": ["ACCUMULATORS", "build_accumulators"],
    "embwalk.stats.base": [
        "Accumulator", "ShardOverlapError", "StatsMergeError", "merge_all", "read_partial", "write_partial",
    ],
    "embwalk.stats.config": ["FAMILIES", "Bins", "StatsConfig", "StatsOptions", "most_frequent_types"],
    "embwalk.stats.decoding": ["DecodingWalk"],
    "embwalk.stats.encoding": ["EncodingWalk"],
    "embwalk.stats.geometry": ["Geometry"],
    "embwalk.stats.head": ["ModelHead"],
    "embwalk.stats.inpass": ["InPassStats", "required_sites"],
    "embwalk.stats.inputs": ["Offer", "SequenceInputs"],
    "embwalk.stats.lens": ["LogitLens"],
    "embwalk.stats.partials": ["merge_store_stats", "write_shard_partials"],
    "embwalk.stats.similarity": ["similarity_map"],
    "embwalk.stats.walk": ["WalkStats"],
}
__all__ = sorted(name for names in _WHERE.values() for name in names)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
