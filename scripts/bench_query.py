"""Benchmark: random fetch and the training dataset, against raw reads of the same files.

    .venv/bin/python scripts/bench_query.py --store /tmp/bench_store [--site resid_post.6]

Build the store first (about 1.2 GB; keep it outside the repository):

    .venv/bin/python -m jobs.extract corpus.max_tokens=32768 store.path=/tmp/bench_store

Everything is measured in one run, with the page cache warm and cold (pages
evicted with posix_fadvise(DONTNEED), which needs no privileges):

- raw files:  sequential reads of every shard file of the site's array, whole,
              into one reused 8 MB buffer: the best the disk / page cache gives;
- raw layer:  plain ``preadv`` of exactly the bytes of the layer's chunks (found
              from the Zarr shard index) into a layer-sized array, in file order:
              the same bytes the dataset reads, with no shuffling and no batches;
- fetch:      ``store.vectors(rows, site)`` for ``--rows`` random committed rows
              (median, p90, max of ``--repeats``), and the same through Zarr;
- dataset:    time to the first batch, and MB/s of vectors delivered: warm, over
              whole epochs of the site (``--mb`` MB at least); cold, one epoch
              of each of ``--cold-layers`` other layers after one eviction.

Prints a Markdown report with the machine description.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from torch.utils.data import DataLoader  # noqa: E402

from embwalk.query import VectorDataset, open_store  # noqa: E402

MB = 1e6


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache, so the next read comes from the disk."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def raw_files(files: list[Path]) -> float:
    view = memoryview(bytearray(8 << 20))
    total, start = 0, time.perf_counter()
    for p in files:
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(view):
                total += n
    return total / MB / (time.perf_counter() - start)


def layer_ranges(store, array: str, position: int) -> list[tuple[Path, int, int]]:
    """(file, offset, nbytes) of every inner chunk of one layer, read from the shard indexes."""
    spec = store.manifest["arrays"][array]
    inner = spec["shards"][0] // spec["chunks"][0]
    layers = spec["shape"][1] if len(spec["shape"]) == 3 else 1
    out = []
    for shard in store.committed:
        path = Path(store.location) / spec["path"] / "c" / str(shard) / "0" / ("0" if layers > 1 else "")
        path = path if path.is_file() else path.parent
        with open(path, "rb") as f:
            f.seek(-(16 * inner * layers + 4), os.SEEK_END)
            index = np.frombuffer(f.read(16 * inner * layers), dtype="<u8").reshape(inner, layers, 2)
        out += [(path, int(o), int(n)) for o, n in index[:, position] if o != 2**64 - 1]
    return out


def raw_layer(ranges: list[tuple[Path, int, int]]) -> float:
    buf = np.empty(sum(n for _, _, n in ranges), dtype=np.uint8)
    view, at = memoryview(buf), 0
    start = time.perf_counter()
    fds = {}
    for path, offset, n in sorted(ranges):
        fd = fds.get(path) or fds.setdefault(path, os.open(path, os.O_RDONLY))
        at += os.preadv(fd, [view[at : at + n]], offset)
    seconds = time.perf_counter() - start
    for fd in fds.values():
        os.close(fd)
    return at / MB / seconds


def fetch_times(store, site: str, n_rows: int, repeats: int, direct: bool | None, seed: int,
                cold: list[Path] | None = None) -> list[float]:
    rng = np.random.default_rng(seed)
    committed = np.concatenate([np.arange(a, b) for a, b in store.committed_rows.ranges])
    times = []
    for _ in range(repeats):
        rows = rng.choice(committed, n_rows, replace=False)
        if cold:
            evict(cold)
        start = time.perf_counter()
        out = store.vectors(rows, site, direct=direct)
        times.append(time.perf_counter() - start)
        assert out.shape[0] == n_rows
    return times


def epochs(store, site: str, batch_size: int, workers: int, min_mb: float, epoch0: int = 0):
    """(seconds to the first batch, MB delivered, seconds) over whole epochs until ``min_mb`` MB."""
    ds = VectorDataset(store, site, batch_size=batch_size, seed=0)
    nbytes, start, ttfb, epoch = 0, time.perf_counter(), None, epoch0
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0)
    while True:
        ds.set_epoch(epoch)
        for batch in loader:
            ttfb = ttfb if ttfb is not None else time.perf_counter() - start
            nbytes += batch.numel() * batch.element_size()
        epoch += 1
        if nbytes / MB >= min_mb:
            return ttfb, nbytes / MB, time.perf_counter() - start


def machine() -> str:
    cpu = "unknown CPU"
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.platform()}, "
            f"Python {platform.python_version()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default="/tmp/bench_store")
    ap.add_argument("--site", default="resid_post.6")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--mb", type=float, default=1000, help="MB of vectors per warm dataset measurement")
    ap.add_argument("--cold-layers", type=int, default=8, help="layers read cold, one epoch each")
    args = ap.parse_args()

    store = open_store(args.store)
    site = store.sites(args.site)[0]
    spec = store.manifest["arrays"][site.array]
    files = sorted(p for p in (Path(args.store) / spec["path"] / "c").rglob("*") if p.is_file())
    everything = sorted(p for p in Path(args.store).rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in everything)
    layers = spec.get("layers", [None])
    others = [i for i in range(len(layers)) if i != site.index][: args.cold_layers]
    cold_sites = [f"resid_pre.{layers[i]}" if site.array == "resid" else f"{site.array}.{layers[i]}" for i in others]
    if site.index is None:
        cold_sites = [site.name]

    # -- raw reads
    raw_files(files)
    warm_files = statistics.median(raw_files(files) for _ in range(3))
    cold_files = []
    for _ in range(3):
        evict(files)
        cold_files.append(raw_files(files))
    cold_files = statistics.median(cold_files)
    raw_layer(layer_ranges(store, site.array, site.index or 0))
    warm_layer = statistics.median(raw_layer(layer_ranges(store, site.array, site.index or 0)) for _ in range(3))
    cold_ranges = [r for i in (others or [0]) for r in layer_ranges(store, site.array, i)]
    evict(everything)
    cold_layer = raw_layer(cold_ranges)

    # -- random fetch
    fetch_times(store, args.site, args.rows, 2, None, seed=99)  # each shard's index is read once
    warm_fetch = fetch_times(store, args.site, args.rows, args.repeats, None, seed=1)
    zarr_fetch = fetch_times(store, args.site, args.rows, max(3, args.repeats // 4), False, seed=2)
    cold_fetch = fetch_times(store, args.site, args.rows, min(args.repeats, 5), None, seed=3, cold=everything)

    # -- dataset
    results = {}
    for workers in (0, 2):
        epochs(store, args.site, args.batch_size, workers, 1)  # imports, first scratch buffer
        ttfb, mb, seconds = epochs(store, args.site, args.batch_size, workers, args.mb, epoch0=1)
        evict(everything)
        cold = [epochs(store, s, args.batch_size, workers, 1) for s in cold_sites]
        results[workers] = (ttfb, mb / seconds, cold[0][0], sum(c[1] for c in cold) / sum(c[2] for c in cold))

    def ms(times: list[float]) -> str:
        t = sorted(times)
        return (f"median {1e3 * statistics.median(t):.1f} ms, p90 {1e3 * t[int(0.9 * (len(t) - 1))]:.1f} ms, "
                f"max {1e3 * t[-1]:.1f} ms")

    d, itemsize = spec["shape"][-1], np.dtype(spec["dtype"]).itemsize
    print(f"## Query benchmark: `{args.site}` of a {size / 1e9:.2f} GB store\n")
    print(f"- machine: {machine()}")
    print(f"- store: {args.store}, {store.n_tokens} tokens in {len(store.committed)} shards, "
          f"d_model {d} {spec['dtype']} ({d * itemsize} B per vector); "
          f"`{site.array}` is {len(files)} shard files, {sum(p.stat().st_size for p in files) / 1e9:.2f} GB")
    print(f"- cold dataset and cold raw-layer rows: one epoch of each of {', '.join(cold_sites)}, "
          f"read after one eviction\n")
    print("| measurement | page cache warm | cold (evicted) |")
    print("|---|---|---|")
    print(f"| raw files: whole shard files, sequential | {warm_files:.0f} MB/s | {cold_files:.0f} MB/s |")
    print(f"| raw layer: the layer's chunk bytes only | {warm_layer:.0f} MB/s | {cold_layer:.0f} MB/s |")
    print(f"| fetch {args.rows} random rows | {ms(warm_fetch)} | {ms(cold_fetch)} |")
    print(f"| fetch {args.rows} random rows, through Zarr | {ms(zarr_fetch)} | |")
    for workers, (ttfb, rate, cold_ttfb, cold_rate) in results.items():
        print(f"| dataset, {workers} workers: time to first batch | {1e3 * ttfb:.0f} ms | {1e3 * cold_ttfb:.0f} ms |")
        print(f"| dataset, {workers} workers: sustained | {rate:.0f} MB/s = {rate / warm_files:.2f}x raw files, "
              f"{rate / warm_layer:.2f}x raw layer | {cold_rate:.0f} MB/s = {cold_rate / cold_files:.2f}x raw files, "
              f"{cold_rate / cold_layer:.2f}x raw layer |")
    print(f"\nbatch size {args.batch_size}, default shuffle buffer and block size; warm rates over "
          f">= {args.mb:.0f} MB of vectors.")


if __name__ == "__main__":
    main()
