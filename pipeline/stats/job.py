"""The stats job: every committed shard of a store, in parallel, then one merge.

Shards run here (``cluster.workers`` <= 1), in a local process pool, or as Ray
tasks (``cluster.kind=ray``); each writes its own partials, so the driver only
collects timings and merges at the end. The model the store names is loaded
once by the driver (its weights fingerprint must match the manifest's) and
only its unembedding and final norm travel to the workers; tables of its weights
alone (a T5 model's position kernel) are the driver's, written with the merge.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from embwalk.errors import EmbwalkError, StoreError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.units import in_process, process_pool
from embwalk.models.config import ModelConfig
from embwalk.models.families import family_named
from embwalk.models.loading import resolve_device
from embwalk.stats.config import StatsConfig, StatsOptions
from embwalk.stats.from_store import ShardNotReady, check_store, has_activations, shard_stats, walk_stats_for
from embwalk.stats.head import ModelHead
from embwalk.stats.partials import identity_hash, merge_store_stats, read_shard_meta
from embwalk.stats.position_kernel import model_tables
from embwalk.store import layout as store_layout
from embwalk.store.reader import Store

log = logging.getLogger(__name__)


def corpus_token_counts(store: Store) -> tuple[np.ndarray, np.ndarray]:
    """(token ids, how often each occurs) over every committed row, for the self-similarity
    types; read shard by shard, so memory is one shard's tokens plus the vocabulary."""
    from embwalk.corpus.staged import merge_token_counts

    return merge_token_counts(
        np.unique(store.read_tokens(i, ["token_id"]).column(0).to_numpy(),
                  return_counts=True)
        for i in store.committed
    )


def store_model_config(store: Store) -> ModelConfig:
    """The model config the store was extracted with, on the CPU."""
    return replace(ModelConfig(**store.manifest["config"]["model"]), device="cpu", device_map=None)


def store_model(store: Store, loaded=None):
    """The model the store names, loaded (or ``loaded``), its weights fingerprint checked."""
    from embwalk.models.loading import load_model

    want = store.manifest["model"]["weights_fingerprint"]
    if loaded is None:
        loaded = load_model(store_model_config(store))
    if loaded.weights_fingerprint != want:
        raise StoreError(
            f"model {loaded.model_id!r} does not match the store {store.root}: weights fingerprint "
            f"{loaded.weights_fingerprint[:12]} != {want[:12]}"
        )
    return loaded


def model_head(store: Store, loaded=None) -> ModelHead:
    """The head of the store's model (``store_model``) on the CPU: workers move it to their
    device (CUDA tensors do not pickle to a process pool)."""
    return ModelHead.from_loaded(store_model(store, loaded), "cpu")


def store_model_tables(store: Store, loaded=None) -> dict:
    """The tables of the store's model's weights (the position kernel of a learned position bias,
    pipeline/stats/position_kernel.py); the model is loaded only for a family that has any."""
    family = family_named(store.manifest["model"].get("family", ""))
    if family is None or not family.position_bias:
        return {}
    return model_tables(store_model(store, loaded), store_model_config(store))


def compute_store_stats(
    path: str | Path,
    options: StatsOptions | None = None,
    cluster: ClusterConfig | None = None,
    loaded=None,
    report: Callable[[str], None] | None = None,
) -> dict:
    """Statistics of every committed shard of the store at ``path``, merged; returns the summary.

    A store without activations (an extraction that computed its statistics in the
    pass) only has its partials merged. ``loaded`` replaces loading the store's model.
    """
    options = options or StatsOptions()
    cluster = cluster or ClusterConfig()
    say = report or (lambda msg: None)
    store = check_store(path)
    root = store.root
    if not has_activations(store):
        say(f"{root} holds no activations: merging the statistics computed during extraction")
        return merge_store_stats(root, out=options.out, model_tables=store_model_tables(store, loaded))
    resid = store.manifest["arrays"].get("resid")
    family = family_named(store.manifest["model"].get("family", ""))
    config = options.stats_config(counts=corpus_token_counts(store), n_resid=len(resid["layers"]) if resid else None,
                                  generation="generation" in store.manifest,
                                  position_bias=family is not None and family.position_bias)
    loaded = store_model(store, loaded)
    head = ModelHead.from_loaded(loaded, "cpu")
    if options.families is not None:  # named, and not computable from this store: refused before any work
        why_not = walk_stats_for(store, config, head, 0).skipped
        if why_not:
            raise EmbwalkError("stats.families cannot compute " + "; ".join(f"{f}: {w}" for f, w in why_not.items())
                               + f" from {root} (leave it out of stats.families, or omit stats.families for "
                               "every family the store can feed)")
    device = str(resolve_device(options.device))
    todo = [i for i in store.committed if not (options.resume and _up_to_date(store, i, config, options))]
    skipped = len(store.committed) - len(todo)
    if skipped:
        say(f"{skipped} shard(s) already have statistics for this config (stats.resume=false recomputes them)")
    started = time.perf_counter()
    infos = run_shards(root, todo, config, head, device, cluster, say)
    wall = time.perf_counter() - started
    timings = _timings(infos, wall, max(1, min(default_workers(cluster, device, len(todo)), len(todo))))
    timings["cluster"] = cluster.kind  # summary.json and the job's report say where the shards ran
    return merge_store_stats(root, timings, out=config.out, model_tables=store_model_tables(store, loaded))


