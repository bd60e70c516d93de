"""T5-family encoders through the ordinary capture: loaded by path as the encoder alone, every site
equal to transformers' hidden states and eager attentions (position bias included)."""

from __future__ import annotations

import pytest
import torch

from embwalk.models.capture import CaptureLayout, Capturer
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.models.sites import parse_sites
from embwalk.models.spec import load_spec
from tests.models.t5_checkpoints import T5_NAMES, save_t5
from tests.models.test_capture import _batch, _reference

TOL = 1e-5


@pytest.fixture(scope="module", params=T5_NAMES)
def t5(request, tmp_path_factory):
    path = save_t5(tmp_path_factory.mktemp("t5"), request.param)
    return load_model(ModelConfig(name=str(path), device="cpu"))


def test_loads_the_encoder_alone_and_describes_it_as_its_spec(t5):
    model = t5.model
    assert type(model).__name__.endswith("EncoderModel") and not hasattr(model, "decoder")
    assert t5.family.name == "t5" and not t5.family.causal and t5.trunk is model
    assert (t5.n_layers, t5.n_heads, t5.d_model, t5.max_positions) == (2, 4, 32, None)  # the encoder's depth
    assert load_spec(ModelConfig(name=t5.model_id, device="cpu")).describe() == t5.describe()
    assert t5.model.get_output_embeddings() is None  # no LM head: the statistics treat it as BERT


@pytest.mark.parametrize("padded", [False, True])
def test_every_site_matches_transformers(t5, padded):
    """Residuals, final (after encoder.final_layer_norm) and patterns against transformers' eager
    encoder; resid_mid and the sublayer outputs add up to the stream."""
    L = t5.n_layers
    sites = parse_sites(["resid_pre", "resid_post", "resid_mid", "attn_out", "mlp_out", "final", "attn_pattern"], L)
    ids, mask = _batch(t5.config.vocab_size, padded)
    residual, final, attentions = _reference(t5, ids, mask)
    with Capturer(t5, CaptureLayout.from_sites(sites), torch.float32) as cap:
        got = cap.run(ids, mask if padded else None)
    valid = mask.bool()
    res, mid = got["resid"], got["resid_mid"]
    for i in range(L + 1):
        assert (res[:, :, i] - residual[i])[valid].abs().max() < TOL, f"residual {i}"
    assert (got["final"] - final)[valid].abs().max() < TOL
    for b in range(L):
        assert (mid[:, :, b] - (res[:, :, b] + got["attn_out"][:, :, b])).abs().max() < TOL
        assert (res[:, :, b + 1] - (mid[:, :, b] + got["mlp_out"][:, :, b])).abs().max() < TOL
    for layer, ref in enumerate(attentions):
        for b in range(ids.shape[0]):
            n = int(valid[b].sum())  # padding query rows are never stored
            assert (got["pattern"][b, layer, :, :n, :n] - ref[b, :, :n, :n]).abs().max() < TOL, f"pattern {layer}"
            assert not got["pattern"][b, layer, :, :n, n:].any()  # padding keys get nothing


def test_the_pattern_holds_the_position_bias(t5):
    """The check above would catch a pattern without the bias: here it moves the weights a lot."""
    ids, _ = _batch(t5.config.vocab_size, False)
    with Capturer(t5, CaptureLayout.from_sites(parse_sites(["attn_pattern.0"], 2)), torch.float32) as cap:
        got = cap.run(ids)["pattern"][:, 0]
    attn = t5.model.encoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        x = t5.model.encoder.block[0].layer[0].layer_norm(t5.model.shared(ids))
        q, k = (proj(x).view(3, 11, 4, 8).transpose(1, 2) for proj in (attn.q, attn.k))
        unbiased = torch.softmax(q @ k.transpose(2, 3), dim=-1)
    assert (got - unbiased).abs().max() > 0.1


def test_a_subset_of_heads_keeps_every_output(t5):
    """Two heads stored: their patterns are eager's, and the stream is the same as with none."""
    ids, mask = _batch(t5.config.vocab_size, True)
    residual, _, attentions = _reference(t5, ids, mask)
    sites = parse_sites(["attn_pattern.1", "resid_post.1"], 2)
    with Capturer(t5, CaptureLayout.from_sites(sites, heads=[3, 1]), torch.float32) as cap:
        got = cap.run(ids, mask)
    valid = mask.bool()
    assert got["pattern"].shape == (3, 1, 2, 11, 11)
    for b in range(3):
        n = int(valid[b].sum())
        assert (got["pattern"][b, 0, :, :n, :n] - attentions[1][b, [3, 1], :n, :n]).abs().max() < TOL
    assert (got["resid"][:, :, 0] - residual[2])[valid].abs().max() < TOL
