"""A mixture-of-experts router's choices as a site: ``router_logits.L`` [token, expert] equals the
logits transformers records (``output_router_logits``), and their top num_experts_per_tok are the
experts each token went to; a dense model or block has no router (one line, before any work)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from embwalk.errors import ModelError
from embwalk.executors.local import extract_local
from embwalk.query import open_store
from embwalk.query.errors import QueryError
from embwalk.store.reader import Store
from tests.conftest import TINY_CONFIGS, tiny_loaded
from tests.extraction.test_extract import _config
from tests.stats.stores import corpus_file


@pytest.mark.parametrize("name", ["mixtral", "qwen2_moe"])
def test_router_logits_are_the_routers_and_pick_the_experts_used(tmp_path, smollm2, name):
    loaded = tiny_loaded(name, smollm2.tokenizer)
    # document mode: padded batches of several lengths; float32 so the values compare closely
    cfg = _config(tmp_path, corpus_file(tmp_path), mode="document", seq_len=24, shard_tokens=32,
                  sites=["resid_post", "router_logits", "mlp_out.1"])
    manifest = extract_local(cfg, loaded)
    spec = manifest["arrays"]["router_logits"]
    assert spec["dims"] == ["token", "router_logits_layer", "expert"] and spec["shape"][1:] == [2, 4]
    store = Store(cfg.store.path)
    tokens = store.tokens().to_pandas()
    logits = store.array("router_logits")[:]
    top_k = loaded.config.num_experts_per_tok
    for _, rows in tokens.groupby("seq_id"):
        ids = torch.tensor(rows["token_id"].to_numpy())[None]
        with torch.no_grad():
            ref = loaded.model(input_ids=ids, output_router_logits=True)
        r = rows["row"].to_numpy()
        for layer, want in enumerate(ref.router_logits):  # [seq, experts] per layer
            np.testing.assert_allclose(logits[r, layer], want.numpy(), rtol=0, atol=1e-5)
            chosen = np.sort(np.argsort(-logits[r, layer], axis=-1)[:, :top_k], axis=-1)
            np.testing.assert_array_equal(chosen, np.sort(torch.topk(want, top_k).indices.numpy(), axis=-1))
    q = open_store(cfg.store.path)
    got = q.vectors(q.select(seq=0), "router_logits.1")
    assert got.shape == (int((tokens.seq_id == 0).sum()), 4)
    acts = xr.open_zarr(store.root / "activations.zarr")
    assert acts.router_logits.sel(router_logits_layer=1).dims == ("token", "expert")


def test_router_logits_of_a_dense_model_or_block_are_one_line_errors(tmp_path, smollm2, monkeypatch):
    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", "router_logits.0"])
    with pytest.raises(ModelError, match="mixture-of-experts models only") as err:
        extract_local(cfg, tiny_loaded("llama", smollm2.tokenizer))
    assert "\n" not in str(err.value) and not (tmp_path / "store").exists()
    # Qwen2-MoE with a router every other block: block 0's MLP is dense
    base = TINY_CONFIGS["qwen2_moe"]

    def every_other():
        config = base()
        config.decoder_sparse_step = 2
        return config

    monkeypatch.setitem(TINY_CONFIGS, "qwen2_moe", every_other)
    loaded = tiny_loaded("qwen2_moe", smollm2.tokenizer)
    with pytest.raises(ModelError, match=r"block 0 .* dense MLP, no router \(routed blocks: \[1\]\)"):
        extract_local(cfg, loaded)
    assert not (tmp_path / "store").exists()
    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", "router_logits.1"])
    manifest = extract_local(cfg, loaded)
    assert manifest["arrays"]["router_logits"]["layers"] == [1]


def test_router_logits_beside_vectors_are_read_and_exported_apart(tmp_path, smollm2):
    from safetensors.numpy import load_file

    cfg = _config(tmp_path, corpus_file(tmp_path), sites=["resid_post.0", "router_logits.0"])
    extract_local(cfg, tiny_loaded("mixtral", smollm2.tokenizer))
    q = open_store(cfg.store.path)
    with pytest.raises(QueryError, match="router_logits.0 is 4 wide") as err:
        q.vectors([0, 1], ["resid_post.0", "router_logits.0"])
    assert "\n" not in str(err.value)
    sel = q.select(seq=0)
    want = q.vectors(sel, "router_logits.0")
    np.testing.assert_array_equal(np.load(sel.export(tmp_path / "r.npy", "router_logits.0")), want)
    both = load_file(sel.export(tmp_path / "r.safetensors", ["resid_post.0", "router_logits.0"]))
    assert both["router_logits.0"].shape == want.shape and both["resid_post.0"].shape == (len(want), 32)
    np.testing.assert_array_equal(both["router_logits.0"], want)
    with pytest.raises(QueryError, match="as one .npy: their vectors are"):
        sel.export(tmp_path / "both.npy", ["resid_post.0", "router_logits.0"])
    assert not list(tmp_path.glob("*both*"))


def test_router_logits_while_generating_are_a_teacher_forced_passs(tmp_path, smollm2):
    from tests.generation.test_generate import config, sequences

    loaded = tiny_loaded("mixtral", smollm2.tokenizer)
    cfg = config(tmp_path, sites=("resid_post.1", "router_logits"), batch=1)  # KV-cached steps of one token
    extract_local(cfg, loaded)
    store = Store(cfg.store.path)
    logits = store.array("router_logits")[:]
    for _, rows in sequences(store).items():
        with torch.no_grad():
            ref = loaded.model(torch.tensor(rows.token_id.to_numpy()[None]), output_router_logits=True)
        for layer, want in enumerate(ref.router_logits):
            np.testing.assert_allclose(logits[rows.row.to_numpy(), layer], want.numpy(), rtol=0, atol=1e-5)
