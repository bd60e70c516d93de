"""A T5 score's terms stored like patterns (docs/seq2seq.md): attn_content (q·k), attn_bias (the
learned position bias), attn_score (their sum, pre-softmax) and a decoder's cross_score, checked
against the very scores eager attention feeds its softmax, in encoder and decoder stores."""

from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import xarray as xr

from embwalk.errors import ModelError, SiteError, StoreError
from embwalk.executors.local import extract_local
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.query import open_store
from embwalk.store.reader import Store
from tests.extraction.test_extract import _check_store_against_model, _config
from tests.extraction.test_t5_decoder import PAIRS, decoder_config, pairs_file
from tests.models.t5_checkpoints import save_t5
from tests.stats.stores import corpus_file

REL = 1e-5
TERMS = ("score", "content", "position_bias")


@contextmanager
def softmax_inputs():
    """Every tensor torch.nn.functional.softmax is handed meanwhile (eager T5 attention's scores:
    q·k + position bias + mask, one call per attention, in the order the model runs them)."""
    recorded, softmax = [], torch.nn.functional.softmax

    def recording(x, *args, **kwargs):
        recorded.append(x.detach().float().clone())
        return softmax(x, *args, **kwargs)

    torch.nn.functional.softmax = recording
    try:
        yield recorded
    finally:
        torch.nn.functional.softmax = softmax


def eager(model: torch.nn.Module) -> torch.nn.Module:
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    return model


def close(got, want, rel=REL):
    want = np.asarray(want, dtype=np.float64)
    scale = max(float(np.abs(want).max()), 1e-30)
    assert np.abs(np.asarray(got, dtype=np.float64) - want).max() <= rel * scale


def owner(stack: torch.nn.Module, layer: int) -> torch.nn.Module:
    """The self-attention whose position bias scores ``layer``: its own (UMT5) or block 0's (T5, MT5)."""
    attn = stack.block[layer].layer[0].SelfAttention
    return attn if attn.has_relative_attention_bias else stack.block[0].layer[0].SelfAttention


@pytest.mark.parametrize("name, heads", [("t5", None), ("umt5", [1, 3])])
def test_encoder_score_terms_are_the_scores_eager_attention_computes(tmp_path, name, heads):
    # document mode: padded batches of several lengths; pattern on one layer only, terms on both
    cfg = _config(tmp_path, corpus_file(tmp_path), mode="document", seq_len=24, shard_tokens=30,
                  sites=["resid_pre.0", "resid_post", "final", "enc.attn_score", "attn_content",
                         "encoder.1.attn.hook_attn_scores", "attn_bias.0", "attn_bias.1", "attn_pattern"])
    cfg.model = ModelConfig(name=str(save_t5(tmp_path, name)), device="cpu")
    cfg.capture.heads = heads
    manifest = extract_local(cfg)
    assert {"attn_score.0", "attn_content.1", "attn_bias.1"} <= set(manifest["sites"])
    for array, axis in zip(TERMS, ("score_layer", "content_layer", "bias_layer"), strict=True):
        spec = manifest["arrays"][array]
        assert spec["dims"] == ["seq", axis, "head", "query", "key"] and spec["layers"] == [0, 1]
        assert spec["heads"] == (heads or [0, 1, 2, 3]) and "0 where the query does not see" in spec["values"]
    loaded = load_model(cfg.model)
    store = Store(cfg.store.path)
    if heads is None:  # the layers' outputs now come from the probabilities: still eager's stream
        _check_store_against_model(store, loaded)
    stored = {t: store.array(t)[:] for t in TERMS}
    model = eager(loaded.model)
    keep = heads or list(range(4))
    tokens = store.tokens().to_pandas()
    lengths = tokens.groupby("seq_id").size()
    assert lengths.nunique() > 2  # sequences of several lengths shared padded batches
    for seq, rows in tokens.groupby("seq_id"):
        n = len(rows)
        with softmax_inputs() as scores, torch.no_grad():
            model.encoder(input_ids=torch.tensor(rows["token_id"].to_numpy())[None])
        assert len(scores) == 2  # one softmax per layer
        for layer in range(2):
            want = scores[layer][0, keep].numpy()
            close(stored["score"][seq, layer, :, :n, :n], want)
            bias = owner(model.encoder, layer).compute_bias(n, n)[0, keep].numpy()
            close(stored["position_bias"][seq, layer, :, :n, :n], bias)
            close(stored["content"][seq, layer, :, :n, :n], want - bias)
            for term in TERMS:  # nothing past the sequence's end
                assert not stored[term][seq, layer, :, n:].any() and not stored[term][seq, layer, :, :, n:].any()
    # query and xarray read them as they read patterns
    q = open_store(cfg.store.path)
    seq = int(lengths.idxmin())
    got = q.attention(seq, kind="attn_score")
    n = int(lengths[seq])
    assert got.shape == (2, len(keep), n, n)
    np.testing.assert_array_equal(got, stored["score"][seq, :, :, :n, :n])
    labelled = q.attention(seq, layers=["attn_bias.1"], heads=[keep[-1]], kind="attn_bias", labelled=True)
    assert labelled.dims == ("layer", "head", "query", "key") and labelled.name == "position_bias"
    np.testing.assert_array_equal(labelled.values[0, 0], stored["position_bias"][seq, 1, -1, :n, :n])
    ds = xr.open_zarr(store.root / "attention.zarr")
    assert ds.content.sel(content_layer=1, head=keep[0]).shape == (manifest["n_sequences"], 24, 24)


