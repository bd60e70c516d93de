"""Generation on an encoder-decoder model (docs/generation.md, docs/seq2seq.md): each input is the
encoder's prompt, the decoder generates from its start token with the KV cache, and its sites are
stored as they were computed. Checked against transformers' generate (tokens) and a teacher-forced
eager pass over the stored rows (vectors, patterns, score terms, the step columns)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GenerationConfig
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from embwalk.corpus.config import CorpusConfig
from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig
from embwalk.generation.config import DecodeConfig
from embwalk.jobs.generate import GenerateConfig
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from embwalk.store.config import StoreConfig
from embwalk.store.reader import Store
from tests.extraction.test_score_terms import eager, owner, softmax_inputs
from tests.extraction.test_t5_decoder import PAIRS, SEQUENCE_CHECKED, check_decoder_sequence, close, reference
from tests.generation.test_generate import sequences
from tests.models.t5_checkpoints import T5_NAMES, save_t5

INPUTS = [text for text, _ in PAIRS]  # 1 to 10 words: batches of several encoder lengths
N = 6  # new tokens: every continuation has 1 + N rows
SHARD = 24  # not a multiple of 1 + N: continuations straddle shards
SITES = ["dec.resid_pre", "dec.resid_mid", "dec.resid_cross", "dec.resid_post", "dec.final", "dec.attn_pattern",
         "dec.cross_pattern"]


def gen_config(tmp_path, model="t5", *, sites=SITES, batch=3, name="store", corpus=None,
               **decode) -> GenerateConfig:
    if corpus is None:
        corpus = tmp_path / "inputs.txt"
        corpus.write_text("\n".join(INPUTS) + "\n")
    return GenerateConfig(
        model=ModelConfig(name=str(tmp_path / model if (tmp_path / model).exists() else save_t5(tmp_path, model)),
                          device="cpu"),
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", mode="document", seq_len=16),
        capture=CaptureConfig(sites=list(sites)),
        store=StoreConfig(path=str(tmp_path / name), dtype="float32", shard_tokens=SHARD, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=batch, progress=False),
        decode=DecodeConfig(max_new_tokens=N, **decode),
    )


def generate(model, enc_ids: torch.Tensor, mask: torch.Tensor | None = None, **opts):
    """transformers' generate from encoder ids [B, K] (a right-padded batch with its mask)."""
    # a cache of its own: generate sizes one from the encoder's depth, and these decoders are deeper
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
    model.generation_config.eos_token_id = None  # every continuation runs N tokens (the checkpoint's EOS is 1)
    config = GenerationConfig(max_new_tokens=N, eos_token_id=None, pad_token_id=0, do_sample=False, **opts)
    with torch.no_grad():
        return model.generate(input_ids=enc_ids, attention_mask=mask, cache=cache, generation_config=config)


