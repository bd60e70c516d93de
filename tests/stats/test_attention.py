"""Attention statistics against a float64 loop reference."""

import numpy as np
import pytest
import torch

from embwalk.stats import AttentionStats, StatsConfig

from .helpers import assert_rel, causal_attention, np64, ref_attention, rng, walk

H, D = 3, 10


def data(seed: int, s: int, causal: bool, n_layers: int = 2):
    g = rng(seed)
    x = walk(g, s, n_layers, D).transpose(0, 1).contiguous()  # [L_att, S, d]
    return causal_attention(g, np64(x), H, causal), x


def check(acc: AttentionStats, seqs: list, causal: bool, include_self: bool = True,
          layers: tuple = (0, 1)):
    """Compare with the reference pooled over ``seqs`` [(pattern, inputs)]."""
    res = acc.result()
    t = res["attention"].to_pydict()
    n_q = sum(p.shape[-1] for p, _ in seqs)
    assert set(t["n_queries"]) == {n_q}
    refs = [ref_attention(np64(p), np64(x), causal, include_self) for p, x in seqs]
    weights = [p.shape[-1] / n_q for p, _ in seqs]  # per-query means pool by length
    for col, key in (("self_weight", "self"), ("entropy", "entropy"), ("sink_mass", "sink")):
        expect = sum(w * r[0][key] for w, r in zip(weights, refs, strict=True))
        assert_rel(t[col], expect.ravel(), what=col)
    baseline = sum(w * r[1] for w, r in zip(weights, refs, strict=True))
    assert_rel(t["uniform_baseline"], np.full(len(t["layer"]), baseline), what="baseline")
    assert_rel(np.array(t["self_bias"]), np.array(t["self_weight"]) - baseline, what="bias")
    ent_uniform = np.mean([np.log(i + 1 if causal else p.shape[-1])
                           for p, _ in seqs for i in range(p.shape[-1])])
    assert_rel(t["entropy_uniform"], np.full(len(t["layer"]), ent_uniform), what="H uniform")
    # the kernel: mean over all visible pairs at each offset, pooled over sequences
    pooled: dict = {}
    for _, _, kernel in refs:
        for key, vals in kernel.items():
            pooled.setdefault((layers[key[0]],) + key[1:], []).extend(vals)
    k = res["attention_kernel"].to_pydict()
    got = {(lay, h, o): (c, m) for lay, h, o, c, m in zip(
        k["layer"], k["head"], k["offset"], k["count"], k["mean_weight"], strict=True)}
    assert set(got) == set(pooled)
    for key, vals in pooled.items():
        assert got[key][0] == len(vals)
        assert_rel(got[key][1], np.mean(vals), what=f"kernel {key}")
    return t


@pytest.mark.parametrize("causal", [True, False])
def test_attention_matches_reference(causal):
    p, x = data(0, 14, causal)
    acc = AttentionStats()
    acc.update(p, causal, x)
    t = check(acc, [(p, x)], causal)
    # the association correlation (one sequence: the plain Pearson r over its pairs)
    ref = ref_attention(np64(p), np64(x), causal)[0]["corr"]
    assert_rel(t["assoc_corr"], ref.ravel(), what="corr")
    assert (np.array(t["assoc_corr"]) > 0.2).all()  # built to lean on similarity
    offsets = set(acc.result()["attention_kernel"]["offset"].to_pylist())
    assert offsets == (set(range(14)) if causal else set(range(-13, 14)))


def test_association_pools_pairs_of_several_sequences_and_can_skip_self():
    seqs = [data(1, 9, True), data(2, 5, True), data(3, 1, True)]
    acc = AttentionStats(StatsConfig(assoc_include_self=False))
    for p, x in seqs:
        acc.update(p, True, x, layers=[3, 7])
    t = check(acc, seqs, True, include_self=False, layers=(3, 7))
    assert t["layer"] == [3, 3, 3, 7, 7, 7]
    # pooled Pearson over every visible off-diagonal pair of every sequence
    for li in range(2):
        for h in range(H):
            a, c = [], []
            for p, x in seqs:
                s = p.shape[-1]
                u = np64(x[li]) / np.linalg.norm(np64(x[li]), axis=-1, keepdims=True)
                for i in range(s):
                    for j in range(i):
                        a.append(float(p[li, h, i, j]))
                        c.append(float(u[i] @ u[j]))
            assert t["assoc_pairs"][li * H + h] == len(a)
            assert_rel(t["assoc_corr"][li * H + h], np.corrcoef(a, c)[0, 1], what="pooled corr")


