"""Every statistic family, registered: importing this module defines each family's class, which
adds itself to ``ACCUMULATORS`` (pipeline/stats/base.py) in FAMILIES order."""

from __future__ import annotations

from collections.abc import Iterable

from embwalk.stats import attention, bias_share, decoding, encoding, generation, geometry, lens  # noqa: F401  (each registers)
from embwalk.stats.base import ACCUMULATORS, Accumulator
from embwalk.stats.config import FAMILIES, StatsConfig

if tuple(ACCUMULATORS) != FAMILIES:
    raise ImportError(f"statistic families {tuple(ACCUMULATORS)} registered, {FAMILIES} expected")


def build_accumulators(
    config: StatsConfig | None = None, shard_ids: Iterable[str] | str = ()
) -> dict[str, Accumulator]:
    """One fresh accumulator per family in ``config.families``, all covering ``shard_ids``."""
    config = config if config is not None else StatsConfig()
    ids = [shard_ids] if isinstance(shard_ids, str) else list(shard_ids)
    return {f: ACCUMULATORS[f](config, ids) for f in config.families}
