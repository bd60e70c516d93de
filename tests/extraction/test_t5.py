"""A T5-family checkpoint named by its directory: its encoder extracted end to end, its statistics
those of an encoder without an LM head, and decoder sites beside encoder sites refused in one line
(a decoder store is its own job: tests/extraction/test_t5_decoder.py)."""

from __future__ import annotations

import pytest

from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from embwalk.store.reader import Store
from tests.extraction.test_extract import _check_store_against_model, _config
from tests.models.t5_checkpoints import save_t5
from tests.stats.stores import corpus_file


@pytest.mark.parametrize("name, mode", [("t5", "document"), ("umt5", "pack")])
def test_a_t5_directory_extracts_its_encoder_and_gets_encoder_statistics(tmp_path, name, mode):
    path = save_t5(tmp_path, name)
    # document mode: padded batches; the sites in the seq2seq and TransformerLens encoder spellings
    cfg = _config(tmp_path, corpus_file(tmp_path), mode=mode, seq_len=24, shard_tokens=30,
                  sites=["enc.resid_pre.0", "resid_post", "encoder_final_ln.hook_normalized", "enc.attn_pattern"])
    cfg.model = ModelConfig(name=str(path), device="cpu")
    manifest = extract_local(cfg)  # planned from load_spec, extracted by load_model: no model passed in
    assert manifest["complete"] and not manifest["causal"]
    assert manifest["model"]["family"] == "t5" and manifest["model"]["n_layers"] == 2
    assert manifest["sites"] == ["resid_pre.0", "resid_post.0", "resid_post.1", "attn_pattern.0", "attn_pattern.1",
                                 "final"]  # the encoder's sites, stored unprefixed
    store = Store(cfg.store.path)
    _check_store_against_model(store, load_model(cfg.model))  # against the eager encoder, sequence by sequence
    summary = compute_store_stats(cfg.store.path, StatsOptions(), ClusterConfig(workers=1, progress=False))
    assert {"encoding", "attention", "geometry"} <= set(summary["families"])
    assert not {"logit_lens", "decoding"} & set(summary["families"])
    assert all("unembedding" in summary["skipped"][f] for f in ("logit_lens", "decoding"))


@pytest.mark.parametrize("site", ["dec.resid_post.0", "decoder.1.hook_resid_post", "decoder_final_ln.hook_normalized"])
def test_decoder_sites_beside_encoder_sites_in_pack_mode_are_one_line_errors_before_any_work(tmp_path, site):
    # both stacks make a two-stack store (tests/extraction/test_two_stacks.py): one input per sequence
    path = save_t5(tmp_path, "t5")
    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", site])
    cfg.model = ModelConfig(name=str(path), device="cpu")
    with pytest.raises(EmbwalkError) as err:
        extract_local(cfg)
    message = str(err.value)
    assert "corpus.mode=document" in message and "\n" not in message
    assert not (tmp_path / "store").exists()
