"""T5-family decoder stores (docs/seq2seq.md): input-target pairs teacher-forced through both stacks,
the decoder's sites stored on its own token axis, checked against transformers pair by pair."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from embwalk.corpus.config import CorpusConfig
from embwalk.errors import CorpusError, EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.query import open_store
from embwalk.stats.config import StatsOptions
from embwalk.stats.head import ModelHead, logits
from embwalk.stats.job import compute_store_stats
from embwalk.store.config import StoreConfig
from embwalk.store.reader import Store
from tests.models.t5_checkpoints import save_t5

REL = 1e-5
PAIRS = [  # several lengths on both sides: padded batches of both stacks
    ("the cat sat on a mat", "a dog slept by the door"),
    ("red", "the old blue vector moves through every layer of the residual stream"),
    ("every token model step moves far near small large", "one"),
    ("short one", "the cat walks"),
    ("the residual stream vector space of a model", "green new layer"),
    ("a", "the dog sat"),
    ("the door", "small red cat sat on the mat while it slept"),
]
# The arrays check_decoder_sequence reads: what SITES store.
SEQUENCE_CHECKED = ("resid", "resid_mid", "resid_cross", "final", "pattern", "cross_pattern")
SITES = ["dec.resid_pre", "dec.resid_mid", "dec.resid_cross", "dec.resid_post", "dec.final", "dec.attn_pattern",
         "dec.cross_pattern"]


def pairs_file(root, pairs=PAIRS, target="target"):
    root.mkdir(parents=True, exist_ok=True)
    path = root / "pairs.jsonl"
    path.write_text("".join(json.dumps({"text": a, target: b}) + "\n" for a, b in pairs))
    return path


def decoder_config(tmp_path, corpus, sites=SITES, shard_tokens=24, model="t5", seq_len=16) -> ExtractConfig:
    return ExtractConfig(
        model=ModelConfig(name=str(save_t5(tmp_path, model)), device="cpu"),
        corpus=CorpusConfig(path=str(corpus), mode="document", seq_len=seq_len, target_field="target"),
        capture=CaptureConfig(sites=list(sites)),
        store=StoreConfig(path=str(tmp_path / "store"), dtype="float32", shard_tokens=shard_tokens, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=3, progress=False),
    )


def reference(model, enc_ids, dec_ids):
    """One pair alone through T5ForConditionalGeneration with eager attention; ``.between`` holds
    each decoder block's stream after self-attention and after cross-attention (its sublayers' inputs)."""
    model = copy.deepcopy(model)
    model.set_attn_implementation("eager")
    between: dict[tuple[int, int], torch.Tensor] = {}
    for b, block in enumerate(model.decoder.block):
        for sub in (1, 2):
            keep = (lambda m, args, key=(b, sub): between.update({key: args[0]}))  # noqa: E731
            block.layer[sub].register_forward_pre_hook(keep)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc_ids)[None], decoder_input_ids=torch.tensor(dec_ids)[None],
                    output_hidden_states=True, output_attentions=True)
    out.between = between
    return out


def check_decoder_sequence(arrays: dict, seq: int, r, ref, n_enc: int) -> None:
    """A decoder store's sequence ``seq`` (rows ``r``) against ``reference``: residuals, the streams
    after self- and cross-attention, final, self and cross patterns (zeros past each length)."""
    hs = [h[0].numpy() for h in ref.decoder_hidden_states]  # [0] embeddings ... [3] after the final norm
    for i in range(3):
        close(arrays["resid"][r, i], hs[i])  # resid_pre.i = resid_post.(i - 1)
        close(arrays["resid_mid"][r, i], ref.between[i, 1][0].numpy())  # after self-attention
        close(arrays["resid_cross"][r, i], ref.between[i, 2][0].numpy())  # after cross-attention
    close(arrays["final"][r], hs[3])
    pattern, cross = arrays["pattern"], arrays["cross_pattern"]
    n = len(r)
    for i in range(3):
        close(pattern[seq, i, :, :n, :n], ref.decoder_attentions[i][0].numpy())
        close(cross[seq, i, :, :n, :n_enc], ref.cross_attentions[i][0].numpy())
        assert not pattern[seq, i, :, n:].any() and not cross[seq, i, :, :, n_enc:].any()


def close(got, want, rel=REL):
    want = np.asarray(want)
    scale = max(float(np.abs(want).max()), 1e-30)
    assert np.abs(np.asarray(got) - want).max() <= rel * scale


# with and without the d_model**-0.5 before the LM head; UMT5: a position bias in every layer
@pytest.mark.parametrize("name", ["t5", "t5_v1_1", "mt5", "umt5"])
def test_decoder_store_equals_transformers_pair_by_pair(tmp_path, name):
    cfg = decoder_config(tmp_path, pairs_file(tmp_path), model=name)
    manifest = extract_local(cfg)
    assert manifest["complete"] and manifest["causal"] and len(manifest["shards"]) > 2
    assert manifest["model"]["stack"] == "dec" and manifest["model"]["n_layers"] == 3  # the decoder's depth
    assert manifest["identity"]["corpus"]["target_field"] == "target"
    assert "cross_pattern" in manifest["arrays"] and "resid_cross" in manifest["arrays"]
    loaded = load_model(cfg.model)
    tok, model = loaded.tokenizer, loaded.model
    store = Store(cfg.store.path)
    tokens = store.tokens().to_pandas()
    assert tokens["row"].tolist() == list(range(manifest["n_tokens"]))
    arrays = {name: store.array(name)[:] for name in SEQUENCE_CHECKED}
    head = ModelHead.from_loaded(loaded, "cpu")
    straddlers = 0
    for seq, (text, target) in enumerate(PAIRS):
        rows = tokens[tokens.seq_id == seq]
        enc_ids = tok(text)["input_ids"]
        dec_ids = [model.config.decoder_start_token_id] + tok(target)["input_ids"]
        assert rows["token_id"].tolist() == dec_ids and rows["pos"].tolist() == list(range(len(dec_ids)))
        r = rows["row"].to_numpy()
        straddlers += r[0] // 24 != r[-1] // 24
        ref = reference(model, enc_ids, dec_ids)
        check_decoder_sequence(arrays, seq, r, ref, len(enc_ids))
        # logits from the stored dec.final are the model's (T5's output scaling in the head)
        close(logits(torch.from_numpy(arrays["final"][r]), head.unembed, head.bias), ref.logits[0].numpy())
    assert straddlers >= 1  # a pair computed by two shards, stored once, still equals transformers


def test_a_small_decoder_store_round_trips(tmp_path):
    cfg = decoder_config(tmp_path, pairs_file(tmp_path), sites=["dec.resid_post.1", "dec.final"])
    manifest = extract_local(cfg)
    store = Store(cfg.store.path)
    assert manifest["sites"] == ["resid_post.1", "final"]
    tokens = store.tokens().to_pandas()
    assert tokens.seq_id.nunique() == len(PAIRS) and (tokens.groupby("seq_id").pos.min() == 0).all()
    first = tokens[tokens.seq_id == 0]
    assert first.token.iloc[0] == "<pad>" and first.token.iloc[-1] == "</s>"  # decoder start ... EOS
    final = store.array("final")
    assert final.shape == (manifest["n_tokens"], 32)
    sel = open_store(cfg.store.path).select(seq=0)  # the query API on a decoder store
    np.testing.assert_array_equal(sel.vectors("final"), final[first.row.to_numpy()])
    np.testing.assert_array_equal(sel.vectors("resid_post.1"), store.array("resid")[first.row.to_numpy(), 0])
    got = open_store(cfg.store.path).sql("select count(*) as n from tokens where pos = 0")
    assert got.column("n")[0].as_py() == len(PAIRS)


@pytest.mark.parametrize("record, what", [({"text": "the cat"}, "no 'target' field"),
                                          ({"text": "the cat", "target": "  "}, "empty target")])
def test_a_bad_pair_is_a_one_line_error_and_leaves_no_store(tmp_path, record, what):
    corpus = tmp_path / "pairs.jsonl"
    corpus.write_text(json.dumps({"text": "a dog", "target": "sat"}) + "\n" + json.dumps(record) + "\n")
    cfg = decoder_config(tmp_path, corpus)
    with pytest.raises(CorpusError) as err:
        extract_local(cfg)
    message = str(err.value)
    assert what in message and ("line2" in message or "line 2" in message)
    assert str(corpus) in message and "\n" not in message
    assert not (tmp_path / "store").exists()


def test_decoder_sites_need_document_mode_and_pairs_need_decoder_sites(tmp_path):
    cfg = decoder_config(tmp_path, pairs_file(tmp_path))
    cfg.corpus.target_field, cfg.corpus.mode = None, "pack"
    with pytest.raises(EmbwalkError, match="corpus.mode=document") as err:
        extract_local(cfg)
    assert "\n" not in str(err.value) and not (tmp_path / "store").exists()
    cfg = decoder_config(tmp_path, pairs_file(tmp_path), sites=["resid_post.0"])
    with pytest.raises(EmbwalkError, match="dec.. sites"):
        extract_local(cfg)


def test_inputs_alone_store_the_decoders_first_step_on_each_input(tmp_path):
    # no corpus.target_field: the decoder is fed its start token alone, after any document-mode corpus
    corpus = tmp_path / "inputs.txt"
    corpus.write_text("\n".join(text for text, _ in PAIRS) + "\n")
    cfg = decoder_config(tmp_path, corpus, sites=["dec.resid_pre", "dec.resid_post", "dec.final", "dec.cross_pattern"])
    cfg.corpus.target_field, cfg.corpus.txt_unit = None, "line"
    manifest = extract_local(cfg)
    assert manifest["complete"] and manifest["n_tokens"] == manifest["n_sequences"] == len(PAIRS)
    assert "target_field" not in manifest["identity"]["corpus"]
    loaded = load_model(cfg.model)
    tok, model = loaded.tokenizer, loaded.model
    start = model.config.decoder_start_token_id
    assert manifest["identity"]["corpus.decoder_start_token_id"] == start
    store = Store(cfg.store.path)
    tokens = store.tokens().to_pandas()
    assert tokens["token_id"].tolist() == [start] * len(PAIRS) and not tokens["pos"].any()
    assert tokens["seq_id"].tolist() == tokens["doc_id"].tolist() == list(range(len(PAIRS)))
    resid, final, cross = store.array("resid")[:], store.array("final")[:], store.array("cross_pattern")[:]
    head = ModelHead.from_loaded(loaded, "cpu")
    for seq, (text, _) in enumerate(PAIRS):
        enc_ids = tok(text)["input_ids"]
        ref = reference(model, enc_ids, [start])
        hs = [h[0].numpy() for h in ref.decoder_hidden_states]
        for i in range(3):  # resid_pre.i (the last block's output is before the final norm)
            close(resid[seq, i], hs[i][0])
        close(final[seq], hs[3][0])
        for i in range(3):
            close(cross[seq, i, :, :1, : len(enc_ids)], ref.cross_attentions[i][0].numpy())
            assert not cross[seq, i, :, :, len(enc_ids):].any() and not cross[seq, i, :, 1:].any()
        close(logits(torch.from_numpy(final[seq : seq + 1]), head.unembed, head.bias), ref.logits[0].numpy())


def test_self_patterns_alone_are_the_self_attention_not_the_cross_attention(tmp_path):
    # the block's cross-attention calls the same attention function: only the self-attention is marked
    cfg = decoder_config(tmp_path, pairs_file(tmp_path), sites=["dec.attn_pattern.1"])
    extract_local(cfg)
    loaded = load_model(cfg.model)
    store = Store(cfg.store.path)
    tokens, pattern = store.tokens().to_pandas(), store.array("pattern")[:]
    for seq, (text, _) in enumerate(PAIRS):
        dec_ids = tokens[tokens.seq_id == seq]["token_id"].tolist()
        ref = reference(loaded.model, loaded.tokenizer(text)["input_ids"], dec_ids)
        n = len(dec_ids)
        close(pattern[seq, 0, :, :n, :n], ref.decoder_attentions[1][0].numpy())


def test_decoder_store_statistics_are_a_causal_language_model_s(tmp_path):
    # causal, with an LM head: the decoding walk and the logit lens apply (they were skipped on encoders)
    cfg = decoder_config(tmp_path, pairs_file(tmp_path), sites=["dec.resid_pre", "dec.resid_post", "dec.final",
                                                                 "dec.attn_pattern"])
    extract_local(cfg)
    summary = compute_store_stats(cfg.store.path, StatsOptions(), ClusterConfig(workers=1, progress=False))
    assert {"encoding", "attention", "decoding", "logit_lens", "bias_share"} <= set(summary["families"])
    assert not summary["skipped"]