@pytest.mark.parametrize("name", T5_NAMES)
def test_greedy_equals_generate_on_each_input_alone_and_in_a_padded_batch(tmp_path, name):
    cfg = gen_config(tmp_path, name, sites=["dec.resid_post", "dec.final"], repetition_penalty=1.3)
    manifest = extract_local(cfg)
    assert manifest["model"]["stack"] == "dec" and manifest["causal"]
    gen = manifest["generation"]
    assert gen["n_prompts"] == len(INPUTS) and gen["prompts"] == "one encoder input per document"
    assert manifest["seq_len"] == 16 and manifest["n_tokens"] == len(INPUTS) * (1 + N)
    loaded = load_model(cfg.model)
    tok, model = loaded.tokenizer, loaded.model
    start = model.config.decoder_start_token_id
    seqs = sequences(Store(cfg.store.path))
    assert sorted(seqs) == list(range(len(INPUTS)))
    for s, rows in seqs.items():
        ids = rows.token_id.to_numpy()
        want = generate(model, torch.tensor([tok(INPUTS[s])["input_ids"]]), repetition_penalty=1.3)[0].numpy()
        np.testing.assert_array_equal(ids, want, err_msg=f"{name} input {s}")
        assert ids[0] == start and rows.generated.tolist() == [False] + [True] * N
        assert rows.step.isna()[0] and rows.step[1:].tolist() == list(range(N))
        assert rows.prob.isna()[0] and rows.prob[1:].notna().all() and rows.prompt_id.tolist() == [s] * (1 + N)
    assert len({t for rows in seqs.values() for t in rows.token_id[1:]}) > 3  # not one token over and over
    # all inputs in one right-padded batch: the encoder's mask must reach every cross-attention
    batch = tok(INPUTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    want = generate(model, batch["input_ids"], batch["attention_mask"], repetition_penalty=1.3).numpy()
    np.testing.assert_array_equal(np.stack([seqs[s].token_id.to_numpy() for s in range(len(INPUTS))]), want)


@pytest.mark.parametrize("name", T5_NAMES)
def test_every_stored_decoder_vector_equals_a_teacher_forced_pass(tmp_path, name):
    """Sampled continuations (two per input) in padded batches: every site of every row, against one
    eager forward pass over the input and the stored row; the step columns against its logits."""
    cfg = gen_config(tmp_path, name, strategy="sample", samples=2, temperature=1.5, seed=3)
    manifest = extract_local(cfg)
    assert len(manifest["shards"]) > 2
    loaded = load_model(cfg.model)
    tok, model = loaded.tokenizer, loaded.model
    store = Store(cfg.store.path)
    arrays = {name: store.array(name)[:] for name in SEQUENCE_CHECKED}
    straddlers = 0
    for s, rows in sequences(store).items():
        enc_ids, dec_ids = tok(INPUTS[s // 2])["input_ids"], rows.token_id.tolist()
        r = rows.row.to_numpy()
        straddlers += r[0] // SHARD != r[-1] // SHARD
        ref = reference(model, enc_ids, dec_ids)
        check_decoder_sequence(arrays, s, r, ref, len(enc_ids))
        check_step_columns(rows, ref.logits[0].double(), temperature=1.5)
    assert straddlers >= 1  # generated by both shards, alone in a batch, stored once each side


def check_step_columns(rows, logits: torch.Tensor, temperature: float) -> None:
    """Row 1 + t holds the token chosen at step t from the logits at row t."""
    for t in range(N):
        z, chosen, row = logits[t], int(rows.token_id[t + 1]), rows.iloc[t + 1]
        p, q = torch.softmax(z, -1), torch.softmax(z / temperature, -1)
        np.testing.assert_allclose(row.prob, p[chosen].item(), rtol=1e-4)
        np.testing.assert_allclose(row.sample_prob, q[chosen].item(), rtol=1e-4)
        np.testing.assert_allclose(row.entropy, -(p * p.log()).sum().item(), rtol=1e-4, atol=1e-7)  # float32 sums
        assert row["rank"] == int((z > z[chosen]).sum())
        assert list(row.top_ids) == torch.topk(p, len(row.top_ids)).indices.tolist()
    np.testing.assert_allclose(rows.path_logprob[1:], np.cumsum(np.log(rows.prob[1:].to_numpy(np.float64))),
                               rtol=1e-5)


def test_sampling_is_seeded_per_continuation(tmp_path):
    """Other batches (other encoder paddings) draw the same tokens; only float rounding of the
    probabilities moves. Another seed draws others."""
    opts = {"strategy": "sample", "samples": 2, "top_k": 20, "top_p": 0.9, "repetition_penalty": 1.2, "seed": 7}
    sites = ["dec.final"]
    extract_local(gen_config(tmp_path, sites=sites, batch=4, name="a", **opts))
    extract_local(gen_config(tmp_path, sites=sites, batch=1, name="b", **opts))
    extract_local(gen_config(tmp_path, sites=sites, name="c", **{**opts, "seed": 8}))
    ta, tb, tc = (Store(tmp_path / x).tokens() for x in "abc")
    for column in ("token_id", "step", "rank", "top_ids"):
        assert ta.column(column).equals(tb.column(column)), column
    for column in ("prob", "sample_prob", "entropy", "path_logprob"):
        np.testing.assert_allclose(ta.column(column).to_numpy(zero_copy_only=False),
                                   tb.column(column).to_numpy(zero_copy_only=False), rtol=1e-5, err_msg=column)
    assert not tc.column("token_id").equals(ta.column("token_id"))
    seqs = sequences(Store(tmp_path / "a"))
    assert sum(tuple(seqs[2 * q].token_id) != tuple(seqs[2 * q + 1].token_id) for q in range(len(INPUTS))) > 1


@pytest.mark.parametrize("name", ["t5", "umt5"])
def test_beam_search_equals_generate_and_each_beam_keeps_its_own_vectors(tmp_path, name):
    cfg = gen_config(tmp_path, name, sites=["dec.resid_pre", "dec.final", "dec.cross_pattern"], strategy="beam",
                     num_beams=4, samples=3, repetition_penalty=1.2)
    extract_local(cfg)
    loaded = load_model(cfg.model)
    tok, model = loaded.tokenizer, loaded.model
    store = Store(cfg.store.path)
    resid, final, cross = store.array("resid")[:], store.array("final")[:], store.array("cross_pattern")[:]
    seqs = sequences(store)
    for q, text in enumerate(INPUTS):
        enc_ids = tok(text)["input_ids"]
        out = generate(model, torch.tensor([enc_ids]), num_beams=4, num_return_sequences=3, repetition_penalty=1.2,
                       early_stopping=False, return_dict_in_generate=True, output_scores=True)
        beams = [seqs[q * 3 + k] for k in range(3)]
        np.testing.assert_array_equal(np.stack([b.token_id.to_numpy() for b in beams]), out.sequences.numpy(),
                                      err_msg=f"{name} input {q}")
        ranks = np.stack([b.beam[1:].to_numpy() for b in beams])  # generate's beam_indices one step on
        np.testing.assert_array_equal(ranks[:, :-1], out.beam_indices.numpy()[:, 1:N] % 4)
        for k, rows in enumerate(beams):
            ref = reference(model, enc_ids, rows.token_id.tolist())
            r = rows.row.to_numpy()
            for i in range(3):
                close(resid[r, i], ref.decoder_hidden_states[i][0].numpy())
                close(cross[q * 3 + k, i, :, : 1 + N, : len(enc_ids)], ref.cross_attentions[i][0].numpy())
            close(final[r], ref.decoder_hidden_states[3][0].numpy())


def test_score_terms_are_the_scores_eager_attention_computes_while_generating(tmp_path):
    cfg = gen_config(tmp_path, "umt5", sites=["dec.attn_score", "dec.attn_bias", "dec.cross_score.1"],
                     strategy="sample", seed=1)
    extract_local(cfg)
    loaded = load_model(cfg.model)
    model, tok = eager(loaded.model), loaded.tokenizer
    store = Store(cfg.store.path)
    score, bias, cross = (store.array(a)[:] for a in ("score", "position_bias", "cross_score"))
    n = 1 + N
    seen = np.tril(np.ones((n, n), dtype=bool))
    for s, rows in sequences(store).items():
        enc_ids = tok(INPUTS[s])["input_ids"]
        with softmax_inputs() as scores, torch.no_grad():
            model(input_ids=torch.tensor([enc_ids]), decoder_input_ids=torch.tensor([rows.token_id.tolist()]))
        for layer in range(3):  # after the encoder's 2 layers: each decoder layer's self, then cross
            want = scores[2 + 2 * layer][0].numpy()
            close(score[s, layer, :, :n, :n][:, seen], want[:, seen])
            assert not score[s, layer, :, :n, :n][:, ~seen].any()
            want = owner(model.decoder, layer).compute_bias(n, n)[0].numpy()
            close(bias[s, layer, :, :n, :n][:, seen], want[:, seen])
        close(cross[s, 0, :, :n, : len(enc_ids)], scores[5][0].numpy())
        assert not cross[s, 0, :, :, len(enc_ids):].any()


def test_statistics_of_a_generated_decoder_store_include_the_generation_family(tmp_path):
    cfg = gen_config(tmp_path, sites=["dec.resid_pre", "dec.resid_post", "dec.final"], strategy="sample", samples=2)
    extract_local(cfg)
    summary = compute_store_stats(cfg.store.path, StatsOptions(), ClusterConfig(workers=1, progress=False))
    assert {"generation", "decoding", "logit_lens", "encoding"} <= set(summary["families"])
    assert set(summary["skipped"]) == {"attention"}  # no patterns captured


def pairs(tmp_path) -> Path:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"text": a, "target": b}) + "\n" for a, b in PAIRS))
    return path


