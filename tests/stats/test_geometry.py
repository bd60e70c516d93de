"""Geometry (anisotropy, self-similarity, intra-sentence similarity, spectrum) and the
similarity map, against float64 loop references."""

import itertools

import numpy as np
import pytest
import torch

from embwalk.stats import Geometry, StatsConfig, most_frequent_types, similarity_map

from .helpers import assert_rel, cos, np64, rng, walk

D, L1 = 10, 4


def data(seed: int, lengths: list[int], n_types: int = 6):
    """Tokens of a type share an embedding direction, so self-similarity > anisotropy."""
    g = rng(seed)
    n = sum(lengths)
    tok = g.integers(0, n_types, n)
    emb = g.normal(size=(n_types, D)) * 2.0
    resid = walk(g, n, L1, D) + torch.tensor(emb[tok], dtype=torch.float32)[:, None]
    seq = np.repeat(np.arange(len(lengths)), lengths)
    return resid, torch.tensor(tok), torch.tensor(seq)


def mean_pair_cos(vs: list[np.ndarray]) -> float:
    return float(np.mean([cos(a, b) for a, b in itertools.combinations(vs, 2)]))


def ref_geometry(x: np.ndarray, tok: np.ndarray, seq: np.ndarray, types: tuple):
    n = len(x)
    out = {k: [] for k in ("anisotropy", "mean_norm", "norm_of_mean", "intra_sim", "self_sim",
                           "eff_dim", "participation_ratio", "total_variance")}
    per_type: dict = {}
    spectra = []
    for layer in range(x.shape[1]):
        v = x[:, layer]
        out["anisotropy"].append(mean_pair_cos(list(v)))
        out["mean_norm"].append(np.mean([np.linalg.norm(r) for r in v]))
        out["norm_of_mean"].append(np.linalg.norm(v.mean(0)))
        intra = []
        for s in np.unique(seq):
            rows = v[seq == s]
            if len(rows) >= 2:
                m = rows.mean(0)
                intra.append(np.mean([cos(r, m) for r in rows]))
        out["intra_sim"].append(np.mean(intra))
        sims = []
        for t in types:
            occ = [v[i] for i in range(n) if tok[i] == t]
            if len(occ) >= 2:
                per_type[(layer, t)] = (len(occ), mean_pair_cos(occ))
                sims.append(per_type[(layer, t)][1])
        out["self_sim"].append(np.mean(sims))
        lam = np.sort(np.linalg.eigvalsh(np.cov(v.T)))[::-1]
        p = lam / lam.sum()
        out["eff_dim"].append(np.exp(-(p * np.log(p)).sum()))
        out["participation_ratio"].append(lam.sum() ** 2 / (lam**2).sum())
        out["total_variance"].append(lam.sum())
        spectra.append(lam)
    return {k: np.array(v) for k, v in out.items()}, per_type, spectra


def test_geometry_matches_reference():
    resid, tok, seq = data(0, [20, 15, 1, 12])
    types = (0, 2, 3, 5, 99)  # 99 never occurs
    acc = Geometry(StatsConfig(self_sim_types=types))
    acc.update(resid, tok, seq)
    res = acc.result()
    g = res["geometry"].to_pydict()
    ref, per_type, spectra = ref_geometry(np64(resid), tok.numpy(), seq.numpy(), types)
    for col, want in ref.items():
        assert_rel(g[col], want, what=col)
    assert_rel(np.array(g["intra_sim_adj"]), ref["intra_sim"] - ref["anisotropy"], what="adj")
    assert_rel(np.array(g["self_sim_adj"]), ref["self_sim"] - ref["anisotropy"], what="adj")
    assert g["n"] == [48] * L1 and g["n_seqs"] == [3] * L1 and g["n_types"] == [4] * L1
    assert (np.array(g["self_sim"]) > np.array(g["anisotropy"])).all()
    st = res["geometry_self_sim"].to_pydict()
    got = {(lay, t): (n, s) for lay, t, n, s in zip(st["layer"], st["token_id"], st["n"],
                                                    st["self_sim"], strict=True)}
    assert set(got) == set(per_type)
    for key, (n, s) in per_type.items():
        assert got[key][0] == n
        assert_rel(got[key][1], s, what=f"self_sim {key}")
    sp = res["geometry_spectrum"].to_pydict()
    for layer in range(L1):
        lam = [e for lay, e in zip(sp["layer"], sp["eigenvalue"], strict=True) if lay == layer]
        assert_rel(lam, spectra[layer], what="spectrum")


def test_cov_layers_subset_and_no_types():
    resid, tok, seq = data(1, [30])
    acc = Geometry(StatsConfig(cov_layers=(0, -1)))
    acc.update(resid, tok)
    res = acc.result()
    g = res["geometry"].to_pydict()
    assert np.isnan(g["eff_dim"][1]) and np.isnan(g["eff_dim"][2])
    assert not np.isnan(g["eff_dim"][0]) and not np.isnan(g["eff_dim"][3])
    assert set(res["geometry_spectrum"]["layer"].to_pylist()) == {0, 3}
    assert np.isnan(g["self_sim"]).all() and res["geometry_self_sim"].num_rows == 0
    with pytest.raises(ValueError):
        Geometry(StatsConfig(cov_layers=(9,))).update(resid, tok)


def test_single_token():
    resid, tok, _ = data(2, [1])
    acc = Geometry(StatsConfig(self_sim_types=(0, 1, 2, 3, 4, 5)))
    acc.update(resid, tok)
    g = acc.result()["geometry"].to_pydict()
    assert g["n"] == [1] * L1 and np.isnan(g["anisotropy"]).all() and g["n_seqs"] == [0] * L1


def test_most_frequent_types():
    assert most_frequent_types([5, 5, 1, 1, 7, 3, 3, 3], 2) == (1, 3)  # 3x3, then 1 (< 5)
    assert most_frequent_types(np.array([2, 2, 9]), 5) == (2, 9)


def test_similarity_map():
    resid = walk(rng(3), 7, 3, 5)
    m = similarity_map(resid, layer=2)
    x = np64(resid[:, 2])
    ref = np.array([[cos(a, b) for b in x] for a in x])
    assert_rel(m.double().numpy(), ref, what="similarity map")
    assert torch.equal(similarity_map(resid[:, 2]), m)
    with pytest.raises(ValueError):
        similarity_map(resid)


def test_massive_activations_counted_per_layer_with_their_dimensions():
    """Sun et al. 2024's massive activations: a vector whose largest |x_k| exceeds 100x its
    median |x_k|; counted per layer, with the dimension that holds most of them, against numpy."""
    from embwalk.stats.ops import MASSIVE_RATIO

    g = rng(11)
    x = g.normal(size=(40, 4, 32))
    x[::8, 2:, 5] = 2_000.0  # position-0-like tokens from layer 2 on, in dimension 5
    x[3, 1, 17] = -900.0  # one more, negative, in dimension 17
    acc = Geometry()
    acc.update(torch.tensor(x, dtype=torch.float32), torch.zeros(40, dtype=torch.long))
    res = acc.result()
    mag = np.abs(x)
    flagged = mag.max(-1) > MASSIVE_RATIO * np.median(mag, -1)
    assert res["geometry"]["massive_tokens"].to_pylist() == flagged.sum(0).tolist() == [0, 1, 5, 5]
    np.testing.assert_allclose(res["geometry"]["massive_share"].to_numpy(), flagged.sum(0) / 40)
    assert res["geometry"]["massive_dim"].to_pylist() == [-1, 17, 5, 5]
    assert res["geometry"]["massive_dim_tokens"].to_pylist() == [0, 1, 5, 5]
