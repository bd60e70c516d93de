"""The extract job from the command line: bad input gives one line, exit 2, nothing committed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def extract(*overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "jobs.extract", "model=minilm", "cluster.progress=false", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str, store: Path | None = None) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("embwalk: error: "), result.stderr
    for fragment in fragments:
        assert fragment in last, last
    if store is not None:
        assert not list((store / "commits").glob("*")) if (store / "commits").exists() else True


@pytest.fixture
def texts(tmp_path) -> Path:
    path = tmp_path / "ok.txt"
    path.write_text("A first paragraph of text.\n\nA second one, a little longer than the first.\n")
    return path


def test_runs_and_prints_the_store(tmp_path, texts):
    store = tmp_path / "store"
    result = extract("corpus=files", f"corpus.path={texts}", f"store.path={store}", "corpus.seq_len=16")
    assert result.returncode == 0, result.stderr
    assert f"store: {store}" in result.stdout
    assert "activations.zarr/resid: [token=" in result.stdout
    assert len(list((store / "commits").glob("*.json"))) == 1


def test_runs_to_an_fsspec_url(texts):
    """The store lives in this process's memory filesystem: the summary is read back through fsspec."""
    url = "memory://embwalk-job/store"
    result = extract("corpus=files", f"corpus.path={texts}", f"store.path={url}", "corpus.seq_len=16")
    assert result.returncode == 0, result.stderr
    assert f"store: {url}" in result.stdout
    assert "(1/1 shards" in result.stdout and "activations.zarr/resid: [token=" in result.stdout
    result = extract("corpus=files", f"corpus.path={texts}", "store.path=nosuch://bucket/store")
    assert_user_error(result, "nosuch://bucket/store", "unknown protocol 'nosuch'")


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary\x00" * 100, "binary"),
        (b"caf\xe9 au lait\n", "UTF-8"),
    ],
    ids=["empty", "binary", "invalid-utf8"],
)
def test_bad_corpus_files(tmp_path, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    store = tmp_path / "store"
    result = extract("corpus=files", f"corpus.path={path}", f"store.path={store}")
    assert_user_error(result, fragment, str(path), store=store)
    assert not store.exists()  # nothing is created before the input is known good


def test_invalid_utf8_can_be_replaced(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 au lait, a drink.\n")
    store = f"store.path={tmp_path / 's'}"
    result = extract("corpus=files", f"corpus.path={path}", store, "corpus.invalid_utf8=replace")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        (["corpus=files", "corpus.path=/no/such/corpus.txt"], ["/no/such/corpus.txt"]),
        (["capture.sites=[resid_post.3,bogus_site.1]"], ["bogus_site.1"]),
        (["capture.sites=[resid_post.6]"], ["layer 6", "6 layers"]),
        (["corpus.seq_len=1000"], ["seq_len=1000", "512"]),
        (["model.name=/no/such/model"], ["/no/such/model"]),
        (["capture.heads=[12]"], ["head 12"]),
        (["store.compressor=lz4"], ["store.compressor 'lz4'", "none, zstd"]),
        (["store.verify=sometimes"], ["store.verify 'sometimes'", "quick or full"]),
        (["capture.stats={bogus: 1}"], ["capture.stats", "bogus"]),
    ],
    ids=["missing-path", "unknown-site", "layer-past-depth", "seq-len-above-limit", "missing-model", "bad-head",
         "bad-compressor", "bad-verify", "bad-stats-option"],
)
def test_bad_options(tmp_path, overrides, fragments):
    store = tmp_path / "store"
    result = extract(*overrides, f"store.path={store}", "corpus.max_tokens=64")
    assert_user_error(result, *fragments)
    assert not store.exists()


def test_mismatching_store_is_refused(tmp_path, texts):
    store = tmp_path / "store"
    common = ["corpus=files", f"corpus.path={texts}", f"store.path={store}", "corpus.seq_len=16"]
    assert extract(*common).returncode == 0
    markers = sorted(p.stat().st_mtime_ns for p in (store / "commits").glob("*"))
    result = extract(*common, "capture.sites=[resid_post.2]")
    assert_user_error(result, "different job", "capture.sites", str(store))
    assert sorted(p.stat().st_mtime_ns for p in (store / "commits").glob("*")) == markers
