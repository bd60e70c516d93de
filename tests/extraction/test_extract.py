"""End to end: corpus -> plan -> extract -> store, checked row by row against the model."""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from embwalk.corpus import CorpusConfig
from embwalk.errors import StoreError
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.store.config import StoreConfig
from embwalk.store.reader import Store
from tests.conftest import tiny_loaded

SENTENCES = [
    "The cat sat on the mat while the dog slept by the door.",
    "Transformers move each token through a sequence of residual updates.",
    "A short one.",
    "Interpretability researchers study how vectors walk through embedding space, layer by layer, "
    "and how attention mixes context into each position.",
    "Zarr stores chunked arrays; Parquet stores tables.",
    "Every corpus token must appear exactly once in the token table.",
    "Padding is never stored.",
]


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def _config(tmp_path, corpus_file, mode="pack", sites=None, seq_len=16, shard_tokens=40, dtype="float32"):
    return ExtractConfig(
        corpus=CorpusConfig(path=str(corpus_file), txt_unit="line", mode=mode, seq_len=seq_len),
        capture=CaptureConfig(sites=sites or ["resid_pre.0", "resid_post", "final", "attn_pattern"]),
        store=StoreConfig(path=str(tmp_path / "store"), dtype=dtype, shard_tokens=shard_tokens, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=3, progress=False),
    )


def _reference(loaded, token_ids):
    """The sequence alone through transformers with eager attention."""
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("eager")
    trunk = model.base_model
    ids = torch.tensor(token_ids, dtype=torch.long)[None]
    out = trunk(input_ids=ids, output_hidden_states=True, output_attentions=True)
    if loaded.family.final_norm:
        trunk.set_submodule(loaded.family.final_norm, torch.nn.Identity())
        last = trunk(input_ids=ids).last_hidden_state
    else:
        last = out.last_hidden_state
    resid = torch.stack(list(out.hidden_states[:-1]) + [last], dim=2)[0]  # [seq, layer, d]
    patterns = torch.stack(out.attentions, dim=1)[0]  # [layer, head, q, k]
    return resid.numpy(), out.last_hidden_state[0].numpy(), patterns.numpy()


def _check_store_against_model(store: Store, loaded, tol=1e-5):
    tokens = store.tokens().to_pandas()
    m = store.manifest
    assert len(tokens) == m["n_tokens"]
    assert tokens["row"].tolist() == list(range(m["n_tokens"]))
    resid, final, pattern = store.array("resid"), store.array("final"), store.array("pattern")
    assert resid.metadata.dimension_names == ("token", "layer", "d_model")
    for seq_id, rows in tokens.groupby("seq_id"):
        assert rows["pos"].tolist() == list(range(len(rows)))
        r = rows["row"].to_numpy()
        ref_resid, ref_final, ref_pattern = _reference(loaded, rows["token_id"].to_numpy())
        np.testing.assert_allclose(resid[r[0] : r[-1] + 1], ref_resid, atol=tol, rtol=0)
        np.testing.assert_allclose(final[r[0] : r[-1] + 1], ref_final, atol=tol, rtol=0)
        n = len(rows)
        got = pattern[seq_id]
        np.testing.assert_allclose(got[:, :, :n, :n], ref_pattern, atol=tol, rtol=0)
        assert not got[:, :, n:, :].any() and not got[:, :, :, n:].any()  # padding stays zero
    return tokens


def _shard_tables(store: Store) -> list[pa.Table]:
    """Each shard's token table as pyarrow reads its Parquet file, in shard order."""
    n_shards = len(store.manifest["shards"])
    return [pq.read_table(store.root / "tokens" / f"shard-{i:05d}.parquet") for i in range(n_shards)]


