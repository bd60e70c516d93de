"""A two-stack store (pipeline/store/stacks.py): one job with encoder and dec.* sites writes a store
per stack, the same records in both, each checked against transformers; bad input fails before
any work and leaves nothing."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from embwalk.errors import CorpusError, EmbwalkError, ModelError, SiteError, StoreError
from embwalk.executors.local import extract_local
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.query import open_store
from embwalk.stats.config import StatsOptions
from embwalk.store.reader import Store
from tests.extraction.test_t5_decoder import PAIRS, close, decoder_config, pairs_file, reference

SITES = ["enc.resid_pre.0", "resid_post", "enc.final", "enc.attn_score.1", "dec.resid_post", "dec.final",
         "dec.cross_pattern.2"]


def two_stack_config(tmp_path, sites=SITES, pairs=PAIRS, **options):
    return decoder_config(tmp_path, pairs_file(tmp_path, pairs), sites=sites, **options)


def test_one_job_writes_a_store_per_stack_over_the_same_records(tmp_path):
    cfg = two_stack_config(tmp_path, shard_tokens=16)
    result = extract_local(cfg)
    enc_m, dec_m = result["stacks"]["enc"], result["stacks"]["dec"]
    assert enc_m["complete"] and dec_m["complete"] and len(enc_m["shards"]) > 2 and len(dec_m["shards"]) > 2
    assert result["run_tokens"] == enc_m["n_tokens"] + dec_m["n_tokens"]
    root = tmp_path / "store"
    assert json.loads((root / "manifest.json").read_text())["stacks"] == {"enc": "encoder", "dec": "decoder"}
    assert enc_m["sites"] == ["resid_pre.0", "resid_post.0", "resid_post.1", "attn_score.1", "final"]
    assert dec_m["model"]["stack"] == "dec" and enc_m["config"]["model"]["stack"] is None
    assert enc_m["n_sequences"] == dec_m["n_sequences"] == len(PAIRS)
    with pytest.raises(StoreError) as err:  # the root is no one-stack store: it says where the stacks are
        Store(root)
    assert str(root / "encoder") in str(err.value) and "\n" not in str(err.value)

    loaded = load_model(dataclasses.replace(cfg.model, stack="dec"))  # the whole model: both stacks
    tok, model = loaded.tokenizer, loaded.model
    enc, dec = open_store(root, stack="enc"), open_store(root, stack="dec")
    assert enc.location == open_store(root / "encoder").location
    enc_tokens, dec_tokens = enc.sql("SELECT * FROM tokens ORDER BY row"), dec.sql("SELECT * FROM tokens ORDER BY row")
    enc_resid, enc_final = enc.reader.array("resid")[:], enc.reader.array("final")[:]
    dec_resid, cross = dec.reader.array("resid")[:], dec.reader.array("cross_pattern")[:]
    for seq, (text, target) in enumerate(PAIRS):  # sequence s is record s in both stores
        enc_ids, dec_ids = tok(text)["input_ids"], [model.config.decoder_start_token_id] + tok(target)["input_ids"]
        e = np.flatnonzero(enc_tokens.column("seq_id").to_numpy() == seq)
        d = np.flatnonzero(dec_tokens.column("seq_id").to_numpy() == seq)
        assert enc_tokens.column("token_id").to_numpy()[e].tolist() == enc_ids
        assert dec_tokens.column("token_id").to_numpy()[d].tolist() == dec_ids
        ref = reference(model, enc_ids, dec_ids)
        for i in range(2):
            close(enc_resid[e, i], ref.encoder_hidden_states[i][0].numpy())  # resid_pre.0, resid_post.0
        close(enc_final[e], ref.encoder_last_hidden_state[0].numpy())
        for i in range(2):
            close(dec_resid[d, i], ref.decoder_hidden_states[i + 1][0].numpy())  # dec.resid_post.0, .1
        close(cross[seq, 0, :, : len(dec_ids), : len(enc_ids)], ref.cross_attentions[2][0].numpy())
        assert enc.attention(seq, kind="attn_score").shape == (1, 4, len(enc_ids), len(enc_ids))

    # each store's sites read in their stack's spellings; the other stack's are a one-line error
    rows = enc.select(seq=2)
    np.testing.assert_array_equal(enc.vectors(rows, "enc.final"), enc.vectors(rows, "final"))
    np.testing.assert_array_equal(enc.vectors(rows, "encoder.1.hook_resid_post"), enc.vectors(rows, "resid_post.1"))
    rows = dec.select(seq=2)
    np.testing.assert_array_equal(dec.vectors(rows, "dec.resid_post.0"), dec.vectors(rows, "resid_post.0"))
    np.testing.assert_array_equal(dec.vectors(rows, "decoder_final_ln.hook_normalized"), dec.vectors(rows, "final"))
    with pytest.raises(SiteError, match="in the encoder: this store holds the decoder's tokens"):
        dec.vectors(rows, "enc.final")

    again = extract_local(two_stack_config(tmp_path, shard_tokens=16))  # a rerun resumes both stacks: nothing redone
    assert again["run_tokens"] == 0 and again["stacks"]["enc"]["complete"]


def test_the_encoder_takes_the_records_the_decoders_token_cut_kept(tmp_path):
    cfg = two_stack_config(tmp_path, sites=["enc.resid_post.0", "dec.resid_post.0"])
    cfg.corpus.max_tokens = 20  # decoder tokens: the first pairs' targets
    result = extract_local(cfg)
    dec_m, enc_m = result["stacks"]["dec"], result["stacks"]["enc"]
    assert dec_m["n_tokens"] == 20 and 1 < dec_m["n_documents"] < len(PAIRS)
    assert enc_m["n_documents"] == dec_m["n_documents"] == enc_m["n_sequences"]


def test_an_empty_target_fails_before_any_work_on_either_stack(tmp_path):
    cfg = two_stack_config(tmp_path, pairs=[*PAIRS[:2], ("a dog", " ")])
    with pytest.raises(CorpusError, match="empty target") as err:
        extract_local(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "store").exists()


@pytest.mark.parametrize("site, error", [("resid_post.5", SiteError), ("enc.cross_pattern.0", ModelError),
                                          ("dec.attn_bias.9", SiteError)])
def test_a_bad_site_of_either_stack_fails_before_any_work(tmp_path, site, error):
    cfg = two_stack_config(tmp_path, sites=["enc.resid_post.0", "dec.resid_post.0", site])
    with pytest.raises(error) as err:
        extract_local(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "store").exists()


def test_in_pass_statistics_one_stack_cannot_feed_fail_before_either_stack_runs(tmp_path):
    cfg = two_stack_config(tmp_path, sites=["enc.resid_post.0", "dec.resid_post.0", "dec.final"])
    cfg.capture.stats = StatsOptions(families=["decoding"])  # the encoder has no final (nor an LM head)
    with pytest.raises(EmbwalkError, match="capture.stats cannot compute decoding") as err:
        extract_local(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "store").exists()


def test_a_one_stack_job_into_a_two_stack_root_fails_before_tokenizing(tmp_path):
    extract_local(two_stack_config(tmp_path, sites=["enc.resid_post.0", "dec.resid_post.0"]))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*"))
    with pytest.raises(StoreError, match="is a two-stack store: a job of one stack's sites writes") as err:
        extract_local(two_stack_config(tmp_path, sites=["dec.final"]))
    assert "\n" not in str(err.value)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "store").rglob("*")) == before  # nothing staged


def test_a_two_stack_job_refuses_a_one_stack_store_and_pack_mode(tmp_path):
    extract_local(two_stack_config(tmp_path, sites=["dec.resid_post.0"]))  # a decoder store at tmp_path/store
    with pytest.raises(StoreError, match="holds one stack's tokens"):
        extract_local(two_stack_config(tmp_path, sites=["enc.resid_post.0", "dec.resid_post.0"]))
    with pytest.raises(StoreError, match="not a two-stack store"):
        open_store(tmp_path / "store", stack="dec")
    cfg = two_stack_config(tmp_path / "pack", sites=["enc.resid_post.0", "dec.resid_post.0"])
    cfg.corpus.mode, cfg.corpus.target_field = "pack", None
    with pytest.raises(EmbwalkError, match="corpus.mode=document"):
        extract_local(cfg)


def test_an_in_memory_model_cannot_fill_two_stacks(tmp_path):
    cfg = two_stack_config(tmp_path, sites=["enc.resid_post.0", "dec.resid_post.0"])
    cfg.model = ModelConfig(name=cfg.model.name, device="cpu")
    with pytest.raises(EmbwalkError, match="in-memory model"):
        extract_local(cfg, load_model(cfg.model))
    assert not (tmp_path / "store").exists()