def test_padded_pattern_with_length():
    p, x = data(4, 6, True)
    padded = torch.zeros(2, H, 10, 10)
    padded[..., :6, :6] = p
    xpad = torch.zeros(2, 10, D)
    xpad[:, :6] = x
    a, b = AttentionStats(), AttentionStats()
    a.update(padded, True, xpad, length=6)
    b.update(p, True, x)
    for key in ("attention", "attention_kernel"):
        assert a.result()[key].equals(b.result()[key])
    with pytest.raises(ValueError):
        a.update(padded, True, xpad, length=11)


def test_weight_on_invisible_keys_is_ignored():
    p, x = data(6, 7, True)
    noisy = p + torch.triu(torch.rand_like(p), diagonal=1)  # junk above the diagonal
    a, b = AttentionStats(), AttentionStats()
    a.update(noisy, True, x)
    b.update(p, True, x)
    for key in ("attention", "attention_kernel"):
        assert a.result()[key].equals(b.result()[key])


def test_without_inputs_and_mixing_rejected():
    p, _ = data(5, 4, True)
    acc = AttentionStats()
    acc.update(p, True)
    t = acc.result()["attention"].to_pydict()
    assert set(t["assoc_pairs"]) == {0} and np.isnan(t["assoc_corr"]).all()
    with pytest.raises(ValueError):
        acc.update(p, False)
    with pytest.raises(ValueError):
        acc.update(p[:1], True)


@pytest.mark.parametrize("causal", [True, False])
def test_per_query_self_ratio_and_kernel_ratio_to_uniform(causal):
    """self_ratio: mean over queries of p_ii / (1 / keys visible to i), so early queries (whose
    uniform weight is large) do not dominate; the kernel's ratio_to_uniform: mean weight at an
    offset over the mean uniform weight there. Both against float64 loops, over two sequences."""
    seqs = [data(3, 12, causal), data(4, 7, causal)]
    acc = AttentionStats()
    for p, x in seqs:
        acc.update(p, causal, x)
    res = acc.result()
    t = res["attention"].to_pydict()
    ratios, uniform_at = [], {}
    for p, _ in seqs:
        q = np64(p)
        s = q.shape[-1]
        for i in range(s):
            n_vis = i + 1 if causal else s
            ratios.append(q[:, :, i, i] * n_vis)
            for j in range(i + 1 if causal else s):
                uniform_at.setdefault(i - j, []).append(1.0 / n_vis)
    assert_rel(t["self_ratio"], np.mean(ratios, axis=0).ravel(), what="self_ratio")
    k = res["attention_kernel"].to_pydict()
    for off, mean, uni, ratio in zip(k["offset"], k["mean_weight"], k["uniform_weight"], k["ratio_to_uniform"],
                                     strict=True):
        assert_rel(uni, np.mean(uniform_at[off]), what=f"uniform at {off}")
        assert_rel(ratio, mean / np.mean(uniform_at[off]), what=f"ratio at {off}")


def test_headline_sink_rate_is_the_share_of_heads_over_the_threshold():
    """Gu et al. 2024: a head sinks when its mean weight on the first token exceeds 0.3."""
    import pyarrow as pa

    from embwalk.stats.partials import SINK_EPSILON, headline

    sink = [0.9, 0.1, 0.31, 0.29, 0.5, 0.0]
    table = pa.table({"layer": [0, 0, 0, 1, 1, 1], "head": [0, 1, 2, 0, 1, 2], "sink_mass": sink,
                      "self_bias": [-0.1, 0.2, -0.3, 0.0, 0.1, -0.2]})
    out = headline({"attention": table})
    assert SINK_EPSILON == 0.3
    assert out["attention_sink_rate"] == round(3 / 6, 6)
    assert out["attention_sink_rate_by_layer"] == [round(2 / 3, 6), round(1 / 3, 6)]
