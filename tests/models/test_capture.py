"""Captured sites equal transformers' own hidden states and eager attentions."""

from __future__ import annotations

import copy

import pytest
import torch

from embwalk.models.capture import CaptureLayout, Capturer
from embwalk.models.sites import parse_sites
from tests.conftest import tiny_loaded

TOL = 1e-5


def _batch(vocab: int, padded: bool):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    if padded:  # right padding, as the extractor batches documents
        mask[1, 7:] = 0
        mask[2, 4:] = 0
    return ids, mask


def _reference(loaded, ids, mask):
    """Eager attention, transformers' own output_hidden_states/output_attentions."""
    model = copy.deepcopy(loaded.model)
    model.set_attn_implementation("eager")
    trunk = model.base_model
    attention = loaded.family.attention
    out = trunk(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=attention)
    hidden = list(out.hidden_states)
    if not attention:  # transformers' Mamba leaves the embeddings out of hidden_states
        hidden.insert(0, trunk.get_input_embeddings()(ids))
    # hidden_states[-1] is after the final norm; the pre-norm output of the last
    # block comes from the same model with its final norm replaced by identity.
    if loaded.family.final_norm:
        trunk.set_submodule(loaded.family.final_norm, torch.nn.Identity())
        pre_norm = trunk(input_ids=ids, attention_mask=mask).last_hidden_state
    else:
        pre_norm = out.last_hidden_state
    residual = hidden[: loaded.n_layers] + [pre_norm]
    return residual, out.last_hidden_state, out.attentions if attention else ()


@pytest.mark.parametrize("padded", [False, True])
def test_every_site_matches_transformers(tiny, padded):
    L = tiny.n_layers
    sites = parse_sites(["resid_pre.0", "resid_post", "final"] + ["attn_pattern"] * tiny.family.attention, L)
    ids, mask = _batch(tiny.config.vocab_size, padded)
    residual, final, attentions = _reference(tiny, ids, mask)
    cap = Capturer(tiny, CaptureLayout.from_sites(sites), torch.float32)
    got = cap.run(ids, mask if padded else None)
    valid = mask.bool()
    for i in range(L + 1):
        diff = (got["resid"][:, :, i] - residual[i])[valid].abs().max()
        assert diff < TOL, f"residual {i}: {diff}"
    assert (got["final"] - final)[valid].abs().max() < TOL
    for layer, ref in enumerate(attentions):
        for b in range(ids.shape[0]):
            n = int(valid[b].sum())  # padding query rows are never stored
            diff = (got["pattern"][b, layer, :, :n, :n] - ref[b, :, :n, :n]).abs().max()
            assert diff < TOL, f"pattern layer {layer} seq {b}: {diff}"
    cap.close()


def test_head_selection_and_layer_subset():
    loaded = tiny_loaded("llama")
    sites = parse_sites(["attn_pattern.1", "resid_post.0"], loaded.n_layers)
    ids, mask = _batch(128, False)
    _, _, attentions = _reference(loaded, ids, mask)
    cap = Capturer(loaded, CaptureLayout.from_sites(sites, heads=[3, 1]), torch.float32)
    got = cap.run(ids)
    assert got["pattern"].shape == (3, 1, 2, 11, 11)
    assert (got["pattern"][:, 0] - attentions[1][:, [3, 1]]).abs().max() < TOL
    cap.close()


def test_stops_after_last_needed_block():
    loaded = tiny_loaded("llama")
    sites = parse_sites(["resid_post.0"], loaded.n_layers)
    cap = Capturer(loaded, CaptureLayout.from_sites(sites), torch.float32)
    ran = []
    handles = [b.register_forward_pre_hook(lambda m, a, i=i: ran.append(i)) for i, b in enumerate(cap.blocks)]
    cap.run(torch.randint(0, 128, (1, 5)))
    assert ran == [0]
    for h in handles:
        h.remove()


@pytest.mark.parametrize("name", ["llama", "gpt2", "gpt_neox_sequential", "bert", "gemma2", "gemma3_text", "phi3",
                                  "qwen2_moe", "mixtral"])
def test_resid_mid_and_sublayer_outputs_sum_to_the_stream(name):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out (pre-LN, Gemma's post-normed
    sublayers, MoE blocks); for post-LN BERT, resid_mid is the attention block's output (LN of the sum)."""
    loaded = tiny_loaded(name)
    L = loaded.n_layers
    sites = parse_sites(["resid_pre", "resid_post", "resid_mid", "attn_out", "mlp_out"], L)
    cap = Capturer(loaded, CaptureLayout.from_sites(sites), torch.float32)
    ids = torch.randint(3, 128, (2, 9))
    got = cap.run(ids)
    res, mid = got["resid"], got["resid_mid"]
    for b in range(L):
        if name == "bert":
            layer = loaded.trunk.encoder.layer[b]
            expect_mid = layer.attention.output.LayerNorm(got["attn_out"][:, :, b] + res[:, :, b])
            expect_post = layer.output.LayerNorm(got["mlp_out"][:, :, b] + mid[:, :, b])
        else:
            expect_mid = res[:, :, b] + got["attn_out"][:, :, b]
            expect_post = mid[:, :, b] + got["mlp_out"][:, :, b]
        assert (mid[:, :, b] - expect_mid).abs().max() < 1e-5
        assert (res[:, :, b + 1] - expect_post).abs().max() < 1e-5
    cap.close()


