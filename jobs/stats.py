"""Walk statistics of a stored run: ``python -m jobs.stats store=PATH [stats.families=[...]] [cluster=ray]``."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from embwalk.config import from_dict
from embwalk.executors.config import ClusterConfig
from embwalk.jobs._entry import require_store, run_job, store_shorthand
from embwalk.stats.config import StatsOptions


@dataclass
class StatsJob:
    store: str | None = None  # the store (a directory or an fsspec URL): store=PATH
    stats: StatsOptions = field(default_factory=StatsOptions)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


SCHEMA = StatsJob


def stats(config: dict) -> int:
    from embwalk.stats.job import compute_store_stats

    path = require_store(config)
    job = from_dict(StatsJob, config)
    summary = compute_store_stats(path, job.stats, job.cluster, report=lambda msg: print(msg, file=sys.stderr))
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    sh = summary["shards"]
    lines = [
        f"statistics: {summary['store']}/{summary.get('out', 'stats')} ({', '.join(sorted(summary['families']))})",
        f"  {summary['n_tokens']} tokens in {summary['n_sequences']} sequences, "
        f"{sh['with_stats']}/{sh['total']} shards ({sh['committed']} committed)",
    ]
    for family, why in summary.get("skipped", {}).items():
        lines.append(f"  skipped {family}: {why}")
    for table, what in summary.get("model_tables", {}).items():
        lines.append(f"  {table}: {what}")
    if summary.get("final_from") not in (None, "captured"):
        lines.append(f"  decoding read {summary['final_from']}")
    if summary.get("n_excluded"):
        lines.append(f"  left out: {summary['n_excluded']} tokens (stats.exclude_positions / exclude_massive)")
    t = summary.get("timings") or {}
    if t.get("tokens"):
        workers = f"{t['workers']} Ray worker(s)" if t.get("cluster") == "ray" else f"{t['workers']} worker(s)"
        lines.append(
            f"  this run: {t['tokens']} tokens in {t['wall_seconds']:.1f} s ({t.get('tokens_per_second', 0):.0f} "
            f"tokens/s wall, {workers}); read {t.get('read_tokens_per_second', 0):.0f} tokens/s "
            f"({t.get('read_mb_per_second', 0):.0f} MB/s), statistics {t.get('stats_tokens_per_second', 0):.0f} "
            "tokens/s (per worker)"
        )
        fam = t.get("family_tokens_per_second", {})
        if fam:
            lines.append("  per family (tokens/s, one worker): " + ", ".join(f"{k} {v:.0f}" for k, v in fam.items()))
        read, comp = t.get("read_tokens_per_second"), t.get("stats_tokens_per_second")
        if read and comp:
            if comp >= read:
                lines.append(f"  statistics keep up with reading ({comp / read:.1f}x the read rate)")
            else:
                slow = min(fam, key=fam.get) if fam else "?"
                lines.append(f"  statistics are {read / comp:.1f}x slower than reading the store (slowest: {slow}; "
                             "docs/statistics.md#cost)")
    lines.append(f"  summary: {summary['store']}/{summary.get('out', 'stats')}/summary.json")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    run_job("stats", SCHEMA, stats, store_shorthand(argv, "store"))


if __name__ == "__main__":
    main()
