"""The built-in stdlib_docstrings corpus: real prose, offline, deterministic, import-free."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from inspect import cleandoc
from pathlib import Path

import pytest

from embwalk.corpus import CorpusConfig, read_documents
from embwalk.corpus.builtin import MIN_DOC_CHARS, SKIP_DIRS

REPO = Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter so sys.modules and stdout show what reading the corpus did.
_PROBE = """
import hashlib, json, sys
from embwalk.corpus import CorpusConfig, read_documents
before = set(sys.modules)
digest, n = hashlib.sha256(), 0
for d in read_documents(CorpusConfig()):
    digest.update(f"{d.doc_id}\\0{d.source}\\0{d.text}\\0".encode())
    n += 1
print(json.dumps({"n": n, "sha": digest.hexdigest(), "new": sorted(set(sys.modules) - before)}))
"""


@pytest.fixture(scope="module")
def builtin_docs():
    return list(read_documents(CorpusConfig()))


def test_builtin_corpus_size(builtin_docs):
    assert len(builtin_docs) > 1000
    assert sum(len(d.text) for d in builtin_docs) > 1_000_000
    assert [d.doc_id for d in builtin_docs] == list(range(len(builtin_docs)))
    assert all(len(d.text) >= MIN_DOC_CHARS for d in builtin_docs)


def test_builtin_sources(builtin_docs):
    sources = [d.source for d in builtin_docs]
    assert all(s.startswith("builtin:") for s in sources)
    assert "builtin:json/__init__.py:dumps" in sources
    files = [s.removeprefix("builtin:").split(":")[0] for s in sources]
    assert files == sorted(files)  # sorted by relative path
    assert not any(set(f.split("/")) & SKIP_DIRS for f in files)


def test_builtin_docstrings_are_cleaned(builtin_docs):
    dumps = next(d for d in builtin_docs if d.source == "builtin:json/__init__.py:dumps")
    assert dumps.text == cleandoc(json.dumps.__doc__)


def test_builtin_is_deterministic_and_imports_nothing(builtin_docs):
    result = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, check=True
    )
    probe = json.loads(result.stdout)  # a stray print (e.g. `import this`) would break this
    assert probe["n"] == len(builtin_docs)
    # Same corpus twice: in another process, and in this one.
    digest = hashlib.sha256()
    for d in builtin_docs:
        digest.update(f"{d.doc_id}\0{d.source}\0{d.text}\0".encode())
    assert probe["sha"] == digest.hexdigest()
    corpus_modules = {
        d.source.removeprefix("builtin:").split(":")[0].removesuffix(".py").replace("/", ".")
        for d in builtin_docs
    }
    corpus_modules |= {m.removesuffix(".__init__") for m in corpus_modules}
    assert not set(probe["new"]) & corpus_modules
    assert "antigravity" not in probe["new"] and "this" not in probe["new"]


def test_max_documents_applies_to_builtin():
    docs = list(read_documents(CorpusConfig(max_documents=5)))
    assert [d.doc_id for d in docs] == [0, 1, 2, 3, 4]
