"""Capture during generation against transformers: ``generate``'s tokens, a teacher-forced
forward pass's vectors and attention, and the warpers' probabilities; reruns and resumes."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from embwalk.corpus import CorpusConfig
from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig
from embwalk.generation.config import DecodeConfig
from embwalk.jobs.generate import GenerateConfig
from embwalk.store.config import StoreConfig
from embwalk.store.reader import Store
from tests.conftest import tiny_loaded

CAUSAL = ["llama", "mistral", "qwen2", "gpt2", "gpt_neox", "gpt_neox_sequential", "gemma2", "gemma3_text", "phi3",
          "qwen2_moe", "mixtral", "mamba", "mamba2"]
TEXT = ("The cat sat on the mat while the dog slept by the door. Transformers move each token through "
        "a sequence of residual updates. Interpretability researchers study how vectors walk through "
        "embedding space, layer by layer, and how a model picks its next token from them.\n") * 3
P, N = 8, 6


def config(tmp_path, name="store", *, sites=("resid_pre.0", "resid_post", "final"), batch=3, shard=64,
           **decode) -> GenerateConfig:
    corpus = tmp_path / "prompts.txt"
    corpus.write_text(TEXT)
    return GenerateConfig(
        corpus=CorpusConfig(path=str(corpus), txt_unit="file", seq_len=P, max_tokens=6 * P),
        capture=CaptureConfig(sites=list(sites)),
        store=StoreConfig(path=str(tmp_path / name), dtype="float32", shard_tokens=shard, chunk_tokens=2),
        cluster=ClusterConfig(batch_size=batch, progress=False),
        decode=DecodeConfig(max_new_tokens=N, **decode),
    )


def sequences(store: Store) -> dict[int, dict]:
    """Each continuation's rows: token ids, and the table's columns."""
    t = store.tokens().to_pandas()
    return {int(s): rows.reset_index(drop=True) for s, rows in t.groupby("seq_id")}


@pytest.fixture(scope="module")
def tokenizer(smollm2):
    return smollm2.tokenizer


def test_greedy_equals_generate_and_the_table_marks_every_row(tmp_path, tokenizer):
    loaded = tiny_loaded("llama", tokenizer)
    cfg = config(tmp_path, repetition_penalty=1.3)
    manifest = extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    assert manifest["generation"]["n_prompts"] == 6 and manifest["seq_len"] == P + N
    assert manifest["identity"]["decode"]["repetition_penalty"] == 1.3
    seqs = sequences(store)
    assert len(seqs) == 6
    for s, rows in seqs.items():
        ids = rows.token_id.to_numpy()
        want = loaded.model.generate(
            torch.tensor(ids[None, :P], dtype=torch.long),
            generation_config=GenerationConfig(do_sample=False, max_new_tokens=N, eos_token_id=None,
                                               pad_token_id=0, repetition_penalty=1.3),
        )[0].numpy()
        np.testing.assert_array_equal(ids, want, err_msg=f"continuation {s}")
        assert rows.prompt_id.tolist() == [s] * (P + N) and set(rows["sample"]) == {0}
        assert rows.generated.tolist() == [False] * P + [True] * N
        assert rows.step.isna()[:P].all() and rows.step[P:].tolist() == list(range(N))
        assert rows.prob[:P].isna().all() and rows.prob[P:].notna().all()


@pytest.mark.parametrize("family", CAUSAL)
def test_every_stored_vector_equals_a_teacher_forced_pass(tmp_path, tokenizer, family):
    """Vectors and attention rows of the prompt and of every generated token, from the KV-cached
    decoding, against one forward pass over prompt + continuation. One continuation per batch,
    as the reference: float32 products of other batch shapes round differently (~1e-5 on
    SmolLM2), which is not the cache's doing (docs/generation.md)."""
    loaded = tiny_loaded(family, tokenizer)
    attention = loaded.family.attention  # Mamba: no patterns, and its cache is a recurrent state
    sites = ("resid_pre.0", "resid_post", "final") + ("attn_pattern",) * attention
    cfg = config(tmp_path, sites=sites, strategy="sample", samples=2, temperature=1.5, batch=1)
    extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    resid, final = store.array("resid")[:], store.array("final")[:]
    pattern = store.array("pattern") if attention else None
    eager = tiny_loaded(family, tokenizer)
    if attention:
        eager.model.set_attn_implementation("eager")
    for s, rows in sequences(store).items():
        ids = torch.tensor(rows.token_id.to_numpy()[None], dtype=torch.long)
        with torch.no_grad():
            out = eager.model(ids, output_hidden_states=True, output_attentions=attention)
        hidden = list(out.hidden_states)
        if not attention:  # transformers' Mamba leaves the embeddings out of hidden_states
            hidden.insert(0, eager.model.get_input_embeddings()(ids))
        want = np.stack([h[0].numpy() for h in hidden], 1)  # [T, L+1, d] (Mamba: L+2, block L-1's own too)
        got = resid[rows.row.to_numpy()]
        # transformers' last hidden state is after the final norm: our resid's last layer is before it
        n = loaded.n_layers
        rel = np.linalg.norm(got[:, :n] - want[:, :n], axis=-1) / np.linalg.norm(want[:, :n], axis=-1)
        assert rel.max() < 1e-5, (family, s, rel.max())
        last = want[:, -1]
        rel_final = np.linalg.norm(final[rows.row.to_numpy()] - last, axis=-1) / np.linalg.norm(last, axis=-1)
        assert rel_final.max() < 1e-5, (family, s, rel_final.max())
        if attention:
            att = np.stack([a[0].numpy() for a in out.attentions], 0)  # [L, H, T, T]
            np.testing.assert_allclose(pattern[s], att, atol=1e-5, err_msg=f"{family} attention of {s}")


