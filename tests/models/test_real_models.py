"""The two real models: captured sites equal transformers' own outputs on real sentences."""

from __future__ import annotations

import copy

import pytest
import torch

from embwalk.models.capture import CaptureLayout, Capturer
from embwalk.models.sites import parse_sites

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Attention weighs context by similarity and position.",
    "Short.",
]


def _batch(tokenizer):
    enc = tokenizer(SENTENCES, padding=True, return_tensors="pt")  # right padding
    return enc["input_ids"], enc["attention_mask"]


@pytest.mark.parametrize("name", ["smollm2", "minilm"])
def test_real_model_sites_match_transformers(name, request):
    loaded = request.getfixturevalue(name)
    ids, mask = _batch(loaded.tokenizer)
    L = loaded.n_layers
    valid = mask.bool()
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    with torch.inference_mode():
        # With every head's pattern captured, each layer's attention output is
        # computed from those probabilities (probs @ v), as eager attention does:
        # residuals and patterns are checked against the eager model.
        ref = eager.base_model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        ref_attn = ref.attentions
    sites = parse_sites(["resid_pre.0", "resid_post", "final", "attn_pattern"], L)
    cap = Capturer(loaded, CaptureLayout.from_sites(sites), torch.float32)
    try:
        got = cap.run(ids, mask)
        # hidden_states[i] = resid_pre.i for i < L; hidden_states[L] is after the final norm.
        for i in range(L):
            diff = (got["resid"][:, :, i] - ref.hidden_states[i])[valid].abs().max()
            assert diff < 1e-5, f"{name} residual {i}: {diff}"
        assert (got["final"] - ref.last_hidden_state)[valid].abs().max() < 1e-5
        for layer in range(L):
            for b in range(len(SENTENCES)):
                n = int(valid[b].sum())
                diff = (got["pattern"][b, layer, :, :n, :n] - ref_attn[layer][b, :, :n, :n]).abs().max()
                assert diff < 1e-5, f"{name} pattern layer {layer} seq {b}: {diff}"
    finally:
        cap.close()
    if loaded.family.final_norm:  # the last block's output, normed, is final
        norm = loaded.trunk.get_submodule(loaded.family.final_norm)
        normed = norm(got["resid"][:, :, L])
        assert (normed - ref.last_hidden_state)[valid].abs().max() < 1e-4


@pytest.mark.parametrize("name", ["smollm2", "minilm"])
def test_real_model_residuals_without_patterns_match_sdpa(name, request):
    """Without a pattern capture every layer runs the model's own SDPA: residuals equal the model as loaded."""
    loaded = request.getfixturevalue(name)
    ids, mask = _batch(loaded.tokenizer)
    valid = mask.bool()
    with torch.inference_mode():
        ref = loaded.trunk(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    sites = parse_sites(["resid_pre.0", "resid_post", "final"], loaded.n_layers)
    with Capturer(loaded, CaptureLayout.from_sites(sites), torch.float32) as cap:
        got = cap.run(ids, mask)
        for i in range(loaded.n_layers):
            assert (got["resid"][:, :, i] - ref.hidden_states[i])[valid].abs().max() < 1e-5
        assert (got["final"] - ref.last_hidden_state)[valid].abs().max() < 1e-5
