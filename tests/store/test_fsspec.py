"""Stores at fsspec URLs: memory:// written through fsspec, file:// through the local path,
each equal to a run to a plain local path; resume, identity checks and one-line errors."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from embwalk.corpus import CorpusConfig
from embwalk.errors import StoreError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.query import open_store
from embwalk.store import layout
from embwalk.store.config import StoreConfig
from embwalk.store.fs import FsspecFS, LocalFS, open_fs
from embwalk.store.writer import StoreWriter
from tests.conftest import assert_same_contents, tiny_loaded

LINES = [f"Line {i}: token vectors walk through layer after layer, number {i * 7}." for i in range(12)]


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


@pytest.fixture
def memory_url():
    """A fresh memory:// store location, removed afterwards (the memory filesystem is per process)."""
    name = f"embwalk-test-{uuid.uuid4().hex[:8]}"
    yield f"memory://{name}/store"
    fs = fsspec.filesystem("memory")
    if fs.exists(f"/{name}"):
        fs.rm(f"/{name}", recursive=True)


@pytest.fixture
def model(smollm2):
    return tiny_loaded("llama", smollm2.tokenizer)


def _config(location: str | Path, corpus: Path, compressor: str = "none", **capture) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", seq_len=16),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "final", "attn_pattern.1"], **capture),
        store=StoreConfig(path=str(location), dtype="float16", shard_tokens=32, chunk_tokens=8,
                          compressor=compressor),
        cluster=ClusterConfig(batch_size=3, progress=False),
    )


def _contents(location: str | Path) -> dict:
    """Everything a reader sees, through open_store: arrays, token table, vectors, attention."""
    store = open_store(location)
    out = {name: store.reader.open_array(spec["path"])[:] for name, spec in store.manifest["arrays"].items()}
    out["tokens"] = store.sql("SELECT * FROM tokens ORDER BY row")
    out["committed"] = store.committed
    out["vectors"] = store.vectors(np.arange(store.n_tokens)[::-1], ["resid_pre.0", "resid_post.2", "final"])
    out["attention"] = store.attention(3)
    return out


@pytest.fixture
def puts(monkeypatch) -> list[str]:
    """Every whole-file put into the memory filesystem, in order."""
    calls: list[str] = []
    original = MemoryFileSystem.pipe_file

    def pipe_file(self, path, value, *args, **kwargs):
        calls.append(self._strip_protocol(path))
        return original(self, path, value, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "pipe_file", pipe_file)
    return calls


@pytest.mark.parametrize("compressor", ["none", "zstd"])  # direct shard files / zarr's own writes
def test_memory_store_equals_a_local_store(tmp_path, corpus, model, memory_url, puts, compressor):
    local = _config(tmp_path / "local", corpus, compressor)
    remote = _config(memory_url, corpus, compressor)
    extract_local(local, model)
    manifest = extract_local(remote, model)
    assert manifest["complete"] and len(manifest["shards"]) > 3
    assert isinstance(open_fs(memory_url), FsspecFS)
    assert_same_contents(_contents(memory_url), _contents(local.store.path))

    # Every file is whole objects put in one call: no temporaries, no appends, nothing written twice
    # but the manifest (rewritten with the shards' status at the end) and each group's zarr.json
    # (rewritten with the consolidated metadata once its arrays exist).
    fs, root = fsspec.core.url_to_fs(memory_url)
    files = set(fs.find(root))
    assert files == set(puts)
    assert not [f for f in files if ".tmp" in f]
    counts = Counter(puts)
    twice = {f"{root}/{layout.MANIFEST}"} | {f"{root}/{group}/zarr.json" for group in layout.GROUPS.values()}
    assert {p for p, n in counts.items() if n != 1} == twice and counts[f"{root}/{layout.MANIFEST}"] == 2
    # The manifest comes last at creation (after every array's metadata and coordinates, before any
    # data); each commit record after its shard's arrays, and its token table after the record.
    first = puts.index(f"{root}/{layout.MANIFEST}")
    data = tuple(f"{root}/{spec['path']}/c/" for spec in manifest["arrays"].values())
    assert first > 0 and not any(p.startswith(data) for p in puts[:first])
    assert not any(p.endswith("zarr.json") for p in puts[first:])
    for shard in manifest["shards"]:
        record = puts.index(f"{root}/{layout.commit_file(shard['index'])}")
        assert puts.index(f"{root}/{layout.tokens_file(shard['index'])}") > record  # the commit itself
        for name in ("resid", "final"):
            chunk = f"{root}/{manifest['arrays'][name]['path']}/c/{shard['index']}/0"
            chunk += "/0" if name == "resid" else ""
            assert puts.index(chunk) < record
        for seq in range(*shard["pattern_seqs"]):
            assert puts.index(f"{root}/attention.zarr/pattern/c/{seq}/0/0/0/0") < record


