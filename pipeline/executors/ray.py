"""Ray executor: one worker per GPU (or per CPU slice), shards from a queue.

The driver plans (exactly as the local executor does, from the model's
description: it never loads the weights), with the corpus tokenized part by
part by Ray tasks on the cluster's CPUs into the store's staging area; it
creates or resumes the store and hands out shards; workers load the model once,
read their shards' token rows from the store and write their shards straight
to it, so only the plan, shards and commit records travel through Ray. A
worker that dies costs only its in-flight shards, which go back on the queue
(up to ``max_retries`` more attempts each); the committed shards on disk are
the truth, so a killed driver resumes by rerunning.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, deque

import fsspec
import numpy as np
import torch

from embwalk.errors import EmbwalkError, StoreError, first_line
from embwalk.executors import faults
from embwalk.executors.units import in_order
from embwalk.extraction.config import ExtractConfig
from embwalk.extraction.driver import run_extraction
from embwalk.extraction.job import PreparedJob
from embwalk.models.loading import LoadedModel, load_model
from embwalk.plan import Shard
from embwalk.store.writer import StoreWriter

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = 2  # one computing, one writing: compute overlaps I/O


class ShardWorker:
    """A Ray actor: one model, one ShardRunner, any shard of the plan."""

    def __init__(self, cfg: ExtractConfig, job: PreparedJob, loaded: LoadedModel | None, fault: str | None):
        if cfg.cluster.threads:
            torch.set_num_threads(cfg.cluster.threads)
        loaded = loaded or load_model(cfg.model)
        # A path or URL: each worker opens the store itself.
        writer = StoreWriter.attach(cfg.store.path, before_commit=faults.before_commit(fault))
        self.fault = fault
        self.runner = job.runner(loaded, writer, max_pending=IN_FLIGHT_PER_WORKER)

    def run(self, shard: Shard) -> dict:
        faults.before_shard(self.fault, shard.index)
        return self.runner.run(shard).result()  # returns once the shard is committed

    def close(self) -> None:
        self.runner.close()


class RayExecutor:
    """Shards from a queue to ShardWorker actors (one per GPU, or ``cluster.workers`` CPU
    workers), two in flight each; a worker that dies is replaced and its shards retried."""

    def start(self, cfg: ExtractConfig) -> None:
        if fsspec.core.split_protocol(cfg.store.path)[0] == "memory":
            raise StoreError(
                f"store {cfg.store.path}: a memory:// store lives inside one process and Ray workers cannot "
                "write to it; use a path on a shared filesystem, file://, or an object store URL"
            )
        c = cfg.cluster
        ensure_ray(c.address, (c.workers or 1) * (c.threads or 1))  # a local instance: a slot for every worker

    def parts_mapper(self, cfg: ExtractConfig):
        return ray_mapper(cfg.cluster.tokenize_workers)  # one CPU per part

    def extract(self, cfg, job, writer, todo, loaded, bar) -> int:
        import ray

        c = cfg.cluster
        todo = deque(todo)
        use_gpu = torch.cuda.is_available() if cfg.model.device == "auto" else cfg.model.device.startswith("cuda")
        n_workers = c.workers or (max(1, int(ray.cluster_resources().get("GPU", 0))) if use_gpu else 1)
        actor_cls = ray.remote(ShardWorker).options(
            num_cpus=c.threads or 1, num_gpus=1 if use_gpu else 0,
            max_concurrency=IN_FLIGHT_PER_WORKER, max_restarts=0,
        )
        model_ref = ray.put(loaded) if loaded is not None else None
        job_ref = ray.put(job)
        fault = os.environ.get(faults.ENV)

        def spawn():
            return actor_cls.remote(cfg, job_ref, model_ref, fault)

        workers = [spawn() for _ in range(min(n_workers, max(1, len(todo))))]
        inflight: dict = {}  # ObjectRef -> (worker, shard)
        attempts: Counter = Counter()
        given_up: dict[int, str] = {}  # shard -> last error, once its retries are spent
        started, written, failed = time.perf_counter(), 0, 0
        bytes_per_token = _bytes_per_token(job)

        def feed(worker) -> None:
            while todo and sum(w is worker for w, _ in inflight.values()) < IN_FLIGHT_PER_WORKER:
                shard = todo.popleft()
                inflight[worker.run.remote(shard)] = (worker, shard)

        try:
            for worker in workers:
                feed(worker)
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                worker, shard = inflight.pop(ready[0])
                try:
                    ray.get(ready[0])
                    written += shard.n_rows
                    bar.update(shard.n_rows)
                except ray.exceptions.RayActorError as exc:
                    failed += 1
                    _retry(shard, attempts, c.max_retries, f"worker died: {first_line(exc)}", todo, given_up)
                    if worker in workers:  # replace it once; its other in-flight shards fail here too
                        workers.remove(worker)
                        ray.kill(worker, no_restart=True)
                        workers.append(spawn())
                except ray.exceptions.RayTaskError as exc:
                    failed += 1
                    _retry(shard, attempts, c.max_retries, first_line(exc.cause or exc), todo, given_up)
                seconds = time.perf_counter() - started
                bar.set_postfix_str(
                    f"{written * bytes_per_token / max(seconds, 1e-9) / 1e6:.1f} MB/s, "
                    f"shards {len(job.plan.shards) - len(todo) - len(inflight)}/{len(job.plan.shards)} done, "
                    f"{len(inflight)} running, {failed} failed"
                )
                for w in workers:
                    feed(w)
            ray.get([w.close.remote() for w in workers])
        finally:
            for w in workers:
                ray.kill(w, no_restart=True)
        if given_up:  # the other shards ran to the end and stay committed
            index, cause = next(iter(given_up.items()))
            rows = job.plan.shards[index].rows
            others = f" (and {len(given_up) - 1} more shards)" if len(given_up) > 1 else ""
            raise EmbwalkError(
                f"shard {index} (token rows {rows[0]}..{rows[1]}) failed {attempts[index]} times{others}; "
                f"last error: {cause}"
            )
        return written


def extract_ray(cfg: ExtractConfig, loaded: LoadedModel | None = None) -> dict:
    """Run (or resume) an extraction job on Ray; returns the store's manifest.

    ``loaded`` ships an in-memory model to the workers (tests use random ones);
    otherwise each worker loads ``cfg.model`` itself.
    """
    return run_extraction(cfg, RayExecutor(), loaded)


def ray_mapper(workers: int | None, num_cpus: int = 1, num_gpus: int = 0, max_retries: int = 3):
    """A unit mapper (pipeline/executors/units.py) over Ray tasks of ``num_cpus`` CPUs (and
    ``num_gpus`` GPUs), ``workers`` at once (None: as many as the cluster's CPUs allow);
    what every unit shares (a tokenizer, a model head) is put once. A task whose worker
    dies is retried up to ``max_retries`` times."""
    import ray

    def mapper(fn, units, shared):
        width = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // num_cpus)
        shared_ref = ray.put(shared)
        task = ray.remote(_run_unit).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)
        yield from in_order(units, lambda u: task.remote(fn, u, shared_ref), _get, 2 * width, ray.cancel)

    return mapper


def ensure_ray(address: str | None, slots: int) -> None:
    """Join the cluster at ``address`` (``auto``, host:port), or start a local instance of
    ``slots`` CPUs; nothing if this process is connected already."""
    import ray

    if ray.is_initialized():
        return
    quiet = {"logging_level": "ERROR", "log_to_driver": False}
    if address:
        ray.init(address=address, **quiet)
        return
    try:
        ray.init(num_cpus=max(os.cpu_count() or 1, slots), include_dashboard=False, **quiet)
    except ValueError as exc:
        # ray.init without an address joins the cluster this node runs (`ray start --head`, or
        # RAY_ADDRESS), which refuses resource counts: join it as it is.
        if "existing cluster" not in str(exc):
            raise
        log.warning("joining the Ray cluster already running on this node (cluster.address=auto)")
        ray.init(address="auto", **quiet)


def _run_unit(fn, unit, shared: tuple):
    return fn(unit, *shared)


def _get(ref):
    """A task's result; an embwalk error in it (a bad corpus file) is raised as itself, in one line."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, EmbwalkError):
            raise exc.cause from None
        raise


def _retry(shard: Shard, attempts: Counter, max_retries: int, cause: str, todo: deque, given_up: dict) -> None:
    attempts[shard.index] += 1
    if attempts[shard.index] > max_retries:
        given_up[shard.index] = cause
        return
    log.warning("shard %d failed (%s); retrying (attempt %d)", shard.index, cause, attempts[shard.index] + 1)
    todo.appendleft(shard)


def _bytes_per_token(job: PreparedJob) -> float:
    per_token = [s for s in job.specs if s.dims[0] == "token"]
    return float(sum(np.prod(s.shape[1:]) * np.dtype(s.dtype).itemsize for s in per_token))
