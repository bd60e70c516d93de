"""A raw reader of ``tokens/`` (pyarrow, DuckDB: no embwalk) sees only committed shards, at every
moment of a run and after the run is SIGKILLed at a random point; the rerun then completes the store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from embwalk.corpus import CorpusConfig
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.store import layout
from embwalk.store.config import StoreConfig
from embwalk.store.verify import verify_store
from tests.conftest import tiny_loaded
from tests.store.test_damage import _data_files

ROOT = Path(__file__).resolve().parents[2]
SHARD_TOKENS = 16
LINES = [f"Line {i}: a reader polls the token table while shard after shard commits, {i * 13}." for i in range(48)]

# The extraction, in a process of its own so that it can be SIGKILLed.
RUN = """
import json, sys
from embwalk.executors.local import extract_local
from embwalk.extraction.config import ExtractConfig
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from tests.conftest import tiny_loaded
cfg = ExtractConfig.from_dict(json.loads(sys.argv[1]))
model = tiny_loaded("llama", load_model(ModelConfig(name="smollm2-135m", device="cpu")).tokenizer)
print("start", flush=True)
extract_local(cfg, model)
print("done", flush=True)
"""


def _config(store: Path, corpus: Path) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", seq_len=16),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "final", "attn_pattern.0"]),
        store=StoreConfig(path=str(store), dtype="float16", shard_tokens=SHARD_TOKENS, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=2, progress=False),
    )


def _as_dict(cfg: ExtractConfig) -> dict:
    from dataclasses import asdict

    return asdict(cfg)


def _poll(store: Path) -> None:
    """Read tokens/ as a user would, and check every row seen belongs to a shard whose commit
    record is on disk (records are written before the token table; a table without one would be
    a shard whose commit never happened)."""
    tokens = store / layout.TOKENS_DIR
    if not any(tokens.glob("*.parquet")):
        return
    rows = pq.read_table(tokens, columns=["row"]).column("row").to_pylist()
    rows += [r for (r,) in duckdb.sql(f"SELECT row FROM '{tokens}/*.parquet'").fetchall()]
    for shard in {r // SHARD_TOKENS for r in rows}:
        assert (store / layout.commit_file(shard)).is_file(), f"row of shard {shard} seen before its commit"


@pytest.mark.parametrize("trial", range(3))
def test_raw_readers_never_see_an_uncommitted_row(tmp_path, smollm2, trial):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n")
    reference = _config(tmp_path / "reference", corpus)
    manifest = extract_local(reference, tiny_loaded("llama", smollm2.tokenizer))
    assert len(manifest["shards"]) >= 20

    store = tmp_path / "killed"
    cfg = _config(store, corpus)
    proc = subprocess.Popen([sys.executable, "-c", RUN, json.dumps(_as_dict(cfg))], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "start"
        # A random point: after a random number of commits, a random moment into the next shard.
        rng = random.Random(trial)
        target, extra = rng.randint(1, len(manifest["shards"]) - 2), rng.uniform(0, 0.05)
        polls = 0
        while len(list((store / layout.TOKENS_DIR).glob("*.parquet"))) < target and proc.poll() is None:
            _poll(store)
            polls += 1
        time.sleep(extra)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _poll(store)
    assert polls > 0

    # What a reader sees after the crash is whole: every committed shard checks out, byte for byte.
    committed = sorted(int(p.stem.split("-")[1]) for p in (store / layout.TOKENS_DIR).glob("*.parquet"))
    if (store / layout.MANIFEST).exists():
        assert verify_store(store, full=True, progress=False).damaged == []
        want, got = _data_files(tmp_path / "reference"), _data_files(store)
        for index in committed:
            rel = layout.tokens_file(index)
            assert got[rel] == want[rel]
    assert 0 < len(committed) < len(manifest["shards"]), "the kill should land mid-run"
    rerun = extract_local(cfg, tiny_loaded("llama", smollm2.tokenizer))
    assert rerun["complete"]
    assert _data_files(store) == _data_files(tmp_path / "reference")
