"""What store format 2's checks cost: per-chunk checksums when writing, verification when resuming.

    .venv/bin/python scripts/bench_store.py [--gb 1.0] [--shard-tokens 4096] [--reps 3] [--dir /tmp]

1. Writing: one SmolLM2-shaped shard (31 residual layers + final, d_model 576,
   float16: 146 MB) written the way the writer does (temporary file, fsync,
   rename), with the per-chunk CRC-32C (format 2), the same bytes without it,
   and format 1 as it was (no chunk checksums, but a zlib CRC-32 over the values
   for the commit marker), median of ``--reps`` interleaved runs; also zarr's own
   zstd path with and without the crc32c codec.
2. Resuming: a synthetic store of ``--gb`` GB written through StoreWriter, then
   the check a rerun does before skipping committed shards (``store.verify=quick``)
   and the full check (``jobs.verify``), with the page cache warm and, where the
   machine allows dropping it (root), cold.

Prints a Markdown table; no model is loaded.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embwalk.store import layout  # noqa: E402
from embwalk.store.fs import LocalFS  # noqa: E402
from embwalk.store.shardfile import _index, write_shard_file  # noqa: E402
from embwalk.store.verify import check_shards  # noqa: E402
from embwalk.store.writer import StoreWriter  # noqa: E402

LAYERS, D, CHUNK = 31, 576, 256


def _without_checksums(out, data: np.ndarray, chunk_rows: int, shard_rows: int) -> None:
    """Format 1's shard file: the same chunks, no CRC after each (the index keeps its own)."""
    out.write(memoryview(data).cast("B"))
    out.write(_index(data, chunk_rows, shard_rows))  # offsets assume CRCs; the bytes written are what count


def _interleaved_medians(cases: dict, reps: int) -> dict[str, float]:
    """Median seconds of each case, the cases run in turn ``reps`` times (so drift hits all alike)."""
    times: dict[str, list[float]] = {label: [] for label in cases}
    for _ in range(reps):
        for label, fn in cases.items():
            t = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - t)
    return {label: statistics.median(ts) for label, ts in times.items()}


def bench_write(tmp: Path, shard_tokens: int, reps: int) -> list[tuple[str, float, float]]:
    rng = np.random.default_rng(0)
    resid = rng.standard_normal((LAYERS, shard_tokens, D), dtype=np.float32).astype(np.float16)
    final = rng.standard_normal((shard_tokens, D), dtype=np.float32).astype(np.float16)
    fs = LocalFS(tmp / "write")

    def direct(writer):
        fs.write_atomic("r", partial(writer, data=resid, chunk_rows=CHUNK, shard_rows=shard_tokens))
        fs.write_atomic("f", partial(writer, data=final, chunk_rows=CHUNK, shard_rows=shard_tokens))

    token_major = np.ascontiguousarray(resid.transpose(1, 0, 2))
    zstd, crc = zarr.codecs.ZstdCodec(level=1), zarr.codecs.Crc32cCodec()

    def with_zarr(codecs, name):
        arr = zarr.create_array(tmp / name, shape=token_major.shape, chunks=(CHUNK, 1, D),
                                shards=token_major.shape, dtype="float16", compressors=codecs, overwrite=True)
        return lambda: arr.__setitem__(slice(None), token_major)

    cases = {
        "direct, per-chunk CRC-32C (format 2)": partial(direct, write_shard_file),
        "direct, no chunk checksums": partial(direct, _without_checksums),
        "format 1 as it was: no chunk checksums, CRC-32 of the values for the marker": lambda: (
            direct(_without_checksums), [zlib.crc32(memoryview(a).cast("B")) for a in (resid, final)]),
        "zarr zstd + crc32c (format 2), resid only": with_zarr([zstd, crc], "z2"),
        "zarr zstd (format 1), resid only": with_zarr([zstd], "z1"),
    }
    nbytes = {label: resid.nbytes + (0 if "resid only" in label else final.nbytes) for label in cases}
    return [(label, s, nbytes[label] / s / 1e6) for label, s in _interleaved_medians(cases, reps).items()]


