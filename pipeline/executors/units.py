"""Work units run by an executor and consumed in order: the scheduling every stage shares.

A stage (tokenizing the corpus's parts, say) hands an executor a function and
its units; the executor runs them where it has CPUs (this process, a local
process pool, Ray tasks) and ``in_order`` yields their results in unit order,
with at most ``window`` in flight, so the consumer can stop early (the corpus
was cut at ``max_tokens``) and what is still queued is cancelled.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from embwalk.executors.base import R, U, UnitMapper


def in_order(units: Iterable[U], submit: Callable[[U], Any], result: Callable[[Any], R], window: int,
             cancel: Callable[[Any], None]) -> Iterator[R]:
    """Submit units ``window`` at a time ahead of the one being consumed; yield results in order."""
    queued: deque = deque()
    pending = iter(units)
    try:
        for unit in pending:
            queued.append(submit(unit))
            if len(queued) >= window:
                break
        while queued:
            done = result(queued.popleft())
            for unit in pending:
                queued.append(submit(unit))
                break
            yield done
    finally:
        for handle in queued:  # the consumer stopped early, or a unit failed
            cancel(handle)


def in_process(fn: Callable[..., R], units: Iterable[U], shared: tuple) -> Iterator[R]:
    """The embedded default: every unit here, one after the other."""
    for unit in units:
        yield fn(unit, *shared)


def process_pool(workers: int) -> UnitMapper:
    """A mapper over a local pool of ``workers`` processes (spawned: no forked tokenizer or torch
    state); one unit runs in this process."""

    def mapper(fn: Callable[..., R], units: Iterable[U], shared: tuple) -> Iterator[R]:
        units = list(units)
        if len(units) <= 1:  # not worth starting processes for
            yield from in_process(fn, units, shared)
            return
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_set_shared, initargs=shared) as pool:
            yield from in_order(units, lambda u: pool.submit(_with_shared, fn, u), lambda f: f.result(),
                                4 * workers, lambda f: f.cancel())

    return mapper


def default_workers(requested: int | None) -> int:
    return requested or os.cpu_count() or 1


_SHARED: tuple = ()


def _set_shared(*shared) -> None:
    # Sent once per process (a tokenizer, say), not once per unit.
    global _SHARED
    _SHARED = shared


def _with_shared(fn: Callable[..., R], unit) -> R:
    return fn(unit, *_SHARED)