def test_resid_mid_undefined_for_parallel_neox():
    from embwalk.errors import ModelError

    loaded = tiny_loaded("gpt_neox")
    sites = parse_sites(["resid_mid.0"], loaded.n_layers)
    with pytest.raises(ModelError, match="not defined"):
        Capturer(loaded, CaptureLayout.from_sites(sites), torch.float32)


def test_softcapped_layers_compute_as_eager_whichever_layers_and_heads_are_captured():
    """Gemma 2 soft-caps every layer's scores: the layers without a capture (no SDPA kernel caps)
    and a captured subset of heads must both be eager's, and the cap must matter here."""
    loaded = tiny_loaded("gemma2")
    ids, mask = _batch(128, True)
    residual, _, attentions = _reference(loaded, ids, mask)
    sites = parse_sites(["resid_post", "attn_pattern.1"], loaded.n_layers)
    cap = Capturer(loaded, CaptureLayout.from_sites(sites, heads=[3, 0]), torch.float32)
    got = cap.run(ids, mask)
    cap.close()
    valid = mask.bool()
    for i in range(1, loaded.n_layers + 1):
        assert (got["resid"][:, :, i - 1] - residual[i])[valid].abs().max() < TOL
    for b in range(ids.shape[0]):
        n = int(valid[b].sum())
        assert (got["pattern"][b, 0, :, :n, :n] - attentions[1][b, [3, 0], :n, :n]).abs().max() < TOL
    uncapped = copy.deepcopy(loaded)
    for layer in uncapped.trunk.layers:
        layer.self_attn.attn_logit_softcapping = None
    assert (_reference(uncapped, ids, mask)[2][1][0] - attentions[1][0]).abs().max() > 1e-2  # sequence 0: unpadded


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text"])
def test_sliding_window_layers_store_the_window_they_used(name):
    """Sliding layers see the last ``sliding_window`` keys only (window 4 < 11 tokens); full layers all."""
    loaded = tiny_loaded(name)
    window, types = loaded.config.sliding_window, loaded.config.layer_types
    assert "sliding_attention" in types and "full_attention" in types
    ids, _ = _batch(128, False)
    cap = Capturer(loaded, CaptureLayout.from_sites(parse_sites(["attn_pattern"], loaded.n_layers)), torch.float32)
    pattern = cap.run(ids)["pattern"]
    cap.close()
    q, k = torch.arange(11)[:, None], torch.arange(11)[None, :]
    for layer, kind in enumerate(types):
        visible = (k <= q) & ((k > q - window) if kind == "sliding_attention" else True)
        assert (pattern[:, layer][..., ~visible] == 0).all() and (pattern[:, layer][..., visible] > 0).all()


@pytest.mark.parametrize("name", ["gemma2", "gemma3_text"])
def test_a_decoding_step_stores_a_sliding_layers_window_at_its_keys(name):
    """With a KV cache (generation), a sliding layer attends over its cache's window only (4 of 9
    keys): the step's pattern row is still eager's over all 9, the keys outside the window 0."""
    loaded = tiny_loaded(name)
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(2))
    _, _, attentions = _reference(loaded, ids, torch.ones_like(ids))
    layout = CaptureLayout.from_sites(parse_sites(["attn_pattern"], 3))
    with Capturer(loaded, layout, torch.float32, run_to_end=True) as cap:
        with cap.writing_to({"pattern": torch.zeros(2, 3, 4, 8, 8)}):
            prefill = loaded.model(input_ids=ids[:, :8], use_cache=True)
        step = {"pattern": torch.zeros(2, 3, 4, 1, 9)}
        with cap.writing_to(step):
            loaded.model(input_ids=ids[:, 8:], cache=prefill.cache, use_cache=True)
    for layer in range(3):
        assert (step["pattern"][:, layer] - attentions[layer][:, :, 8:]).abs().max() < TOL


def test_gemma_resid_pre_0_is_the_scaled_embedding():
    loaded = tiny_loaded("gemma2")
    ids = torch.randint(3, 128, (2, 5))
    cap = Capturer(loaded, CaptureLayout.from_sites(parse_sites(["resid_pre.0"], 3)), torch.float32)
    got = cap.run(ids)["resid"][:, :, 0]
    cap.close()
    expected = loaded.trunk.embed_tokens.weight[ids] * loaded.d_model**0.5
    assert (got - expected).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["mamba", "mamba2"])
@pytest.mark.parametrize("site", ["resid_mid.0", "attn_out.1", "mlp_out.0", "attn_pattern.0"])
def test_attention_free_sites_are_one_line_errors(name, site):
    from embwalk.errors import ModelError

    loaded = tiny_loaded(name)
    assert loaded.n_heads is None and loaded.describe()["n_heads"] is None
    kind = site.split(".")[0]
    with pytest.raises(ModelError, match=rf"'{kind}' is not defined for mamba models \(attention-free") as err:
        Capturer(loaded, CaptureLayout.from_sites(parse_sites([site], loaded.n_layers)), torch.float32)
    assert "\n" not in str(err.value)


def test_float16_capture_rounds_like_a_cast():
    loaded = tiny_loaded("gpt2")
    sites = parse_sites(["resid_post"], loaded.n_layers)
    ids = torch.randint(3, 128, (2, 6))
    layout = CaptureLayout.from_sites(sites)
    cap = Capturer(loaded, layout, torch.float32)
    full = cap.run(ids)["resid"].clone()
    cap.close()
    half = Capturer(loaded, layout, torch.float16).run(ids)["resid"]
    assert half.dtype == torch.float16
    assert torch.equal(half, full.half())