def test_sampling_is_seeded_per_continuation_and_its_probabilities_are_the_warpers(tmp_path, tokenizer):
    loaded = tiny_loaded("llama", tokenizer)
    opts = {"strategy": "sample", "samples": 3, "temperature": 0.8, "top_k": 40, "top_p": 0.9,
            "repetition_penalty": 1.2, "seed": 7}
    a = config(tmp_path, "a", batch=4, shard=P + N, **opts)
    b = config(tmp_path, "b", batch=1, **opts)
    extract_local(a, loaded)
    extract_local(b, loaded)
    ta, tb = Store(a.store.path).tokens(), Store(b.store.path).tokens()
    assert ta.equals(tb)  # other batches, other shards: the same draws
    other = config(tmp_path, "c", **{**opts, "seed": 8})
    extract_local(other, loaded)
    assert not Store(other.store.path).tokens().column("token_id").equals(ta.column("token_id"))
    seqs = sequences(Store(a.store.path))
    assert len({tuple(r.token_id) for r in seqs.values() if r.prompt_id[0] == 0}) > 1  # samples differ
    warp = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.8),
                                TopKLogitsWarper(40), TopPLogitsWarper(0.9)])
    for rows in seqs.values():
        ids = torch.tensor(rows.token_id.to_numpy()[None], dtype=torch.long)
        with torch.no_grad():
            logits = loaded.model(ids).logits[0].double()
        for t in range(N):
            pos = P + t  # the row of the token chosen at step t, from the logits at pos - 1
            z = logits[pos - 1]
            q = torch.softmax(warp(ids[:, :pos], z[None].clone().float()).double(), -1)[0]
            p = torch.softmax(z, -1)
            chosen = int(ids[0, pos])
            row = rows.iloc[pos]
            assert q[chosen] > 0  # drawn from inside the warped support
            np.testing.assert_allclose(row.sample_prob, q[chosen].item(), rtol=1e-4)
            np.testing.assert_allclose(row.prob, p[chosen].item(), rtol=1e-4)
            assert row["rank"] == int((z > z[chosen]).sum())
            np.testing.assert_allclose(row.entropy, -(p * p.log()).sum().item(), rtol=1e-4)
            assert list(row.top_ids) == torch.topk(p, len(row.top_ids)).indices.tolist()
        lp = np.log(rows.prob[P:].to_numpy(np.float64))
        np.testing.assert_allclose(rows.path_logprob[P:], np.cumsum(lp), rtol=1e-5)


