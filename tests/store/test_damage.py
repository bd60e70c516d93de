"""Damaged committed shards are never trusted: a rerun re-extracts exactly them, ``jobs.verify``
names them, and plain zarr (no embwalk) refuses a flipped chunk instead of serving it."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from embwalk.corpus import CorpusConfig
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.store import layout
from embwalk.store.commits import read_manifest, read_record
from embwalk.store.config import StoreConfig
from embwalk.store.verify import verify_store
from tests.conftest import tiny_loaded

ROOT = Path(__file__).resolve().parents[2]
LINES = [f"Line {i}: token vectors walk through layer after layer, number {i * 7}." for i in range(12)]
KINDS = ("resid", "final", "pattern", "tokens")


def _config(path: Path, corpus: Path, compressor: str = "none", verify: str = "quick") -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", seq_len=16),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "final", "attn_pattern.1"]),
        store=StoreConfig(path=str(path), dtype="float16", shard_tokens=32, chunk_tokens=8,
                          compressor=compressor, verify=verify),
        cluster=ClusterConfig(batch_size=3, progress=False),
    )


@pytest.fixture(scope="module")
def model(smollm2):
    return tiny_loaded("llama", smollm2.tokenizer)


@pytest.fixture(scope="module", params=["none", "zstd"])  # shard files written by embwalk / by zarr itself
def pristine(request, tmp_path_factory, model) -> tuple[ExtractConfig, Path]:
    tmp = tmp_path_factory.mktemp("pristine")
    corpus = tmp / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n")
    cfg = _config(tmp / "store", corpus, request.param)
    manifest = extract_local(cfg, model)
    assert manifest["complete"] and len(manifest["shards"]) >= 6
    return cfg, tmp / "store"


def _file_of(root: Path, kind: str, index: int) -> Path:
    """Shard ``index``'s file of a kind: a per-token array's Zarr shard, its first pattern file, its token table."""
    manifest = read_manifest(root)
    if kind == "tokens":
        return root / layout.tokens_file(index)
    files = [rel for rel, name in layout.shard_files(manifest, index).items() if name == kind]
    return root / files[0]


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
        return
    middle = len(data) // 2
    for i in range(middle, min(middle + 64, len(data))):  # inside the data: chunks, or the Parquet pages
        data[i] ^= 0xA5
    with open(path, "r+b") as f:  # in place, as a disk or a stray write would
        f.write(bytes(data))


def _data_files(root: Path) -> dict[str, bytes]:
    """Every byte a reader reads: the arrays, their coordinates and metadata, the token tables."""
    out = {}
    for top in (*layout.GROUPS.values(), layout.TOKENS_DIR):
        for path in sorted((root / top).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_rerun_rewrites_exactly_the_damaged_shard(tmp_path, pristine, model, kind, how, caplog):
    cfg, original = pristine
    copy = tmp_path / "store"
    shutil.copytree(original, copy)  # copy2: sizes and mtimes as committed
    damaged = _file_of(copy, kind, 2)
    _damage(damaged, how)
    with caplog.at_level(logging.WARNING):
        manifest = extract_local(replace(cfg, store=replace(cfg.store, path=str(copy))), model)
    rows = manifest["shards"][2]["rows"]
    assert manifest["complete"] and manifest["run_tokens"] == rows[1] - rows[0]  # that shard, nothing else
    warnings = [r.getMessage() for r in caplog.records if "re-extracting" in r.getMessage()]
    assert len(warnings) == 1 and "shard 2" in warnings[0] and str(damaged) in warnings[0], warnings
    assert _data_files(copy) == _data_files(original)  # bit for bit


def test_damage_that_keeps_size_and_mtime_is_found_by_a_full_check(tmp_path, pristine, model):
    """Bit rot: the bytes change, the size and mtime do not. Only reading every chunk finds it;
    ``store.verify=full`` does, and until then no reader is served the flipped values."""
    cfg, original = pristine
    copy = tmp_path / "store"
    shutil.copytree(original, copy)
    damaged = _file_of(copy, "resid", 3)
    st = damaged.stat()
    _damage(damaged, "flip")
    os.utime(damaged, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert verify_store(copy, full=False, progress=False).damaged == []
    found = verify_store(copy, full=True, progress=False).damaged
    assert [(d.shard, d.file) for d in found] == [(3, str(damaged.relative_to(copy)))]
    assert "checksum mismatch" in found[0].problem

    plain = subprocess.run(  # plain zarr and xarray, no embwalk import: an error, not values
        [sys.executable, "-c", (
            "import sys, zarr, xarray as xr\n"
            f"a = zarr.open_array({str(copy / 'activations.zarr' / 'resid')!r}, mode='r')\n"
            "try:\n    a[:]\nexcept ValueError as e:\n    print('zarr:', e)\n"
            f"ds = xr.open_zarr({str(copy / 'activations.zarr')!r})\n"
            "try:\n    ds.resid.values\nexcept ValueError as e:\n    print('xarray:', e)\n"
            "assert not any(m == 'embwalk' or m.startswith('embwalk.') for m in sys.modules)\n"
        )],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert plain.returncode == 0, plain.stderr
    assert "zarr: Stored and computed checksum do not match" in plain.stdout
    assert "xarray: Stored and computed checksum do not match" in plain.stdout

    manifest = extract_local(replace(cfg, store=replace(cfg.store, path=str(copy), verify="full")), model)
    rows = manifest["shards"][3]["rows"]
    assert manifest["run_tokens"] == rows[1] - rows[0]
    assert _data_files(copy) == _data_files(original)


def test_verify_job_names_each_damaged_shard_and_repair_uncommits_them(tmp_path, pristine, model):
    cfg, original = pristine
    copy = tmp_path / "store"
    shutil.copytree(original, copy)

    def verify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.verify", f"store={copy}", "progress=false", *args],
                              capture_output=True, text=True, timeout=300, cwd=ROOT)

    clean = verify()
    assert clean.returncode == 0, clean.stderr
    assert "0 damaged" in clean.stdout

    plan = {1: ("resid", "truncate"), 2: ("final", "flip"), 4: ("pattern", "flip"), 5: ("tokens", "truncate")}
    files = {}
    for index, (kind, how) in plan.items():
        files[index] = _file_of(copy, kind, index)
        _damage(files[index], how)
        if how == "flip":  # the size and mtime stay: only reading every byte finds these
            st = (original / files[index].relative_to(copy)).stat()
            os.utime(files[index], ns=(st.st_atime_ns, st.st_mtime_ns))
    found = verify()
    assert found.returncode == 1, found.stderr
    for index, path in files.items():
        assert f"damaged: shard {index}: {path.relative_to(copy)}:" in found.stdout, found.stdout
    assert "4 damaged" in found.stdout
    quick = verify("full=false")  # the rerun's check: the truncations, not the flips that kept size and mtime
    assert quick.returncode == 1 and "2 damaged" in quick.stdout, quick.stdout

    repaired = verify("repair=true")
    assert repaired.returncode == 0, repaired.stderr
    assert "repaired: un-committed shard(s) 1, 2, 4, 5" in repaired.stdout
    for index in plan:
        assert not (copy / layout.tokens_file(index)).exists() and read_record(_fs(copy), index) is None
    manifest = extract_local(replace(cfg, store=replace(cfg.store, path=str(copy))), model)
    assert manifest["run_tokens"] == sum(manifest["shards"][i]["rows"][1] - manifest["shards"][i]["rows"][0]
                                         for i in plan)
    assert _data_files(copy) == _data_files(original)


def test_verify_job_on_a_missing_store_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobs.verify", f"store={tmp_path / 'nothing'}"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("embwalk: error: ")


def _fs(root: Path):
    from embwalk.store.fs import open_fs

    return open_fs(root)
