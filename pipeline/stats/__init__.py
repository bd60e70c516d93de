"""Walk statistics: mergeable accumulators over batches of activations.

One accumulator class per family (``EncodingWalk``, ``LogitLens``, ``DecodingWalk``,
``AttentionStats``, ``Geometry``), all with ``update(...)``, ``merge(other)``
(exact, refuses overlapping shard ids), ``result() -> dict[str, pyarrow.Table]``
and ``to_arrow()`` / ``Accumulator.from_arrow()`` for Parquet partials.
Formulas and sources: docs/statistics.md.

Over a whole run, ``WalkStats`` feeds every family one sequence at a time (both the
in-pass route and the two-step route over a store use it), ``write_shard_partials``
stores a shard's partials in ``STORE/stats/partials/`` and ``merge_store_stats`` merges
them into ``STORE/stats/<table>.parquet``.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.stats.attention import AttentionStats
from pipeline.stats.base import (
    Accumulator,
    ShardOverlapError,
    StatsMergeError,
    merge_all,
    read_partial,
    write_partial,
)
from pipeline.stats.config import FAMILIES, Bins, StatsConfig, StatsOptions, most_frequent_types
from pipeline.stats.decoding import DecodingWalk
from pipeline.stats.encoding import EncodingWalk
from pipeline.stats.geometry import Geometry
from pipeline.stats.lens import LogitLens
from pipeline.stats.partials import merge_store_stats, write_shard_partials
from pipeline.stats.sequence import ModelHead, WalkStats
from pipeline.stats.similarity import similarity_map

ACCUMULATORS: dict[str, type[Accumulator]] = {
    cls.family: cls for cls in (EncodingWalk, LogitLens, DecodingWalk, AttentionStats, Geometry)
}


def build_accumulators(
    config: StatsConfig | None = None, shard_ids: Iterable[str] | str = ()
) -> dict[str, Accumulator]:
    """One fresh accumulator per family in ``config.families``, all covering ``shard_ids``."""
    config = config if config is not None else StatsConfig()
    ids = [shard_ids] if isinstance(shard_ids, str) else list(shard_ids)
    return {f: ACCUMULATORS[f](config, ids) for f in config.families}


__all__ = [
    "ACCUMULATORS", "FAMILIES", "Accumulator", "StatsOptions", "AttentionStats", "Bins", "DecodingWalk",
    "EncodingWalk", "Geometry", "LogitLens", "ModelHead", "ShardOverlapError", "StatsConfig",
    "StatsMergeError", "WalkStats", "build_accumulators", "merge_all", "merge_store_stats",
    "most_frequent_types", "read_partial", "similarity_map", "write_partial", "write_shard_partials",
]
