"""The corpus tokenized part by part into a store's staging area equals ``tokenize_corpus`` on the
whole corpus in one process: rows, document ids, sequences, the plan and every shard's window."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embwalk.corpus import CorpusConfig, read_documents, tokenize_corpus
from embwalk.corpus.documents import corpus_parts
from embwalk.corpus.sequences import ShardTokens
from embwalk.corpus.staged import STAGING_DIR, stage_corpus
from embwalk.errors import StoreError
from embwalk.executors.units import process_pool
from embwalk.plan import make_plan, plan_staged, shard_tokens_for
from embwalk.store.fs import open_fs

ROOT = Path(__file__).resolve().parents[2]
WORDS = "the walk of a token through layer after layer of the residual stream moves it".split()


def write_corpus(root: Path, n_files: int = 7, seed: int = 0) -> Path:
    """Files of every format, documents of very different lengths (some longer than a sequence)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)

    def text() -> str:
        return " ".join(rng.choice(WORDS, int(rng.integers(1, 90))))

    for i in range(n_files):
        kind = ("jsonl", "txt", "parquet")[i % 3]
        docs = [text() for _ in range(int(rng.integers(3, 12)))]
        if kind == "jsonl":
            (root / f"f{i:02d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        elif kind == "txt":
            (root / f"f{i:02d}.txt").write_text("\n\n".join(docs) + "\n")
        else:
            pq.write_table(pa.table({"text": docs}), root / f"f{i:02d}.parquet")
    return root


def check_equal(cfg: CorpusConfig, tokenizer, store: Path, mapper=None, shard_tokens: int = 64) -> None:
    want = tokenize_corpus(read_documents(cfg), tokenizer, cfg)
    fs = open_fs(store)
    staged, _ = stage_corpus(fs, cfg, tokenizer, mapper)
    assert (staged.n_tokens, staged.n_documents, staged.n_sequences) == (
        want.n_tokens, want.n_documents, want.n_sequences)
    rows = staged.read_rows(fs, 0, staged.n_tokens)
    np.testing.assert_array_equal(rows["token_id"], want.token_ids)
    np.testing.assert_array_equal(rows["doc_id"], want.doc_ids)
    np.testing.assert_array_equal(rows["doc_pos"], want.doc_positions)
    shard = shard_tokens_for(shard_tokens, 8, cfg.seq_len, cfg.mode)
    plan, reference = plan_staged(staged, fs, shard), make_plan(want, shard)
    assert plan == reference
    for s in plan.shards:  # what a worker reads for the shard is the window of the whole corpus
        got = ShardTokens.from_rows(staged.read_rows(fs, *s.seq_rows), s.seq_rows[0], s.seqs[0], cfg.mode,
                                    cfg.seq_len)
        ref = ShardTokens.of(want, s.seqs)
        for field in ("token_ids", "doc_ids", "positions", "doc_positions", "seq_offsets"):
            np.testing.assert_array_equal(getattr(got, field), getattr(ref, field), err_msg=field)
        assert (got.row0, got.seq0) == (ref.row0, ref.seq0)


CASES = {
    "pack": dict(mode="pack", seq_len=16),
    "pack-max-tokens": dict(mode="pack", seq_len=16, max_tokens=700),
    "pack-max-documents": dict(mode="pack", seq_len=16, max_documents=23),
    "document": dict(mode="document", seq_len=24),
    "document-max-tokens": dict(mode="document", seq_len=24, max_tokens=555),
    "document-max-documents": dict(mode="document", seq_len=24, max_documents=31),
}


@pytest.mark.parametrize("case", CASES)
def test_staged_equals_one_process(tmp_path, smollm2, minilm, case):
    options = CASES[case]
    tokenizer = (smollm2 if options["mode"] == "pack" else minilm).tokenizer
    cfg = CorpusConfig(path=str(write_corpus(tmp_path / "corpus")), **options)
    assert len(corpus_parts(cfg)) == 7
    check_equal(cfg, tokenizer, tmp_path / "store")


def test_builtin_corpus_in_parts_equals_one_process(tmp_path, smollm2):
    cfg = CorpusConfig(mode="pack", seq_len=64, max_documents=400)  # spans several parts of the stdlib
    assert len(corpus_parts(cfg)) > 5
    check_equal(cfg, smollm2.tokenizer, tmp_path / "store", shard_tokens=1024)


def test_a_process_pool_gives_the_same_rows(tmp_path, smollm2, minilm):
    corpus = write_corpus(tmp_path / "corpus", n_files=9)
    check_equal(CorpusConfig(path=str(corpus), mode="pack", seq_len=16, max_tokens=900), smollm2.tokenizer,
                tmp_path / "pack", process_pool(2))
    check_equal(CorpusConfig(path=str(corpus), mode="document", seq_len=24), minilm.tokenizer,
                tmp_path / "document", process_pool(2))


def test_another_tokenization_in_the_store_is_refused(tmp_path, smollm2):
    cfg = CorpusConfig(path=str(write_corpus(tmp_path / "corpus")), mode="pack", seq_len=16)
    fs = open_fs(tmp_path / "store")
    stage_corpus(fs, cfg, smollm2.tokenizer)
    with pytest.raises(StoreError, match="tokenization of another corpus.*corpus"):
        stage_corpus(fs, replace(cfg, seq_len=32), smollm2.tokenizer)


KILLABLE = """
import sys, time
import embwalk.corpus.staged as staged
from embwalk.corpus import CorpusConfig
from embwalk.models.config import ModelConfig
from embwalk.models.spec import load_spec
from embwalk.store.fs import open_fs
original = staged.stage_part
def slow(fs, part, cfg, tokenizer):
    counts = original(fs, part, cfg, tokenizer)
    print("staged", part.index, flush=True)
    time.sleep(0.3)  # room for the kill to land between parts
    return counts
staged.stage_part = slow
tokenizer = load_spec(ModelConfig(name="smollm2-135m", device="cpu")).tokenizer
staged.stage_corpus(open_fs(sys.argv[1]), CorpusConfig(path=sys.argv[2], mode="pack", seq_len=16), tokenizer)
"""


def test_a_killed_tokenization_resumes_with_only_the_unfinished_parts(tmp_path, smollm2):
    corpus = write_corpus(tmp_path / "corpus", n_files=9)
    store = tmp_path / "store"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(store), str(corpus)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        for _ in range(3):  # three parts done, then SIGKILL at a random moment of the fourth
            line = proc.stdout.readline()
            assert line.startswith("staged"), proc.stderr.read()
        time.sleep(float(np.random.default_rng(7).uniform(0, 0.3)))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    staging = store / STAGING_DIR
    finished = {p.name: p.stat().st_mtime_ns for p in staging.glob("part-*.json")}
    assert 3 <= len(finished) < 9
    cfg = CorpusConfig(path=str(corpus), mode="pack", seq_len=16)
    check_equal(cfg, smollm2.tokenizer, store)
    assert {p.name: p.stat().st_mtime_ns for p in staging.glob("part-*.json") if p.name in finished} == finished
    assert len(list(staging.glob("part-*.json"))) == 9