def test_decoder_score_terms_and_cross_scores_are_eagers_self_and_cross_attention_scores(tmp_path):
    cfg = decoder_config(tmp_path, pairs_file(tmp_path), model="umt5",
                         sites=["dec.resid_post", "dec.attn_score", "dec.attn_content", "dec.attn_bias",
                                "dec.cross_score.1", "decoder.2.cross_attn.hook_attn_scores"])
    manifest = extract_local(cfg)
    assert manifest["arrays"]["cross_score"]["layers"] == [1, 2]
    assert manifest["arrays"]["cross_score"]["dims"][1] == "cross_score_layer"
    loaded = load_model(cfg.model)
    model, tok = eager(loaded.model), loaded.tokenizer
    store = Store(cfg.store.path)
    stored = {t: store.array(t)[:] for t in (*TERMS, "cross_score")}
    q = open_store(cfg.store.path)
    for seq, (text, target) in enumerate(PAIRS):
        enc_ids = tok(text)["input_ids"]
        dec_ids = [model.config.decoder_start_token_id] + tok(target)["input_ids"]
        n, m = len(dec_ids), len(enc_ids)
        with softmax_inputs() as scores, torch.no_grad():
            model(input_ids=torch.tensor(enc_ids)[None], decoder_input_ids=torch.tensor(dec_ids)[None])
        assert len(scores) == 2 + 2 * 3  # the encoder's layers, then each decoder layer's self and cross
        seen = np.tril(np.ones((n, n), dtype=bool))  # causal: a query sees itself and the keys before it
        for layer in range(3):
            self_score, cross = scores[2 + 2 * layer][0].numpy(), scores[3 + 2 * layer][0].numpy()
            got = stored["score"][seq, layer, :, :n, :n]
            close(got[:, seen], self_score[:, seen])
            assert not got[:, ~seen].any()  # a later key: unseen, stored 0
            bias = owner(model.decoder, layer).compute_bias(n, n)[0].numpy()
            close(stored["position_bias"][seq, layer, :, :n, :n][:, seen], bias[:, seen])
            close(stored["content"][seq, layer, :, :n, :n][:, seen], (self_score - bias)[:, seen])
            if layer >= 1:
                got = stored["cross_score"][seq, layer - 1]
                close(got[:, :n, :m], cross)  # q·k over the encoder's inputs: no bias, every key seen
                assert not got[:, :, m:].any() and not got[:, n:].any()
        crossed = q.attention(seq, kind="cross_score")  # keys cropped to the token table's input_len
        np.testing.assert_array_equal(crossed, stored["cross_score"][seq, :, :, :n, :m])
        assert q.sql("SELECT DISTINCT input_len FROM tokens WHERE seq_id = ?", [seq]).column(0).to_pylist() == [m]


@pytest.mark.parametrize("site", ["attn_score.0", "attn_content", "attn_bias.1", "blocks.0.attn.hook_attn_scores"])
def test_score_terms_of_a_model_without_a_position_bias_are_one_line_errors(tmp_path, smollm2, site):
    from tests.conftest import tiny_loaded

    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", site])
    with pytest.raises(ModelError) as err:
        extract_local(cfg, tiny_loaded("llama", smollm2.tokenizer))
    assert "learned relative position bias" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()


def test_terms_of_a_sequence_running_into_an_uncommitted_shard_are_refused_not_cut(tmp_path):
    cfg = _config(tmp_path, corpus_file(tmp_path), mode="document", seq_len=24, shard_tokens=16,
                  sites=["resid_post.0", "attn_score.0"])
    cfg.model = ModelConfig(name=str(save_t5(tmp_path, "t5")), device="cpu")
    manifest = extract_local(cfg)
    shards = manifest["shards"]
    # a sequence that starts in one shard and ends in the next
    k, seq = next((s["index"], s["seqs"][1] - 1) for s in shards[:-1]
                  if shards[s["index"] + 1]["seqs"][0] == s["seqs"][1] - 1)
    (tmp_path / "store" / "tokens" / f"shard-{k + 1:05d}.parquet").unlink()  # un-commit the next shard
    with pytest.raises(StoreError, match=f"sequence {seq} runs on into shard {k + 1}, which is not committed"):
        open_store(cfg.store.path).attention(seq, kind="attn_score")


def test_cross_scores_of_an_encoder_store_and_unstored_terms_are_one_line_errors(tmp_path):
    path = save_t5(tmp_path, "t5")
    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", "cross_score.0"])
    cfg.model = ModelConfig(name=str(path), device="cpu")
    with pytest.raises(ModelError, match="cross_score.*decoder"):
        extract_local(cfg)
    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", "attn_score.1"])
    cfg.model = ModelConfig(name=str(path), device="cpu")
    extract_local(cfg)
    q = open_store(cfg.store.path)
    with pytest.raises(SiteError, match=r"attn_score\.0 is not in this store"):
        q.attention(0, layers=[0], kind="attn_score")
    with pytest.raises(SiteError, match="no attn_content"):
        q.attention(0, kind="attn_content")
    with pytest.raises(SiteError, match="no attention patterns"):
        q.attention(0)
