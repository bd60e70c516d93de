"""The embedded default: every shard in this process, one model, no cluster.

The corpus is tokenized in this process too, or, for a large corpus, by a pool
of local processes (``cluster.tokenize_workers``), part by part.
"""

from __future__ import annotations

import os

import torch

from embwalk.corpus import CorpusConfig
from embwalk.corpus.documents import corpus_parts
from embwalk.executors.base import UnitMapper
from embwalk.executors.units import default_workers, process_pool
from embwalk.extraction.config import ExtractConfig
from embwalk.extraction.driver import run_extraction
from embwalk.models.loading import LoadedModel, load_model
from embwalk.store.fs import local_path

# A corpus cut at no more tokens than this, or of fewer input bytes, is tokenized in this
# process: starting a pool (each process imports transformers, ~5 s) costs more than it saves.
SMALL_CORPUS_TOKENS = 1_000_000
SMALL_CORPUS_BYTES = 8_000_000



class LocalExecutor:
    """Every shard in this process, one after the other, each shard's writes overlapping the
    next one's compute (pipeline/extract.py)."""

    def start(self, cfg: ExtractConfig) -> None:
        if cfg.cluster.threads:
            torch.set_num_threads(cfg.cluster.threads)

    def parts_mapper(self, cfg: ExtractConfig) -> UnitMapper | None:
        return parts_mapper(cfg)

    def extract(self, cfg, job, writer, todo, loaded, bar) -> int:
        loaded = loaded or load_model(cfg.model)
        runner = job.runner(loaded, writer)
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
        return sum(s.n_rows for s in todo)


def extract_local(cfg: ExtractConfig, loaded: LoadedModel | None = None) -> dict:
    """Run (or resume) an extraction job here; returns the store's manifest.

    ``loaded`` skips loading ``cfg.model`` (tests pass random-initialised models).
    """
    return run_extraction(cfg, LocalExecutor(), loaded)


def parts_mapper(cfg: ExtractConfig) -> UnitMapper | None:
    """How the corpus's parts are tokenized here: None (in this process) or a process pool."""
    workers = cfg.cluster.tokenize_workers
    if workers is None:
        workers = 1 if _small(cfg.corpus) else default_workers(None)
    if workers <= 1 or local_path(cfg.store.path) is None:  # memory:// lives in this process only
        return None
    return process_pool(workers)


def _small(corpus: CorpusConfig) -> bool:
    if corpus.max_tokens is not None and corpus.max_tokens <= SMALL_CORPUS_TOKENS:
        return True
    if corpus.path is None:  # the built-in corpus: ~315k tokens
        return True
    return sum(os.path.getsize(p.path) for p in corpus_parts(corpus)) < SMALL_CORPUS_BYTES