def _up_to_date(store: Store, index: int, config: StatsConfig, options: StatsOptions) -> bool:
    meta = read_shard_meta(store.root, index, config.out)
    if meta is None:
        return False
    wanted = set(config.families) - set(meta.get("skipped", {}))
    return (
        meta.get("config") == config.fingerprint()
        and set(meta.get("families", [])) == wanted
        and meta.get("store_identity") == identity_hash(store.manifest)
    )


def run_shards(root: Path, shards: list[int], config: StatsConfig, head: ModelHead, device: str,
               cluster: ClusterConfig, say: Callable[[str], None]) -> list[dict]:
    """Every shard's statistics as a work unit (pipeline/executors/units.py): in this
    process, a local process pool, or Ray tasks; partials are replaced, never added to,
    so a retried shard is harmless."""
    if not shards:
        return []
    # One torch thread per worker by default: a shard's reader thread runs beside the
    # statistics, and a 2-thread OpenMP op waits at its barrier whenever the other core is
    # busy (measured 10x slower on a shared 2-core machine); parallelism comes from workers.
    threads = cluster.threads or 1
    if cluster.kind == "ray":
        from embwalk.executors.ray import ensure_ray, ray_mapper

        ensure_ray(cluster.address, (cluster.workers or 1) * threads)
        mapper = ray_mapper(cluster.workers or len(shards), num_cpus=threads,
                            num_gpus=1 if device.startswith("cuda") else 0, max_retries=cluster.max_retries)
    elif cluster.kind == "local":
        workers = min(default_workers(cluster, device, len(shards)), len(shards))
        mapper = in_process if workers <= 1 else process_pool(workers)
    else:
        raise EmbwalkError(f"unknown cluster.kind {cluster.kind!r}; choose local or ray")
    before = torch.get_num_threads()
    try:
        results = mapper(_stats_unit, shards, (str(root), config, head, device, threads))
        return list(_progress(zip(shards, results, strict=True), shards, cluster, say))
    finally:
        torch.set_num_threads(before)


def default_workers(cluster: ClusterConfig, device: str, n_shards: int) -> int:
    """``cluster.workers``, or one process per CPU core once there are a few shards each
    (starting a worker costs seconds: torch import, model head); one for a GPU device."""
    if cluster.workers:
        return cluster.workers
    if device.startswith("cuda"):
        return 1
    return max(1, min((os.cpu_count() or 1) // (cluster.threads or 1), n_shards // 4))


def _one(root: Path, index: int, config: StatsConfig, head: ModelHead, device: str) -> dict:
    try:
        return shard_stats(root, index, config, head, device)
    except ShardNotReady as exc:
        return {"shard": index, "not_ready": str(exc)}


def _stats_unit(index: int, root: str, config: StatsConfig, head: ModelHead, device: str, threads: int) -> dict:
    torch.set_num_threads(threads)
    return _one(Path(root), index, config, head, device)


def _progress(items: Iterable[tuple[int, dict]], shards: list[int], cluster: ClusterConfig,
              say: Callable[[str], None]) -> Iterable[dict]:
    from tqdm.auto import tqdm

    with tqdm(total=len(shards), unit="shard", desc="stats", disable=not cluster.progress) as bar:
        for index, info in items:
            if "not_ready" in info:
                say(f"{store_layout.shard_name(index)} skipped: {info['not_ready']}")
            bar.update(1)
            yield info


def _timings(infos: list[dict], wall: float, workers: int) -> dict:
    done = [i for i in infos if "n_tokens" in i]
    tokens = sum(i["n_tokens"] for i in done)
    read = sum(i["read_seconds"] for i in done)
    compute = sum(i["compute_seconds"] for i in done)
    nbytes = sum(i["bytes_read"] for i in done)
    fam: dict[str, float] = {}
    for i in done:
        for k, v in i["family_seconds"].items():
            fam[k] = fam.get(k, 0.0) + v
    out = {
        "shards": len(done),
        "not_ready": [i["shard"] for i in infos if "not_ready" in i],
        "tokens": tokens,
        "wall_seconds": round(wall, 3),
        "read_seconds": round(read, 3),
        "compute_seconds": round(compute, 3),
        "bytes_read": nbytes,
        "workers": workers,
        "family_seconds": {k: round(v, 3) for k, v in fam.items()},
    }
    if tokens and wall:
        out["tokens_per_second"] = round(tokens / wall, 1)
    if tokens and read:
        out["read_tokens_per_second"] = round(tokens / read, 1)
        out["read_mb_per_second"] = round(nbytes / read / 1e6, 1)
    if tokens and compute:
        out["stats_tokens_per_second"] = round(tokens / compute, 1)
    for k, v in fam.items():
        if v and tokens:
            out.setdefault("family_tokens_per_second", {})[k] = round(tokens / v, 1)
    return out
