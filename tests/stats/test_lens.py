"""Logit lens against a float64 loop reference."""

import numpy as np
import torch

from embwalk.stats import LogitLens, StatsConfig

from .helpers import check_moments, np64, ref_lens, rng, summary_rows, walk

D, V = 12, 40


def rms_norm(weight: torch.Tensor):
    return lambda x: x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * weight


def data(seed: int, n: int, n_layers: int = 5):
    g = rng(seed)
    resid = walk(g, n, n_layers, D)
    w = torch.tensor(g.normal(size=(V, D)) * 0.6, dtype=torch.float32)
    nw = torch.tensor(1 + 0.1 * g.normal(size=D), dtype=torch.float32)
    nxt = torch.tensor(g.integers(0, V, n))
    nxt[-1] = -1
    return resid, nxt, w, nw


def test_lens_matches_reference():
    resid, nxt, w, nw = data(0, 50)
    bias = torch.tensor(rng(9).normal(size=V), dtype=torch.float32)
    acc = LogitLens(StatsConfig(chunk_tokens=16))  # several chunks
    acc.update(resid, nxt, w, rms_norm(nw), bias)
    table = acc.result()["logit_lens"]
    ref = ref_lens(np64(resid), nxt.numpy(), np64(w), np64(nw), np64(bias))
    for stat in ("rank", "prob", "logprob", "entropy"):
        check_moments(table, stat, ref[stat])
    # KL(p_L || p_L) is exactly 0 at the last layer; compare the others relatively.
    kl = summary_rows(table, "kl")
    check_moments(table.filter(np.array(table["layer"].to_pylist()) < 4), "kl", ref["kl"][:-1])
    assert kl["mean"][-1] == 0.0 and kl["count"][-1] == 50
    assert summary_rows(table, "rank")["count"].tolist() == [49] * 5  # last token excluded


def test_lens_quartiles_dense():
    resid, nxt, w, nw = data(1, 1500, n_layers=2)
    cfg = StatsConfig()
    acc = LogitLens(cfg)
    acc.update(resid, nxt, w, rms_norm(nw))
    table = acc.result()["logit_lens"]
    ref = ref_lens(np64(resid), nxt.numpy(), np64(w), np64(nw))
    for stat in ("rank", "prob", "logprob", "entropy"):
        check_moments(table, stat, ref[stat], bins=cfg.bins[stat].array)


def test_lens_single_token_without_next():
    resid, nxt, w, nw = data(2, 1)
    acc = LogitLens()
    acc.update(resid, nxt, w, rms_norm(nw))
    rows = summary_rows(acc.result()["logit_lens"], "rank")
    assert rows["count"].tolist() == [0] * 5 and np.isnan(rows["mean"]).all()
    assert summary_rows(acc.result()["logit_lens"], "entropy")["count"].tolist() == [1] * 5


def test_kl_at_the_last_layer_reads_zero_not_the_first_bin_edge():
    """KL(p_L || p_L) is 0 by definition: quantiles are bounded by the values seen, so the last
    layer's reads 0 rather than the log bins' floor of 1e-8."""
    resid, nxt, w, nw = data(4, 40)
    acc = LogitLens()
    acc.update(resid, nxt, w, rms_norm(nw))
    rows = summary_rows(acc.result()["logit_lens"], "kl", "layer")
    assert rows["mean"][-1] == 0 and rows["q25"][-1] == rows["median"][-1] == rows["q75"][-1] == 0
    assert (rows["median"][:-1] > 0).all()
    merged = LogitLens(shard_ids="b")
    merged.update(resid, nxt, w, rms_norm(nw))
    merged.merge(acc)  # the extremes merge (min, max) as the sums add
    assert summary_rows(merged.result()["logit_lens"], "kl", "layer")["median"][-1] == 0


def test_lens_and_decoding_read_the_models_own_softcapped_logits():
    """Gemma 2 soft-caps its logits (final_logit_softcapping=2 in the tiny config): the logit lens
    at the last layer and the decoding walk give the model's own next-token log-probabilities."""
    from embwalk.models.capture import CaptureLayout, Capturer
    from embwalk.models.sites import parse_sites
    from embwalk.stats import DecodingWalk
    from embwalk.stats.head import ModelHead, logits
    from tests.conftest import tiny_loaded

    loaded = tiny_loaded("gemma2")
    ids = torch.randint(3, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    layout = CaptureLayout.from_sites(parse_sites(["resid_pre.0", "resid_post", "final"], loaded.n_layers))
    with Capturer(loaded, layout, torch.float32) as cap:
        got = cap.run(ids)
    resid, final = got["resid"][0], got["final"][0]
    with torch.no_grad():
        model_logp = loaded.model(input_ids=ids).logits[0].log_softmax(-1)
    head = ModelHead.from_loaded(loaded)
    assert head.softcap == 2.0
    lens_logp = logits(head.final_norm(resid[:, -1]), head.unembed, head.bias, head.softcap).log_softmax(-1)
    assert (lens_logp - model_logp).abs().max() < 1e-5
    nxt = torch.cat([ids[0, 1:], torch.tensor([-1])])
    expected = float(model_logp[:-1].gather(-1, ids[0, 1:, None]).mean())

    def last_layer_logprob(softcap):
        lens = LogitLens()
        lens.update(resid, nxt, head.unembed, head.final_norm, head.bias, softcap)
        return summary_rows(lens.result()["logit_lens"], "logprob")["mean"][-1]

    assert abs(last_layer_logprob(head.softcap) - expected) < 1e-5
    assert abs(last_layer_logprob(None) - expected) > 1e-2  # the cap matters in this config
    walk = DecodingWalk()
    walk.update(final, nxt, head.unembed, torch.zeros(12, dtype=torch.long), bias=head.bias, softcap=head.softcap)
    assert abs(summary_rows(walk.result()["decoding"], "logprob", None)["mean"][0] - expected) < 1e-5
