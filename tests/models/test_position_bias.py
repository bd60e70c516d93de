"""Position-bias decomposition: the kernel is the model's compute_bias, content + bias is the score it softmaxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embwalk.models.position_bias import BiasShareStats, bias_module, kernel_offsets, position_kernel
from embwalk.models.seq2seq import Seq2SeqCapturer
from tests.models.test_seq2seq import DEC_LEN, TINY, batch, capture, reference, tiny_seq2seq

ALL_TERMS = ["enc.attn_content", "enc.attn_bias", "enc.attn_score", "enc.attn_pattern",
             "dec.attn_content", "dec.attn_bias", "dec.attn_score", "dec.attn_pattern",
             "dec.cross_content", "dec.cross_score", "dec.cross_pattern"]


@pytest.fixture(scope="module", params=list(TINY))
def model(request):
    return tiny_seq2seq(request.param)


@pytest.mark.parametrize("stack", ["enc", "dec"])
def test_kernel_is_compute_bias_at_every_offset(model, stack):
    n = 40  # past max_distance (16): the saturated buckets are covered
    for layer in range(len(getattr(model, {"enc": "encoder", "dec": "decoder"}[stack]).block)):
        kernel = position_kernel(model, stack, layer, max_len=n)
        assert kernel.shape == (4, 2 * n - 1) and len(kernel_offsets(n)) == 2 * n - 1
        with torch.no_grad():
            full = bias_module(model, stack, layer).compute_bias(n, n)[0].numpy()  # [heads, query, key]
        q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        np.testing.assert_array_equal(kernel[:, k - q + n - 1], full)
        # the default range (±max_distance) already holds every distinct value
        short = position_kernel(model, stack, layer)
        np.testing.assert_array_equal(short, kernel[:, n - 17 : n + 16])
        assert (kernel[:, :n - 16] == kernel[:, [0]]).all() and (kernel[:, n + 15:] == kernel[:, [-1]]).all()
        if stack == "dec":  # unidirectional buckets: every future offset shares offset 0's bias (masked anyway)
            assert (kernel[:, n:] == kernel[:, [n - 1]]).all()
        else:  # bidirectional: left and right differ
            assert not np.array_equal(kernel[:, n - 2], kernel[:, n])


def test_which_layer_owns_the_bias():
    t5, umt5 = tiny_seq2seq("t5"), tiny_seq2seq("umt5")
    # T5: block 0 learns it and every later block reuses it
    np.testing.assert_array_equal(position_kernel(t5, "dec"), position_kernel(t5, "dec", layer=2))
    assert bias_module(t5, "enc", 1) is t5.encoder.block[0].layer[0].SelfAttention
    assert not np.array_equal(position_kernel(t5, "enc"), position_kernel(t5, "dec"))
    # UMT5: one per layer, so a layer must be named
    assert not np.array_equal(position_kernel(umt5, "enc", 0), position_kernel(umt5, "enc", 1))
    with pytest.raises(ValueError, match="every layer"):
        position_kernel(umt5, "enc")
    with pytest.raises(ValueError, match="cross-attention has none"):
        position_kernel(t5, "cross")
    with pytest.raises(ValueError, match="depth"):
        position_kernel(t5, "enc", layer=2)


@pytest.mark.parametrize("padded", [False, True])
def test_content_plus_bias_is_the_score_the_model_softmaxes(model, padded):
    ids, mask, dids, dmask = data = batch(padded)
    got, want = capture(model, ALL_TERMS, *data), reference(model, *data)
    # q and k recomputed from each attention's normed input, independently of the attention function
    normed: dict[str, torch.Tensor] = {}
    hooks = [blk.layer[i].layer_norm.register_forward_hook(
        lambda m, a, out, key=f"{s}.{'cross' if i else 'attn'}.{b}": normed.__setitem__(key, out))
        for s, stack in (("enc", model.encoder), ("dec", model.decoder)) for b, blk in enumerate(stack.block)
        for i in ((0, 1) if s == "dec" else (0,))]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, decoder_input_ids=dids, decoder_attention_mask=dmask)
    for h in hooks:
        h.remove()
    split = lambda x: x.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
    causal = torch.ones(DEC_LEN, DEC_LEN, dtype=torch.bool).tril()
    visible = {"enc": mask.bool()[:, None, None, :].expand(-1, 1, ids.shape[1], -1),
               "dec": dmask.bool()[:, None, None, :] & causal, "cross": mask.bool()[:, None, None, :]}
    for stack, attn in (("enc", "attn"), ("dec", "attn"), ("dec", "cross")):
        for b in range(got[f"{stack}.{attn}_pattern"].shape[1]):
            block = (model.encoder if stack == "enc" else model.decoder).block[b]
            module = block.layer[0].SelfAttention if attn == "attn" else block.layer[1].EncDecAttention
            source = normed[f"{stack}.{attn}.{b}"] if attn == "attn" else want["enc.final"]
            with torch.no_grad():
                qk = split(module.q(normed[f"{stack}.{attn}.{b}"])) @ split(module.k(source)).transpose(2, 3)
            content, score = got[f"{stack}.{attn}_content"][:, b], got[f"{stack}.{attn}_score"][:, b]
            assert (content - qk).abs().max() < 1e-5 * qk.abs().max()  # no 1/sqrt(d_kv)
            seen = visible["cross" if attn == "cross" else stack].expand_as(score)
            if attn == "attn":
                n = score.shape[-1]
                with torch.no_grad():
                    bias = bias_module(model, stack, b).compute_bias(n, n)
                assert torch.equal(got[f"{stack}.attn_bias"][:, b], bias.expand_as(score))
            else:
                bias = torch.zeros_like(score)  # cross-attention: no position bias
            assert torch.equal(score[seen], (content + bias)[seen])
            assert torch.isneginf(score[~seen]).all()
            rows = (mask if stack == "enc" else dmask).bool()
            probs = torch.softmax(score, -1).nan_to_num(0.0)
            assert (probs - got[f"{stack}.{attn}_pattern"][:, b]).abs().amax(dim=(1, 3))[rows].max() < 1e-6
            eager = want[f"{stack}.{'cross' if attn == 'cross' else 'attn'}_pattern"][b]
            assert (probs - eager).abs().amax(dim=(1, 3))[rows].max() < 1e-6


def _direct(content: np.ndarray, bias: np.ndarray, valid: np.ndarray, within: bool) -> dict[str, np.ndarray]:
    """Per head, straight from the definitions, over valid pairs (float64)."""
    out = {k: [] for k in ("var_content", "var_bias", "cov")}
    for h in range(content.shape[1]):
        c, b, w = content[:, h].astype(np.float64), bias[:, h].astype(np.float64), valid
        if within:  # centre each query row on its own valid keys
            n = np.maximum(w.sum(-1, keepdims=True), 1)
            c, b = c - (c * w).sum(-1, keepdims=True) / n, b - (b * w).sum(-1, keepdims=True) / n
            cs, bs = c[w], b[w]
            out["var_content"].append((cs**2).mean()), out["var_bias"].append((bs**2).mean())
            out["cov"].append((cs * bs).mean())
        else:
            cs, bs = c[w], b[w]
            out["var_content"].append(cs.var()), out["var_bias"].append(bs.var())
            out["cov"].append(((cs - cs.mean()) * (bs - bs.mean())).mean())
    return {k: np.array(v) for k, v in out.items()}


def test_bias_share_statistic():
    model = tiny_seq2seq("umt5")
    ids, mask, dids, dmask = data = batch(True)
    sites = ["enc.attn_content.1", "enc.attn_bias.1", "dec.attn_content.2", "dec.attn_bias.2"]
    layers = {"enc": [1], "dec": [2]}
    with Seq2SeqCapturer(model, sites, bias_share_layers=layers) as cap:
        got = cap.run(*data)
        stats = cap.bias_share
    causal = np.tril(np.ones((DEC_LEN, DEC_LEN), dtype=bool))
    valid = {"enc": mask.bool().numpy()[:, :, None] & mask.bool().numpy()[:, None, :],
             "dec": dmask.bool().numpy()[:, :, None] & dmask.bool().numpy()[:, None, :] & causal}
    for stack, layer in (("enc", 1), ("dec", 2)):
        content = got[f"{stack}.attn_content"][:, 0].numpy()
        bias = got[f"{stack}.attn_bias"][:, 0].numpy()
        for kind, within in (("within_query", True), ("pooled", False)):
            summary, direct = stats[(stack, layer)].summary(kind), _direct(content, bias, valid[stack], within)
            for name, value in direct.items():
                np.testing.assert_allclose(summary[name], value, rtol=1e-9, atol=1e-12, err_msg=f"{kind} {name}")
            np.testing.assert_allclose(summary["bias_share"] + summary["content_share"], 1.0)
            assert ((summary["r2_bias"] >= 0) & (summary["r2_bias"] <= 1 + 1e-12)).all()
            assert (summary["bias_share"] > 0.01).all()  # the bias matters in this model
        assert stats[(stack, layer)].count[0] == valid[stack].sum()
    # mergeable: two half batches give the one-pass sums
    halves = []
    for rows in (slice(0, 1), slice(1, 3)):
        with Seq2SeqCapturer(model, [], bias_share_layers=layers) as cap:
            cap.run(ids[rows], mask[rows], dids[rows], dmask[rows])
            halves.append(cap.bias_share)
    for key, whole in stats.items():
        merged = halves[0][key].merge(halves[1][key])
        for kind in ("within_query", "pooled"):
            for name, value in whole.summary(kind).items():
                np.testing.assert_allclose(merged.summary(kind)[name], value, rtol=1e-9, atol=1e-12)


def test_bias_share_is_zero_without_a_bias():
    model = tiny_seq2seq("t5")
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
    with Seq2SeqCapturer(model, [], bias_share_layers={"enc": [0]}) as cap:
        cap.run(*batch(True)[:2])
        summary = cap.bias_share[("enc", 0)].summary()
    assert (summary["var_bias"] == 0).all() and (summary["bias_share"] == 0).all()
    assert (summary["content_share"] == 1).all() and (summary["r2_bias"] == 0).all()
    assert isinstance(cap.bias_share[("enc", 0)], BiasShareStats)