def test_file_url_equals_a_plain_path(tmp_path, corpus, model):
    url = f"file://{tmp_path / 'url'}"
    assert isinstance(open_fs(url), LocalFS) and open_fs(url).root == tmp_path / "url"
    extract_local(_config(tmp_path / "plain", corpus), model)
    extract_local(_config(url, corpus), model)
    assert (tmp_path / "url" / layout.MANIFEST).is_file()  # the URL's directory, not a "file:" one
    assert_same_contents(_contents(url), _contents(tmp_path / "plain"))


def test_interrupted_memory_run_resumes_rewriting_only_missing_shards(
    tmp_path, corpus, model, memory_url, puts, monkeypatch
):
    cfg = _config(memory_url, corpus)
    original = StoreWriter.write_shard

    def failing(self, index, *args, **kwargs):
        if index == 2:
            raise RuntimeError("injected write failure")
        return original(self, index, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", failing)
    with pytest.raises(RuntimeError, match="injected"):
        extract_local(cfg, model)
    monkeypatch.setattr(StoreWriter, "write_shard", original)
    store = open_store(memory_url)
    done = store.committed
    assert 2 not in done and {0, 1} <= set(done)
    fs, root = fsspec.core.url_to_fs(memory_url)
    markers = {i: fs.cat_file(f"{root}/{layout.commit_file(i)}") for i in done}

    puts.clear()
    manifest = extract_local(cfg, model)
    assert manifest["complete"]
    todo = [s for s in manifest["shards"] if s["index"] not in done]
    assert manifest["run_tokens"] == sum(s["rows"][1] - s["rows"][0] for s in todo)
    # Only the missing shards' files were put again (and the manifest, with the shards' status).
    rewritten = Counter(_shard_of(p[len(root) + 1 :], manifest) for p in puts)
    assert rewritten.pop(None) == 1
    assert set(rewritten) == {s["index"] for s in todo}
    assert {i: fs.cat_file(f"{root}/{layout.commit_file(i)}") for i in done} == markers

    extract_local(_config(tmp_path / "whole", corpus), model)
    assert_same_contents(_contents(memory_url), _contents(tmp_path / "whole"))


def _shard_of(rel: str, manifest: dict) -> int | None:
    """The shard whose data a store file holds (None for the manifest)."""
    if rel == layout.MANIFEST:
        return None
    if rel.startswith((layout.COMMITS_DIR, layout.TOKENS_DIR)):
        return int(rel.split("shard-")[1][:5])
    head, _, chunk = rel.partition("/c/")
    first = int(chunk.split("/")[0])
    if head == manifest["arrays"]["pattern"]["path"]:  # one Zarr shard per sequence
        return next(s["index"] for s in manifest["shards"] if s["pattern_seqs"][0] <= first < s["pattern_seqs"][1])
    return first  # per-token arrays: one Zarr shard per store shard


def test_resuming_a_url_store_with_another_job_is_the_same_error(tmp_path, corpus, model, memory_url):
    messages = []
    for location in (str(tmp_path / "local"), memory_url):
        extract_local(_config(location, corpus), model)
        changed = replace(_config(location, corpus), capture=CaptureConfig(sites=["resid_post.0"]))
        with pytest.raises(StoreError, match="different job.*capture.sites") as info:
            extract_local(changed, model)
        messages.append(str(info.value).replace(location, "STORE"))
    assert messages[0] == messages[1]


def test_a_foreign_url_location_is_refused(memory_url):
    fs, root = fsspec.core.url_to_fs(memory_url)
    fs.pipe_file(f"{root}/notes.txt", b"mine")
    manifest = {"format": layout.FORMAT, "format_version": layout.FORMAT_VERSION, "identity": {}, "shards": []}
    with pytest.raises(StoreError, match=f"not an embwalk store: {memory_url}"):
        StoreWriter.open(memory_url, manifest, [])
    assert fs.cat_file(f"{root}/notes.txt") == b"mine"


@pytest.mark.parametrize(
    ("url", "fragments"),
    [
        ("nosuch://bucket/store", ["nosuch://bucket/store", "unknown protocol 'nosuch'", "s3fs for s3://"]),
        ("s3://bucket/store", ["s3://bucket/store", "s3fs"]),
        ("gs://bucket/store", ["gs://bucket/store", "gcsfs"]),
    ],
)
def test_unknown_protocol_or_missing_backend_is_one_line(url, fragments):
    protocol = url.split("://")[0]
    if protocol != "nosuch":
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError:
            pass
        else:
            pytest.skip(f"the {protocol} backend is installed here")
    for call in (lambda: open_fs(url), lambda: open_store(url)):
        with pytest.raises(StoreError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message
        for fragment in fragments:
            assert fragment in message, message


def test_in_pass_statistics_need_a_local_store(corpus, model, memory_url):
    cfg = _config(memory_url, corpus, stats={})
    with pytest.raises(StoreError, match=f"capture.stats.*local or shared filesystem.*not {memory_url}") as info:
        extract_local(cfg, model)
    assert "\n" not in str(info.value)
    assert not fsspec.filesystem("memory").exists(fsspec.core.url_to_fs(memory_url)[1])  # nothing written
