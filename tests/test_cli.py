"""The ``embwalk`` command: help and typos answered without importing anything heavy."""

from __future__ import annotations

import subprocess
import sys

import pytest

from embwalk import cli

PROBE = """
import sys
from embwalk import cli
try:
    cli.main(sys.argv[1:])
except SystemExit as exc:
    print("exit", exc.code, file=sys.stderr)
heavy = sorted(m for m in ("torch", "transformers", "zarr", "ray", "duckdb", "pyarrow") if m in sys.modules)
print("heavy:", ",".join(heavy), file=sys.stderr)
"""


def test_usage_lists_every_job(capsys):
    cli.main(["--help"])
    out = capsys.readouterr().out
    for job in cli.JOBS:
        assert f"  {job} " in out


def test_an_unknown_command_is_one_line_with_the_closest(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["extrct"])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "embwalk: error: unknown command 'extrct' (did you mean extract?); choose one of: "
        + ", ".join(cli.JOBS)
    )


@pytest.mark.parametrize("job", list(cli.JOBS))
def test_job_help_explains_each_group_in_a_line(job, capsys):
    cli.main([job, "--help"])
    out = capsys.readouterr().out
    assert out.startswith(f"usage: embwalk {job} ")
    if job == "extract":
        for group in ("model", "corpus", "capture", "store", "cluster"):
            line = next(x for x in out.splitlines() if x.startswith(f"{group}: "))
            assert len(line) > len(group) + 10  # it says what the group is
        assert "(model=hub|minilm|smollm2)" in out and "store.shard_tokens=4096" in out


@pytest.mark.parametrize("argv", [["extract", "--help"], ["stats", "--help"], ["extract", "store.shard_tokns=4"]])
def test_help_and_typos_import_nothing_heavy(argv):
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].strip() == "heavy:", result.stderr
    if "store.shard_tokns=4" in argv:
        assert lines[-3].startswith("embwalk: error: unknown store option(s): shard_tokns") and lines[-2] == "exit 2"
