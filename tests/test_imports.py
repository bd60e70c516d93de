"""The package has no import circles, counting every import (scripts/import_cycles.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_cycles.py"


def test_no_import_cycles():
    spec = importlib.util.spec_from_file_location("import_cycles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = module.graph()
    assert "embwalk.extraction.runner" in graph and graph["embwalk.extraction.job"]  # the graph is read
    assert module.cycles(graph) == []
    assert module.cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]  # and cycles are found
