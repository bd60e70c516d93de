"""The embedded default: every shard in this process, one model, no cluster."""

from __future__ import annotations

import logging
import time

import torch
from tqdm.auto import tqdm

from pipeline.corpus import vocabulary_strings
from pipeline.extract import ShardRunner
from pipeline.job import ExtractConfig, prepare
from pipeline.models.loading import LoadedModel, load_model
from pipeline.store.writer import StoreWriter

log = logging.getLogger(__name__)


def extract_local(cfg: ExtractConfig, loaded: LoadedModel | None = None) -> dict:
    """Run (or resume) an extraction job here; returns the store's manifest.

    ``loaded`` skips loading ``cfg.model`` (tests pass random-initialised models).
    """
    if cfg.cluster.threads:
        torch.set_num_threads(cfg.cluster.threads)
    loaded = loaded or load_model(cfg.model)
    job = prepare(cfg, loaded)
    writer = StoreWriter.open(cfg.store.path, job.manifest, job.specs, cfg.store.compressor)
    done = writer.trusted_shards(cfg.store.verify)  # verified before they are skipped
    todo = [s for s in job.plan.shards if s.index not in done]
    if done:
        log.warning("resuming %s: %d of %d shards already committed", cfg.store.path, len(done), len(job.plan.shards))
    runner = ShardRunner(
        loaded, job.layout, job.corpus, writer, vocabulary_strings(loaded.tokenizer),
        dtype=job.dtype, batch_size=cfg.cluster.batch_size, seq_len=cfg.corpus.seq_len,
        stats=cfg.capture.stats_options(), store_arrays=cfg.capture.store_arrays,
    )
    already = sum(s.n_rows for s in job.plan.shards if s.index in done)
    started = time.perf_counter()
    with tqdm(
        total=job.plan.n_tokens, initial=already, unit="tok", unit_scale=True,
        desc="extract", disable=not cfg.cluster.progress, smoothing=0.1,
    ) as bar:
        commits = []
        try:
            for shard in todo:
                commits.append(runner.run(shard, bar.update))
                for done in [c for c in commits if c.done()]:
                    done.result()  # a failed write stops the job now
        finally:
            runner.close()  # waits for the queued writes and commits
        for commit in commits:
            commit.result()
    manifest = writer.finish()
    if cfg.capture.stats is not None:
        from pipeline.stats.partials import merge_store_stats

        merge_store_stats(writer.root)
    manifest["run_seconds"] = round(time.perf_counter() - started, 2)
    manifest["run_tokens"] = job.plan.n_tokens - already
    return manifest
