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
    acc = AttentionStats(StatsConfig(assoc_include_self=True))  # the default leaves i == j out
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


def adversarial(seed: int, s: int = 384, n_layers: int = 2):
    """Causal attention that leans weakly on similarity over anisotropic inputs (every cosine
    near 1, as in real residual streams): the correlation is a small difference of large sums.
    Norms span three orders of magnitude: position 0 carries a massive activation (~2.4e4
    against ~30)."""
    g = rng(seed)
    x = 10.0 + g.normal(size=(n_layers, s, D))
    x[:, 0, 0] = 2.4e4
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    sim = np.einsum("lid,ljd->lij", u, u)
    logits = sim[:, None] + 0.5 * g.normal(size=(n_layers, H, s, s))
    logits = np.where(np.tril(np.ones((s, s), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return torch.tensor(p, dtype=torch.float32), torch.tensor(x, dtype=torch.float32)


def pooled_corr(seqs, keep_of=lambda s: np.ones(s, bool)) -> np.ndarray:
    """float64 Pearson r of weight and cosine over the visible off-diagonal pairs of kept positions."""
    out = None
    per_seq = []
    for p, x in seqs:
        p, x = np64(p), np64(x)
        s = p.shape[-1]
        keep = keep_of(s)
        i, j = np.tril_indices(s, -1)
        both = keep[i] & keep[j]
        i, j = i[both], j[both]
        u = x / np.linalg.norm(x, axis=-1, keepdims=True)
        per_seq.append((p[:, :, i, j], np.einsum("lpd,lpd->lp", u[:, i], u[:, j])))
    a = np.concatenate([a for a, _ in per_seq], -1)
    c = np.concatenate([c for _, c in per_seq], -1)
    out = np.zeros(a.shape[:2])
    for layer in range(a.shape[0]):
        for h in range(a.shape[1]):
            out[layer, h] = np.corrcoef(a[layer, h], c[layer])[0, 1]
    return out


@pytest.mark.parametrize("fast", [False, True], ids=["float64", "fast-moments"])
def test_association_correlation_is_accurate_on_adversarial_inputs(fast):
    """docs/statistics.md: assoc_corr within 2e-7 absolute of float64, with fast_moments too
    (plain float32 sums of one sequence's pairs are off by ~4e-6 here, ~1e-4 on SmolLM2)."""
    seqs = [adversarial(10), adversarial(11, 256)]
    acc = AttentionStats(StatsConfig(fast_moments=fast))
    for p, x in seqs:
        acc.update(p, True, x)
    got = np.reshape(acc.result()["attention"]["assoc_corr"].to_numpy(), (2, H))
    want = pooled_corr(seqs)
    assert np.abs(want).max() < 0.1  # weak: the hard case for a difference of sums
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


def test_excluded_positions_leave_queries_and_pairs_but_keep_their_weight_in_rows():
    """keep: an excluded position is neither a query nor in a pair; each kept row's entropy and
    the sink mass still read the whole row (key 0's weight included)."""
    p, x = data(5, 12, True)
    keep = torch.ones(12, dtype=torch.bool)
    keep[[0, 5]] = False
    acc = AttentionStats()
    acc.update(p, True, x, keep=keep)
    t = acc.result()
    a = t["attention"].to_pydict()
    p64 = np64(p)
    kept = [i for i in range(12) if keep[i]]
    assert set(a["n_queries"]) == {len(kept)}
    rows = p64[:, :, kept]  # [L, H, queries, keys]
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.nansum(np.where(rows > 0, rows * np.log(rows), 0), -1).mean(-1)
    assert_rel(a["entropy"], ent.ravel(), what="entropy")
    assert_rel(a["sink_mass"], rows[..., 0].mean(-1).ravel(), what="sink")
    assert_rel(a["self_weight"], np.stack([p64[:, :, i, i] for i in kept], -1).mean(-1).ravel(), what="self")
    assert_rel(a["uniform_baseline"], np.full(2 * H, np.mean([1 / (i + 1) for i in kept])), what="baseline")
    k = t["attention_kernel"].to_pydict()
    for layer, head, off, count, mean in zip(k["layer"], k["head"], k["offset"], k["count"], k["mean_weight"],
                                              strict=True):
        pairs = [(i, i - off) for i in kept if i - off in kept]
        assert count == len(pairs)
        assert_rel(mean, np.mean([p64[layer, head, i, j] for i, j in pairs]), what=f"kernel {off}")
    assert 5 not in k["offset"] or all(c == len([i for i in kept if i - 5 in kept])
                                       for o, c in zip(k["offset"], k["count"], strict=True) if o == 5)
    np.testing.assert_allclose(
        np.reshape(a["assoc_corr"], (2, H)),
        pooled_corr([(p, x)], lambda s: keep.numpy()), rtol=1e-5)
