"""The shuffled-input control end to end: a shuffled store holds, per document span of each
sequence, a permutation of the plain store's tokens, and what the model computes on them."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from embwalk.corpus.shuffle import SHUFFLE_RULE, SOURCE_POS
from embwalk.errors import StoreError
from embwalk.executors.local import extract_local
from embwalk.store.reader import Store
from tests.conftest import tiny_loaded
from tests.extraction.test_extract import SENTENCES, _check_store_against_model, _config


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def _run(tmp_path, corpus_file, loaded, name, shuffle=True, seed=0, **options):
    batch_size = options.pop("batch_size", 3)
    cfg = _config(tmp_path / name, corpus_file, **options)
    cfg.corpus.shuffle_tokens, cfg.corpus.shuffle_seed = shuffle, seed
    cfg.cluster.batch_size = batch_size
    manifest = extract_local(cfg, loaded)
    return Store(cfg.store.path), manifest


def _check_permutation(plain: pd.DataFrame, fed: pd.DataFrame, fixed: list[int]) -> None:
    """``fed`` (a shuffled store's tokens) is ``plain`` permuted within each (sequence, document),
    special tokens in place, and source_pos says where each fed token stood."""
    assert fed.columns.tolist() == [*plain.columns, SOURCE_POS]
    for col in ("row", "doc_id", "seq_id", "pos", "doc_pos"):
        assert fed[col].tolist() == plain[col].tolist(), col
    for _, span in fed.groupby(["seq_id", "doc_id"]):
        base = plain.loc[span.index]
        assert sorted(span.token_id) == sorted(base.token_id)
        assert set(span[SOURCE_POS]) == set(base.pos)
    special = plain.token_id.isin(fixed)
    assert special.any() and (fed.token_id[special] == plain.token_id[special]).all()
    # the same token in the plain store: row - pos + source_pos
    back = fed.row - fed.pos + fed[SOURCE_POS]
    assert (plain.token_id.to_numpy()[back] == fed.token_id.to_numpy()).all()
    assert (fed.token == plain.token.to_numpy()[back]).all()
    assert (fed.token_id != plain.token_id).sum() > len(fed) // 3


def test_pack_mode_shuffled_store_is_the_model_on_permuted_spans(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    plain, plain_manifest = _run(tmp_path, corpus_file, loaded, "plain", shuffle=False)
    store, manifest = _run(tmp_path, corpus_file, loaded, "shuffled", seed=3)
    fixed = manifest["shuffle"]["fixed_token_ids"]
    assert smollm2.tokenizer.eos_token_id in fixed  # each document's separator stays its last token
    fed = _check_store_against_model(store, loaded)  # every sequence: resid, final, attention on the fed ids
    _check_permutation(plain.tokens().to_pandas(), fed, fixed)
    # the manifest records the control; the plain store's identity is what it always was
    on_disk = json.loads((tmp_path / "shuffled" / "store" / "manifest.json").read_text())
    assert on_disk["config"]["corpus"]["shuffle_tokens"] is True and on_disk["config"]["corpus"]["shuffle_seed"] == 3
    assert on_disk["shuffle"] == {"seed": 3, "rule": SHUFFLE_RULE, "fixed_token_ids": fixed,
                                  "source_column": SOURCE_POS}
    assert on_disk["identity"]["corpus.shuffle_seed"] == 3
    assert on_disk["identity"]["corpus.shuffled_by"] == {"rule": SHUFFLE_RULE, "fixed_token_ids": fixed}
    assert "shuffle" not in plain_manifest and not [k for k in plain_manifest["identity"] if "shuffle" in k]
    assert not {"shuffle_tokens", "shuffle_seed"} & set(plain_manifest["identity"]["corpus"])
    assert SOURCE_POS not in plain.tokens().column_names  # unshuffled stores keep the token schema


def test_document_mode_keeps_cls_and_sep_and_sequences_cut_by_shards(tmp_path, corpus_file, minilm):
    """BERT: [CLS] first and [SEP] last stay; sequences straddle shards (run twice, stored once)."""
    loaded = tiny_loaded("bert", minilm.tokenizer)
    options = dict(mode="document", seq_len=24, shard_tokens=30)
    plain, _ = _run(tmp_path, corpus_file, loaded, "plain", shuffle=False, **options)
    store, manifest = _run(tmp_path, corpus_file, loaded, "shuffled", seed=1, **options)
    assert any(s["seq_rows"][0] < s["rows"][0] for s in store.manifest["shards"])  # a sequence cut by a shard
    fed = _check_store_against_model(store, loaded)
    _check_permutation(plain.tokens().to_pandas(), fed, manifest["shuffle"]["fixed_token_ids"])
    firsts, lasts = fed.groupby("seq_id").token_id.first(), fed.groupby("seq_id").token_id.last()
    assert (firsts == minilm.tokenizer.cls_token_id).all() and (lasts == minilm.tokenizer.sep_token_id).all()
    # other shard sizes and batches: the same token table
    again, _ = _run(tmp_path, corpus_file, loaded, "again", seed=1, **dict(options, shard_tokens=8), batch_size=1)
    assert len(again.manifest["shards"]) > len(store.manifest["shards"])
    assert again.tokens().equals(store.tokens())


def test_same_seed_same_order_whatever_the_shards_and_batches(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("gpt2", smollm2.tokenizer)
    sites = ["resid_post.0"]
    a, _ = _run(tmp_path, corpus_file, loaded, "a", seed=5, sites=sites, shard_tokens=16, batch_size=1)
    b, _ = _run(tmp_path, corpus_file, loaded, "b", seed=5, sites=sites, shard_tokens=64, batch_size=4)
    assert len(a.manifest["shards"]) > len(b.manifest["shards"]) > 1
    assert a.tokens().equals(b.tokens())
    np.testing.assert_allclose(a.array("resid")[:], b.array("resid")[:], atol=1e-5, rtol=0)
    c, _ = _run(tmp_path, corpus_file, loaded, "c", seed=6, sites=sites, shard_tokens=64, batch_size=4)
    ta, tc = a.tokens().to_pandas(), c.tokens().to_pandas()
    assert (ta.token_id != tc.token_id).any()
    assert sorted(ta.token_id) == sorted(tc.token_id)


def test_resume_with_another_shuffle_is_refused(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    sites = ["resid_post.0"]
    _run(tmp_path, corpus_file, loaded, "plain", shuffle=False, sites=sites)
    _run(tmp_path, corpus_file, loaded, "shuffled", seed=1, sites=sites)
    for name, shuffle, seed in (("plain", True, 0), ("shuffled", False, 0), ("shuffled", True, 2)):
        root = tmp_path / name / "store"
        before = {p: os.stat(p).st_mtime_ns for p in root.rglob("*") if p.is_file()}
        with pytest.raises(StoreError, match="different job .corpus.shuffle_seed: ") as caught:
            _run(tmp_path, corpus_file, loaded, name, shuffle=shuffle, seed=seed, sites=sites)
        assert "\n" not in str(caught.value)
        assert {p: os.stat(p).st_mtime_ns for p in root.rglob("*") if p.is_file()} == before  # nothing written
    # without shuffle_tokens the seed is no part of the job: the plain store resumes (all committed)
    _, manifest = _run(tmp_path, corpus_file, loaded, "plain", shuffle=False, seed=9, sites=sites)
    assert manifest["complete"] and manifest["run_tokens"] == 0