def test_a_killed_run_resumes_to_an_identical_store(tmp_path, tokenizer):
    loaded = tiny_loaded("gpt2", tokenizer)
    cfg = config(tmp_path, shard=P + N, strategy="sample", samples=2, seed=3)
    extract_local(cfg, loaded)
    root = tmp_path / "store"
    before = Store(root).tokens()
    resid = Store(root).array("resid")[:]
    # a run killed after shard 2's arrays, before its commit: no commit record, no token table
    (root / "commits" / "shard-00002.json").unlink()
    (root / "tokens" / "shard-00002.parquet").unlink()
    manifest = extract_local(cfg, loaded)
    assert manifest["run_tokens"] == P + N
    after = Store(root)
    assert after.tokens().equals(before)
    np.testing.assert_array_equal(after.array("resid")[:], resid)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_beam_search_equals_generate_and_each_beam_keeps_its_own_vectors(tmp_path, tokenizer, family):
    """The best beams, token for token as generate(num_beams=K) returns them, and every stored vector
    that of the beam's own path (the cache and the captured rows follow each beam's parent)."""
    loaded = tiny_loaded(family, tokenizer)
    cfg = config(tmp_path, strategy="beam", num_beams=4, samples=3, repetition_penalty=1.2, batch=2)
    extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    resid = store.array("resid")[:]
    seqs = sequences(store)
    for prompt in range(6):
        beams = [seqs[prompt * 3 + k] for k in range(3)]
        out = loaded.model.generate(
            torch.tensor(beams[0].token_id.to_numpy()[None, :P], dtype=torch.long),
            generation_config=GenerationConfig(do_sample=False, num_beams=4, num_return_sequences=3,
                                               max_new_tokens=N, eos_token_id=None, pad_token_id=0,
                                               repetition_penalty=1.2, early_stopping=False,
                                               return_dict_in_generate=True, output_scores=True),
        )
        got = np.stack([b.token_id.to_numpy() for b in beams])
        np.testing.assert_array_equal(got, out.sequences.numpy(), err_msg=f"prompt {prompt}")
        # generate's beam_indices[t]: the beam the token of step t extends, i.e. our path's rank
        # after step t - 1 (beams are kept best first); after the last step the rank is the sample
        ranks = np.stack([b.beam[P:].to_numpy() for b in beams])
        np.testing.assert_array_equal(ranks[:, :-1], out.beam_indices.numpy()[:, 1:N] % 4)
        assert ranks[:, -1].tolist() == [0, 1, 2]
        for rows in beams:
            ids = torch.tensor(rows.token_id.to_numpy()[None], dtype=torch.long)
            with torch.no_grad():
                out = loaded.model(ids, output_hidden_states=True)
            ref = np.stack([h[0].numpy() for h in out.hidden_states], 1)[:, :-1]
            have = resid[rows.row.to_numpy()][:, :-1]
            rel = np.linalg.norm(have - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
            assert rel.max() < 1e-5, (family, prompt, rel.max())
            lp = np.log(rows.prob[P:].to_numpy(np.float64))
            np.testing.assert_allclose(rows.path_logprob[P:], np.cumsum(lp), rtol=1e-5)
        totals = [float(np.log(b.sample_prob[P:].to_numpy(np.float64)).sum()) for b in beams]
        assert totals == sorted(totals, reverse=True)  # best beam first: the beam scores, in order


@pytest.mark.parametrize("decode, message", [
    ({"strategy": "beam", "num_beams": 2, "samples": 3}, "is more than decode.num_beams=2 beams"),
    ({"top_p": 0.0}, "decode.top_p=0.0 must be in (0, 1]"),
    ({"temperature": 0.7}, "set decode.strategy=sample"),
    ({"samples": 2}, "with greedy decoding"),
])
def test_bad_decode_options_are_one_line_errors(tmp_path, tokenizer, decode, message):
    with pytest.raises(EmbwalkError) as info:
        extract_local(config(tmp_path, **decode), tiny_loaded("llama", tokenizer))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "store").exists()