def build_store(root: Path, gb: float, shard_tokens: int) -> tuple[int, int]:
    per_token = (LAYERS + 1) * D * 2
    n_shards = max(1, round(gb * 1e9 / per_token / shard_tokens))
    n_tokens = n_shards * shard_tokens
    specs = layout.array_specs(
        n_tokens=n_tokens, n_sequences=n_tokens // 256, seq_len=256, d_model=D, shard_tokens=shard_tokens,
        chunk_tokens=CHUNK, per_token_layers={"resid": tuple(range(LAYERS))}, final=True, pattern_layers=(), heads=(),
    )
    shards = [{"index": i, "rows": [i * shard_tokens, (i + 1) * shard_tokens], "seqs": [0, 0], "pattern_seqs": [0, 0]}
              for i in range(n_shards)]
    manifest = {"format": layout.FORMAT, "format_version": layout.FORMAT_VERSION, "identity": {"bench": 1},
                "shards": shards, "shard_tokens": shard_tokens, "n_tokens": n_tokens}
    writer = StoreWriter.open(root, manifest, specs)
    rng = np.random.default_rng(1)
    resid = rng.standard_normal((LAYERS, shard_tokens, D), dtype=np.float32).astype(np.float16)
    final = np.ascontiguousarray(resid[-1])
    for i in range(n_shards):
        rows = np.arange(i * shard_tokens, (i + 1) * shard_tokens)
        ids = rng.integers(0, 49152, shard_tokens)
        tokens = pa.table({
            "row": rows, "doc_id": rows // 300, "seq_id": rows // 256, "pos": (rows % 256).astype(np.int32),
            "doc_pos": (rows % 300).astype(np.int32), "token_id": ids.astype(np.int32),
            "token": pa.array([f"t{j}" for j in ids]),
        }, schema=layout.TOKEN_SCHEMA)
        writer.write_shard(i, (int(rows[0]), int(rows[-1]) + 1), {"resid": resid, "final": final}, tokens)
    writer.finish()
    return n_shards, n_tokens


def _drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def bench_verify(root: Path, reps: int) -> list[tuple[str, float, int]]:
    fs = LocalFS(root)
    manifest = StoreWriter.attach(root).manifest
    shards = list(range(len(manifest["shards"])))
    rows = []
    warm = _interleaved_medians({level: partial(check_shards, fs, manifest, shards, level == "full")
                                 for level in ("quick", "full")}, reps)
    for level, seconds in warm.items():
        rows.append((f"{level}, page cache warm", seconds, len(shards)))
        if _drop_caches():
            t = time.perf_counter()
            check_shards(fs, manifest, shards, level == "full")
            rows.append((f"{level}, cold (caches dropped)", time.perf_counter() - t, len(shards)))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--shard-tokens", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where the scratch store goes (default: a temporary directory)")
    args = ap.parse_args()
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs ({cpu}), python {platform.python_version()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        tmp = Path(scratch)
        print(f"\n### Writing one shard ({args.shard_tokens} tokens x {LAYERS} layers + final, d_model {D}, float16)\n")
        print("| path | seconds (median) | MB/s |\n|---|---:|---:|")
        for label, seconds, rate in bench_write(tmp, args.shard_tokens, args.reps):
            print(f"| {label} | {seconds:.3f} | {rate:.0f} |")
        n_shards, n_tokens = build_store(tmp / "store", args.gb, args.shard_tokens)
        size = sum(p.stat().st_size for p in (tmp / "store").rglob("*") if p.is_file())
        print(f"\n### Checking a {size / 1e9:.2f} GB store ({n_shards} shards, {n_tokens} tokens) before a resume\n")
        print("| check | seconds | per shard (ms) | GB/s of store |\n|---|---:|---:|---:|")
        for label, seconds, n in bench_verify(tmp / "store", args.reps):
            print(f"| {label} | {seconds:.3f} | {seconds / n * 1e3:.2f} | {size / seconds / 1e9:.2f} |")


if __name__ == "__main__":
    main()