def test_pack_mode_round_trip(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    cfg = _config(tmp_path, corpus_file)
    manifest = extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    assert manifest["complete"] and len(store.committed) == len(manifest["shards"]) > 1
    tokens = _check_store_against_model(store, loaded)
    # Every corpus token exactly once, in order: docs joined by the separator token.
    expected, expected_doc_pos = [], []
    for text in SENTENCES:
        expected += smollm2.tokenizer(text, add_special_tokens=False)["input_ids"]
        expected.append(smollm2.tokenizer.eos_token_id)
        expected_doc_pos += range(len(expected) - len(expected_doc_pos))  # the separator included
    assert tokens["token_id"].tolist() == expected
    assert tokens["doc_id"].max() == len(SENTENCES) - 1
    assert tokens["token"].iloc[1] == smollm2.tokenizer.decode([expected[1]])
    assert tokens["doc_pos"].tolist() == expected_doc_pos
    # a document that runs over a sequence boundary keeps counting where pos restarts ...
    spans = tokens.groupby("doc_id")["seq_id"].nunique()
    doc = int(spans.idxmax())
    assert spans[doc] > 1
    rows = tokens[tokens.doc_id == doc]
    assert rows["doc_pos"].tolist() == list(range(len(rows))) and rows["pos"].tolist() != rows["doc_pos"].tolist()
    # ... and across a shard boundary, in the shard files themselves
    tables = _shard_tables(store)
    assert all(t.schema.field("doc_pos").type == pa.int32() for t in tables)
    assert tables[0].column_names[:5] == ["row", "doc_id", "seq_id", "pos", "doc_pos"]
    crossed = 0
    for before, after in zip(tables[:-1], tables[1:], strict=True):
        last, first = before.slice(before.num_rows - 1).to_pylist()[0], after.slice(0, 1).to_pylist()[0]
        if last["doc_id"] == first["doc_id"]:
            crossed += 1
            assert first["pos"] == 0 and first["doc_pos"] == last["doc_pos"] + 1 > 0
    assert crossed > 0


def test_document_mode_round_trip_stores_no_padding(tmp_path, corpus_file, minilm):
    loaded = tiny_loaded("bert", minilm.tokenizer)
    cfg = _config(tmp_path, corpus_file, mode="document", seq_len=24, shard_tokens=30)
    extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    tokens = _check_store_against_model(store, loaded)
    lengths = [len(minilm.tokenizer(t, truncation=True, max_length=24)["input_ids"]) for t in SENTENCES]
    assert store.manifest["n_tokens"] == sum(lengths)  # no padding rows
    assert tokens.groupby("doc_id").size().tolist() == lengths
    assert tokens["doc_pos"].tolist() == [p for n in lengths for p in range(n)]
    assert tokens["doc_pos"].tolist() == tokens["pos"].tolist()


def test_float16_store_equals_cast_of_the_model(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("gpt2", smollm2.tokenizer)
    cfg = _config(tmp_path, corpus_file, sites=["resid_post"], dtype="float16")
    extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    assert store.array("resid").dtype == np.float16
    tokens = store.tokens().to_pandas()
    rows = tokens[tokens.seq_id == 1]
    ref, _, _ = _reference(loaded, rows["token_id"].to_numpy())
    got = store.array("resid")[rows.row.min() : rows.row.max() + 1].astype(np.float32)
    np.testing.assert_allclose(got, ref[:, 1:].astype(np.float16).astype(np.float32), atol=1e-3, rtol=1e-3)


def test_rerun_resumes_and_rewrites_only_uncommitted_shards(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    cfg = _config(tmp_path, corpus_file)
    extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    before = store.array("resid")[:]
    commits = sorted((tmp_path / "store" / "commits").iterdir())
    # Simulate a run killed after writing shard 1's data but before its commit.
    commits[1].unlink()
    store.array("resid").store  # noqa: B018 - opened read-only; damage through a writable handle:
    import zarr

    arr = zarr.open_array(tmp_path / "store" / "activations.zarr" / "resid", mode="r+")
    rows = store.manifest["shards"][1]["rows"]
    arr[rows[0] : rows[1]] = 0
    stamps = {p.name: p.stat().st_mtime_ns for p in commits if p.exists()}
    manifest = extract_local(cfg, loaded)
    assert manifest["run_tokens"] == rows[1] - rows[0]
    assert {p.name: p.stat().st_mtime_ns for p in commits if p.name in stamps} == stamps
    np.testing.assert_array_equal(Store(cfg.store.path).array("resid")[:], before)


def test_resume_against_a_different_job_is_an_error(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    extract_local(_config(tmp_path, corpus_file), loaded)
    with pytest.raises(StoreError, match="different job.*capture.sites"):
        extract_local(_config(tmp_path, corpus_file, sites=["resid_post.0"]), loaded)
    other = tiny_loaded("gpt2", smollm2.tokenizer)
    with pytest.raises(StoreError, match="weights_fingerprint"):
        extract_local(_config(tmp_path, corpus_file), other)


def test_float16_overflow_is_an_error_and_commits_nothing(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    with torch.no_grad():
        loaded.model.model.embed_tokens.weight.mul_(1e9)  # far past float16's 65504
    cfg = _config(tmp_path, corpus_file, sites=["resid_pre.0"], dtype="float16")
    with pytest.raises(StoreError, match="overflow: resid"):
        extract_local(cfg, loaded)
    assert not os.listdir(tmp_path / "store" / "commits")


def test_manifest_describes_the_store(tmp_path, corpus_file, smollm2):
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    cfg = _config(tmp_path, corpus_file)
    extract_local(cfg, loaded)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert manifest["arrays"]["resid"]["layers"] == list(range(loaded.n_layers + 1))
    assert manifest["arrays"]["pattern"]["heads"] == list(range(loaded.n_heads))
    from embwalk.store.commits import read_manifest

    shards = read_manifest(tmp_path / "store")["shards"]  # pack mode: derived, not listed in the file
    assert "shards" not in manifest and manifest["plan"] == {"n_shards": len(shards), "file": None}
    assert len(shards) > 1 and manifest["complete"] and manifest["n_committed"] == len(shards)
    assert [s["rows"][0] for s in shards[1:]] == [s["rows"][1] for s in shards[:-1]]
    assert shards[0]["rows"][0] == 0 and shards[-1]["rows"][1] == manifest["n_tokens"]
    assert manifest["versions"]["zarr"]


def test_compressed_store_holds_the_same_values(tmp_path, corpus_file, smollm2):
    """zstd goes through zarr's own writer, the default through direct shard files."""
    loaded = tiny_loaded("llama", smollm2.tokenizer)
    plain = _config(tmp_path / "a", corpus_file, sites=["resid_pre.0", "resid_post", "final"])
    packed = _config(tmp_path / "b", corpus_file, sites=["resid_pre.0", "resid_post", "final"])
    packed.store.compressor = "zstd"
    extract_local(plain, loaded)
    extract_local(packed, loaded)
    for name in ("resid", "final"):
        np.testing.assert_array_equal(Store(plain.store.path).array(name)[:], Store(packed.store.path).array(name)[:])


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
def test_attention_free_models_extract_end_to_end(tmp_path, corpus_file, smollm2, name):
    """Mamba: residual sites and final only, stored as transformers computes them (statistics in
    the pass too); the two-step statistics list the attention family as not applicable."""
    from embwalk.stats.config import StatsOptions
    from embwalk.stats.job import compute_store_stats

    loaded = tiny_loaded(name, smollm2.tokenizer)
    cfg = _config(tmp_path, corpus_file, sites=["resid_pre.0", "resid_post", "final"])
    cfg.capture = CaptureConfig(sites=cfg.capture.sites, stats={"self_sim_top_k": 4})
    manifest = extract_local(cfg, loaded)
    assert manifest["complete"] and manifest["model"]["n_heads"] is None and manifest["model"]["family"] == "mamba"
    store = Store(cfg.store.path)
    resid, final = store.array("resid"), store.array("final")
    for _, rows in store.tokens().to_pandas().groupby("seq_id"):
        r = rows["row"].to_numpy()
        ids = torch.tensor(rows["token_id"].to_numpy())[None]
        out = loaded.trunk(input_ids=ids, output_hidden_states=True, use_cache=False)
        # transformers' Mamba hidden_states: every block's output, then the final norm's
        ref = torch.stack([loaded.model.get_input_embeddings()(ids), *out.hidden_states[:-1]], dim=2)[0]
        np.testing.assert_allclose(resid[r[0] : r[-1] + 1], ref.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(final[r[0] : r[-1] + 1], out.last_hidden_state[0].numpy(), atol=1e-5, rtol=0)
    one_process = ClusterConfig(workers=1, progress=False)
    summary = compute_store_stats(cfg.store.path, StatsOptions(self_sim_top_k=4), one_process, loaded=loaded)
    assert summary["skipped"] == {"attention": "does not apply: the model is attention-free"}
    assert {"encoding", "logit_lens", "decoding", "geometry"} <= set(summary["families"])


@pytest.mark.parametrize("sites, heads, fragment", [
    (["attn_pattern.1"], None, "'attn_pattern' is not defined for mamba models (attention-free"),
    (["mlp_out"], None, "'mlp_out' is not defined for mamba models (attention-free"),
    (["resid_post"], [0], "capture.heads is given, but the model is attention-free"),
])
def test_attention_free_sites_are_refused_before_any_work(tmp_path, corpus_file, smollm2, sites, heads, fragment):
    from embwalk.errors import EmbwalkError

    loaded = tiny_loaded("mamba", smollm2.tokenizer)
    cfg = _config(tmp_path, corpus_file, sites=sites)
    cfg.capture.heads = heads
    with pytest.raises(EmbwalkError) as err:
        extract_local(cfg, loaded)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "store").exists()
