"""A dataset stream left open ends quietly when the interpreter exits (a trainer that stops early)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import sys
from embwalk import open_store
stream = iter(open_store(sys.argv[1]).dataset("resid_post.1", batch_size=4, buffer_rows=16))
batch = next(stream)
print(batch.shape[0], tuple(batch.shape))
# No close(): a library that keeps the stream in its module (SAELens's trainer did) has it
# finalised at interpreter exit, after the thread pool's own module is torn down.
import collections
collections._embwalk_test_stream = stream
del stream
"""


def test_an_open_stream_ends_without_a_traceback_at_exit(packed):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(packed)], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "4"
    assert "Exception ignored" not in result.stderr and "Traceback" not in result.stderr, result.stderr
