"""Walk statistics: mergeable accumulators over batches of activations.

One accumulator class per family (``EncodingWalk``, ``LogitLens``, ``DecodingWalk``,
``AttentionStats``, ``Geometry``), all with ``update(...)``, ``update_from(inputs)``,
``merge(other)`` (exact, refuses overlapping shard ids), ``result() -> dict[str, pyarrow.Table]``
and ``to_arrow()`` / ``Accumulator.from_arrow()`` for Parquet partials. Each declares
what it reads (``needs_*``, pipeline/stats/base.py); ``ACCUMULATORS`` is the registry.
Formulas and sources: docs/statistics.md.

Over a whole run, ``WalkStats`` (walk.py) feeds every family one sequence at a time for
both routes: the two-step route over a stored run (from_store.py, run as a job by
job.py) and the in-pass route (inpass.py, an observer of the extraction's shard runner).
``write_shard_partials`` stores a shard's partials in ``STORE/stats/partials/`` and
``merge_store_stats`` merges them into ``STORE/stats/<table>.parquet`` (partials.py).
"""

from __future__ import annotations

from collections.abc import Iterable

from embwalk.stats.attention import AttentionStats
from embwalk.stats.base import (
    ACCUMULATORS,
    Accumulator,
    ShardOverlapError,
    StatsMergeError,
    merge_all,
    read_partial,
    write_partial,
)
from embwalk.stats.config import FAMILIES, Bins, StatsConfig, StatsOptions, most_frequent_types
from embwalk.stats.decoding import DecodingWalk
from embwalk.stats.encoding import EncodingWalk
from embwalk.stats.geometry import Geometry
from embwalk.stats.head import ModelHead
from embwalk.stats.inpass import InPassStats, required_sites
from embwalk.stats.inputs import Offer, SequenceInputs
from embwalk.stats.lens import LogitLens
from embwalk.stats.partials import merge_store_stats, write_shard_partials
from embwalk.stats.similarity import similarity_map
from embwalk.stats.walk import WalkStats

if tuple(ACCUMULATORS) != FAMILIES:  # every family's class defines itself into the registry
    raise ImportError(f"statistic families {tuple(ACCUMULATORS)} registered, {FAMILIES} expected")


def build_accumulators(
    config: StatsConfig | None = None, shard_ids: Iterable[str] | str = ()
) -> dict[str, Accumulator]:
    """One fresh accumulator per family in ``config.families``, all covering ``shard_ids``."""
    config = config if config is not None else StatsConfig()
    ids = [shard_ids] if isinstance(shard_ids, str) else list(shard_ids)
    return {f: ACCUMULATORS[f](config, ids) for f in config.families}


__all__ = [
    "ACCUMULATORS", "FAMILIES", "Accumulator", "StatsOptions", "AttentionStats", "Bins", "DecodingWalk",
    "EncodingWalk", "Geometry", "InPassStats", "LogitLens", "ModelHead", "Offer", "SequenceInputs",
    "ShardOverlapError", "StatsConfig", "StatsMergeError", "WalkStats", "build_accumulators", "merge_all",
    "merge_store_stats", "most_frequent_types", "read_partial", "required_sites", "similarity_map",
    "write_partial", "write_shard_partials",
]