def test_the_token_table_reads_back_with_nulls_on_prompt_rows(tmp_path, tokenizer):
    cfg = config(tmp_path, strategy="sample", samples=2)
    extract_local(cfg, tiny_loaded("qwen2", tokenizer))
    table = Store(cfg.store.path).tokens()
    assert table.schema.field("top_ids").type == pa.list_(pa.int32(), 8)
    generated = table.column("generated").to_numpy(zero_copy_only=False)
    for name in ("step", "prob", "rank", "entropy", "sample_prob", "path_logprob", "top_ids", "top_probs"):
        nulls = table.column(name).is_null().to_numpy(zero_copy_only=False)
        assert (nulls == ~generated).all(), name
    assert table.column("beam").null_count == len(table)  # beam search only


def test_smollm2_greedy_equals_generate_and_its_vectors_a_teacher_forced_pass(tmp_path, smollm2):
    """On the real model (massive activations of norm ~24,000 at position 0 included); one
    continuation per batch, as the reference (the family test's docstring)."""
    cfg = config(tmp_path, sites=("resid_pre.0", "resid_post", "final"), batch=1)
    cfg.decode.max_prompts = 2
    extract_local(cfg, smollm2)
    store = Store(cfg.store.path)
    resid, final = store.array("resid")[:], store.array("final")[:]
    for s, rows in sequences(store).items():
        ids = rows.token_id.to_numpy()
        prompt = torch.tensor(ids[None, :P], dtype=torch.long)
        with torch.no_grad():
            want_ids = smollm2.model.generate(
                prompt, generation_config=GenerationConfig(do_sample=False, max_new_tokens=N, eos_token_id=None,
                                                           pad_token_id=0))[0].numpy()
            out = smollm2.model(torch.tensor(ids[None], dtype=torch.long), output_hidden_states=True)
        np.testing.assert_array_equal(ids, want_ids, err_msg=f"continuation {s}")
        want = np.stack([h[0].numpy() for h in out.hidden_states], 1)
        got = resid[rows.row.to_numpy()]
        rel = np.linalg.norm(got[:, :-1] - want[:, :-1], axis=-1) / np.linalg.norm(want[:, :-1], axis=-1)
        assert rel.max() < 1e-5, (s, rel.max())
        last = want[:, -1]
        rel_final = np.linalg.norm(final[rows.row.to_numpy()] - last, axis=-1) / np.linalg.norm(last, axis=-1)
        assert rel_final.max() < 1e-5, (s, rel_final.max())


def test_smollm2_beam_search_equals_generate(tmp_path, smollm2):
    cfg = config(tmp_path, strategy="beam", num_beams=3, samples=2)
    cfg.decode.max_prompts = 2
    extract_local(cfg, smollm2)
    seqs = sequences(Store(cfg.store.path))
    for prompt in range(2):
        got = np.stack([seqs[prompt * 2 + k].token_id.to_numpy() for k in range(2)])
        with torch.no_grad():
            want = smollm2.model.generate(
                torch.tensor(got[:1, :P], dtype=torch.long),
                generation_config=GenerationConfig(do_sample=False, num_beams=3, num_return_sequences=2,
                                                   max_new_tokens=N, eos_token_id=None, pad_token_id=0,
                                                   early_stopping=False),
            ).numpy()
        np.testing.assert_array_equal(got, want, err_msg=f"prompt {prompt}")
