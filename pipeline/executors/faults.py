"""Fault injection for the executors' tests: kill or fail a worker on purpose.

Set ``EMBWALK_FAULT`` on the driver (workers get it from there):

- ``kill-while-writing:SHARD:FLAG``: the worker writes shard SHARD's arrays,
  then SIGKILLs itself before the commit, the first time only (FLAG is a file
  created to remember that it happened; FLAG.written once the arrays are written,
  so a test can tell the kill from a failed write);
- ``raise:SHARD``: every attempt at shard SHARD raises, as a document that
  makes the model fail would.

Nothing here patches anything: the kill is the writer's ``before_commit`` hook
(``StoreWriter.attach(path, before_commit=...)``), called by the writer's own
code once a shard's arrays are durable and before its commit record and token
table; the failure is a check the worker makes before each shard. Unset
(always, outside tests), nothing here does anything.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

ENV = "EMBWALK_FAULT"


def before_commit(fault: str | None) -> Callable[[int], None] | None:
    """The writer hook ``fault`` asks for, or None."""
    if not fault or not fault.startswith("kill-while-writing:"):
        return None
    _, shard, flag = fault.split(":", 2)

    def kill(index: int) -> None:
        if index == int(shard) and not Path(flag).exists():
            Path(flag).touch()
            Path(f"{flag}.written").touch()  # the arrays are on disk; the commit never will be
            os.kill(os.getpid(), signal.SIGKILL)

    return kill


def before_shard(fault: str | None, index: int) -> None:
    if fault and fault.startswith("raise:") and int(fault.split(":")[1]) == index:
        raise RuntimeError(f"injected failure in shard {index}")