@pytest.mark.parametrize("change, message", [
    ({"mode": "pack"}, "set corpus.mode=document"),
    ({"target_field": "target"}, "drop corpus.target_field"),
    ({"sites": ["resid_post", "final"]}, "capture dec.* sites, its decoder generates"),
    ({"sites": ["resid_post", "dec.final"]}, "embwalk generate writes one stack's store"),
])
def test_bad_combinations_are_one_line_errors_and_leave_no_store(tmp_path, change, message):
    cfg = gen_config(tmp_path, sites=change.get("sites", SITES), corpus=pairs(tmp_path) if "target_field" in change
                     else None)
    cfg.corpus.mode = change.get("mode", "document")
    cfg.corpus.target_field = change.get("target_field")
    with pytest.raises(EmbwalkError) as err:
        extract_local(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()


def test_the_command_line_generates_a_decoder_store(tmp_path):
    cfg = gen_config(tmp_path)
    store = tmp_path / "cli-store"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.generate", f"model.name={cfg.model.name}", "model.device=cpu", "corpus=files",
         f"corpus.path={cfg.corpus.path}", "corpus.txt_unit=line", "corpus.mode=document",
         "capture.sites=[dec.resid_post,dec.final]", f"decode.max_new_tokens={N}", f"store={store}",
         "cluster.progress=false"],
        cwd=Path(__file__).resolve().parents[2], env=dict(os.environ, PYTHONUNBUFFERED="1"), capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert f"generated: {len(INPUTS)} prompts x 1 continuation(s) of {N} tokens (greedy)" in result.stdout
    tokens = Store(store).tokens().to_pandas()
    assert len(tokens) == len(INPUTS) * (1 + N) and tokens.generated.sum() == len(INPUTS) * N
