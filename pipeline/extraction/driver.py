"""One job driver for every executor: plan, open or resume the store, hand the shards over, finish.

The stages and their order live here once; an executor (pipeline/executors/:
``LocalExecutor`` in this process, ``RayExecutor`` on a cluster) only says where
work units run: the corpus's parts (``parts_mapper``) and the shards
(``extract``). Retries of a worker that died are the executor's; resume is the
store's (committed shards are verified, then skipped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from tqdm.auto import tqdm

from embwalk.errors import EmbwalkError
from embwalk.executors.base import Executor
from embwalk.extraction.config import ExtractConfig
from embwalk.extraction.job import prepare
from embwalk.models.loading import LoadedModel
from embwalk.store.writer import StoreWriter

log = logging.getLogger(__name__)


def run_extraction(cfg: ExtractConfig, executor: Executor, loaded: LoadedModel | None = None) -> dict:
    """Run (or resume) an extraction job; returns the store's manifest (with ``run_seconds``
    and ``run_tokens`` of this run). ``loaded`` is an in-memory model (tests); otherwise the
    driver plans from the model's description and the workers load it."""
    cfg.validate()  # every option value, before a cluster starts or a model loads
    if cfg.two_stacks():  # encoder and dec.* sites: a store per stack, each its own run of this driver
        from embwalk.extraction.stacks import run_two_stacks

        if loaded is not None:
            raise EmbwalkError("a two-stack store loads each stack from model.name; an in-memory model holds one")
        return run_two_stacks(cfg, lambda job: run_extraction(job, executor))
    executor.start(cfg)
    # The driver plans from the model's description (config, tokenizer, fingerprint), never its weights.
    if loaded is None:
        from embwalk.models.spec import load_spec

        spec = load_spec(replace(cfg.model, device="cpu"))
    job = prepare(cfg, loaded or spec, executor.parts_mapper(cfg))
    writer = StoreWriter.open(cfg.store.path, job.manifest, job.specs, cfg.store.compressor)
    done = writer.trusted_shards(cfg.store.verify)  # verified before they are skipped
    todo = [s for s in job.plan.shards if s.index not in done]
    if done:
        log.warning("resuming %s: %d of %d shards already committed", cfg.store.path, len(done), len(job.plan.shards))
    started = time.perf_counter()
    bar = tqdm(total=job.plan.n_tokens, initial=job.plan.n_tokens - sum(s.n_rows for s in todo), unit="tok",
               unit_scale=True, desc="extract", disable=not cfg.cluster.progress, smoothing=0.1)
    try:
        written = executor.extract(cfg, job, writer, todo, loaded, bar)
    finally:
        bar.close()
        manifest = writer.finish()  # records what is committed, also after a failure
    if cfg.capture.stats is not None:
        from embwalk.stats.partials import merge_store_stats

        merge_store_stats(writer.fs, out=cfg.capture.stats.out)
    manifest["run_seconds"] = round(time.perf_counter() - started, 2)
    manifest["run_tokens"] = written
    return manifest
