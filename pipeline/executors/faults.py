"""Fault injection for the executors' tests: kill or fail a worker on purpose.

Set ``EMBWALK_FAULT`` on the driver (workers get it from there):

- ``kill-while-writing:SHARD:FLAG``: the worker writes shard SHARD's arrays,
  then SIGKILLs itself before the commit, the first time only (FLAG is a file
  created to remember that it happened; FLAG.written once the arrays are written,
  so a test can tell the kill from a failed write);
- ``raise:SHARD``: every attempt at shard SHARD raises, as a document that
  makes the model fail would.

Unset (always, outside tests), nothing here does anything.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

ENV = "EMBWALK_FAULT"


def install(fault: str | None, writer) -> None:
    if not fault or not fault.startswith("kill-while-writing:"):
        return
    _, shard, flag = fault.split(":", 2)
    original = writer.write_shard

    def write_shard(index, rows, arrays, *args, **kwargs):
        if index == int(shard) and not Path(flag).exists():
            Path(flag).touch()
            n = rows[1] - rows[0]
            for name, data in arrays.items():  # the data lands, the commit never does
                # As the writer gets them: layer-major [layer, row, d] padded past n, or [row, d].
                valid = data[:, :n].transpose(1, 0, 2) if data.ndim == 3 else data[:n]
                writer.arrays[name][rows[0] : rows[1]] = valid
            Path(f"{flag}.written").touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return original(index, rows, arrays, *args, **kwargs)

    writer.write_shard = write_shard


def before_shard(fault: str | None, index: int) -> None:
    if fault and fault.startswith("raise:") and int(fault.split(":")[1]) == index:
        raise RuntimeError(f"injected failure in shard {index}")
