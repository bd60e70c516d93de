"""Benchmark: Ray with 1 and 2 CPU workers against the local run, same job.

    .venv/bin/python scripts/bench_ray.py [--tokens 4096] [--model smollm2-135m]

Each run extracts every residual layer + final to its own store with 1 torch
thread per worker (the local run too). Throughput is measured from the
commit markers: tokens / (last commit - first shard's start), so model
loading and Ray start-up, which do not scale with the corpus, are left out
(and reported separately as the whole run's wall time).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embwalk.corpus import CorpusConfig  # noqa: E402
from embwalk.executors.config import ClusterConfig  # noqa: E402
from embwalk.executors.local import extract_local  # noqa: E402
from embwalk.executors.ray import extract_ray  # noqa: E402
from embwalk.extraction.config import CaptureConfig, ExtractConfig  # noqa: E402
from embwalk.models.config import ModelConfig  # noqa: E402
from embwalk.store.config import StoreConfig  # noqa: E402
from scripts.bench_extract import machine  # noqa: E402


def steady_rate(store: Path) -> float:
    records = [json.loads(p.read_text()) for p in (store / "commits").glob("*.json")]
    window = max(r["committed_at"] for r in records) - min(r["started_at"] for r in records)
    return sum(r["n_tokens"] for r in records) / window


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--shard-tokens", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="embwalk-bench-ray-"))
    base = ExtractConfig(
        model=ModelConfig(name=args.model, device="cpu"),
        corpus=CorpusConfig(max_tokens=args.tokens, seq_len=args.seq_len),
        capture=CaptureConfig(),
        store=StoreConfig(shard_tokens=args.shard_tokens, chunk_tokens=min(256, args.shard_tokens)),
        cluster=ClusterConfig(batch_size=4, threads=1, progress=False),
    )
    runs = {
        "local, 1 thread": replace(base.cluster, kind="local"),
        "ray, 1 worker x 1 thread": replace(base.cluster, kind="ray", workers=1),
        "ray, 2 workers x 1 thread": replace(base.cluster, kind="ray", workers=2),
    }
    rates, walls = {}, {}
    for name, cluster in runs.items():
        store = work / name.replace(" ", "").replace(",", "_")
        cfg = replace(base, cluster=cluster, store=replace(base.store, path=str(store)))
        start = time.perf_counter()
        (extract_ray if cluster.kind == "ray" else extract_local)(cfg)
        walls[name] = time.perf_counter() - start
        rates[name] = steady_rate(store)
        shutil.rmtree(store)
    local = rates["local, 1 thread"]
    one = rates["ray, 1 worker x 1 thread"]
    lines = [
        f"### Ray vs local: {args.model}, {args.tokens} tokens, seq_len {args.seq_len}, shards of {args.shard_tokens}",
        "",
        f"Machine: {machine()}",
        "",
        "| run | tokens/s (steady) | vs local | vs ray 1 worker | wall s (incl. start-up) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in rates.items():
        lines.append(f"| {name} | {rate:,.0f} | {rate / local:.2f} | {rate / one:.2f} | {walls[name]:.1f} |")
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "a") as f:
            f.write(report + "\n\n")


if __name__ == "__main__":
    main()
