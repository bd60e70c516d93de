"""Test data and independent float64 numpy references for the walk statistics.

References are deliberately written as plain loops over tokens/pairs from the
definitions, sharing no code with embwalk.stats.
"""

from __future__ import annotations

import math

import numpy as np
import torch

RTOL = 1e-5


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def walk(g: np.random.Generator, n: int, n_layers: int, d: int) -> torch.Tensor:
    """A residual stream that behaves like one: a shared offset (anisotropy), random
    embeddings, and each layer adding a random step. Float32, as stored."""
    offset = g.normal(size=d) * 1.5
    x0 = offset + g.normal(size=(n, d))
    steps = g.normal(size=(n, n_layers - 1, d)) * np.linspace(0.5, 1.5, n_layers - 1)[:, None]
    x = np.concatenate([x0[:, None], x0[:, None] + np.cumsum(steps, axis=1)], axis=1)
    return torch.tensor(x, dtype=torch.float32)


def np64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


# ---- comparisons -------------------------------------------------------------------


def assert_rel(actual, expected, rtol: float = RTOL, what: str = "") -> None:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    both_nan = np.isnan(a) & np.isnan(e)
    err = np.abs(a - e)
    ok = both_nan | (err <= rtol * np.abs(e))
    assert ok.all(), f"{what}: max rel err {np.nanmax(err / np.abs(e))}\n{a[~ok]}\n{e[~ok]}"


def assert_same_table(a, b, what: str = "") -> None:
    """Two computations of one statistics table agree: the same columns and rows, other values exactly,
    floats to 1e-12 (the same partial sums, perhaps added in another order)."""
    assert a.column_names == b.column_names and a.num_rows == b.num_rows, what
    for col in a.column_names:
        x, y = a[col].to_numpy(zero_copy_only=False), b[col].to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-12, err_msg=f"{what}.{col}")
        else:
            assert (x == y).all(), f"{what}.{col}"


def summary_rows(table, stat: str, group: str | None = "layer") -> dict[str, np.ndarray]:
    """Columns of one stat's rows of a summary table, sorted by group."""
    d = table.to_pydict()
    idx = [i for i, s in enumerate(d["stat"]) if s == stat]
    if group:
        idx.sort(key=lambda i: d[group][i])
    return {k: np.array([v[i] for i in idx]) for k, v in d.items()}


def check_moments(table, stat: str, ref_by_group: list[np.ndarray], group="layer",
                  bins: np.ndarray | None = None, rtol: float = RTOL) -> None:
    """count, mean, std (population) against a reference list of value arrays per group;
    with ``bins``, also each quartile within one bin width of numpy's."""
    rows = summary_rows(table, stat, group)
    assert len(rows["count"]) == len(ref_by_group), stat
    assert list(rows["count"]) == [len(v) for v in ref_by_group], stat
    assert_rel(rows["mean"], [np.mean(v) for v in ref_by_group], rtol, f"{stat} mean")
    assert_rel(rows["std"], [np.std(v) for v in ref_by_group], rtol, f"{stat} std")
    if bins is not None:
        for col, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
            for est, v in zip(rows[col], ref_by_group, strict=True):
                ref = np.quantile(v, q)
                k = np.clip(np.searchsorted(bins, ref, side="right"), 1, len(bins) - 1)
                width = bins[k] - bins[k - 1]
                assert abs(est - ref) <= width, f"{stat} {col}: {est} vs {ref} (bin {width})"


# ---- references ----------------------------------------------------------------------


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def rms_norm_np(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * weight


def ref_encoding(resid: np.ndarray) -> dict[str, list[np.ndarray]]:
    n, n_layers, _ = resid.shape
    last = n_layers - 1
    out: dict[str, list[list[float]]] = {
        "norm": [[] for _ in range(n_layers)],
        "step": [[] for _ in range(last)],
        "step_cos": [[] for _ in range(max(last - 1, 0))],
        "cos_next": [[] for _ in range(last)],
        "cos_last": [[] for _ in range(last)],
        "path_length": [[] for _ in range(last)],
        "straightness": [[] for _ in range(last)],
        "turn_angle": [[] for _ in range(max(last - 1, 0))],
    }
    for t in range(n):
        x = resid[t]
        length = 0.0
        for layer in range(1, n_layers):
            length += np.linalg.norm(x[layer] - x[layer - 1])
            out["path_length"][layer - 1].append(length)
            out["straightness"][layer - 1].append(np.linalg.norm(x[layer] - x[0]) / length)
        for layer in range(1, last):
            c = cos(x[layer + 1] - x[layer], x[layer] - x[layer - 1])
            out["turn_angle"][layer - 1].append(math.degrees(math.acos(min(1.0, max(-1.0, c)))))
        for layer in range(n_layers):
            out["norm"][layer].append(np.linalg.norm(x[layer]))
        for layer in range(last):
            out["step"][layer].append(np.linalg.norm(x[layer + 1] - x[layer]))
            out["cos_next"][layer].append(cos(x[layer], x[layer + 1]))
            out["cos_last"][layer].append(cos(x[layer], x[last]))
        for layer in range(1, last):
            out["step_cos"][layer - 1].append(cos(x[layer + 1] - x[layer], x[layer] - x[layer - 1]))
    return {k: [np.array(v) for v in vs] for k, vs in out.items()}


def log_softmax_np(z: np.ndarray) -> np.ndarray:
    m = z.max()
    return z - m - math.log(np.exp(z - m).sum())


def token_scores(z: np.ndarray, nxt: int) -> dict[str, float]:
    logp = log_softmax_np(z)
    p = np.exp(logp)
    return {
        "rank": float(sum(1 for v in z if v > z[nxt])) if nxt >= 0 else None,
        "logprob": float(logp[nxt]) if nxt >= 0 else None,
        "prob": float(p[nxt]) if nxt >= 0 else None,
        "entropy": float(-(p * logp).sum()),
        "logp": logp,
    }


def ref_lens(resid, next_ids, w, norm_weight, bias=None) -> dict[str, list[np.ndarray]]:
    n, n_layers, _ = resid.shape
    out = {k: [[] for _ in range(n_layers)] for k in ("rank", "prob", "logprob", "entropy", "kl")}
    for t in range(n):
        zs = [rms_norm_np(resid[t, layer], norm_weight) @ w.T for layer in range(n_layers)]
        if bias is not None:
            zs = [z + bias for z in zs]
        last = token_scores(zs[-1], -1)["logp"]
        for layer, z in enumerate(zs):
            s = token_scores(z, int(next_ids[t]))
            if next_ids[t] >= 0:
                for k in ("rank", "prob", "logprob"):
                    out[k][layer].append(s[k])
            out["entropy"][layer].append(s["entropy"])
            out["kl"][layer].append(float((np.exp(last) * (last - s["logp"])).sum()))
    return {k: [np.array(v) for v in vs] for k, vs in out.items()}


def ref_decoding(final, next_ids, w, doc_ids, seq_ids, p_nucleus=0.9):
    out = {k: [] for k in ("cos_unembed", "dot_unembed", "rank", "prob", "logprob", "entropy",
                           "nucleus", "cos_step")}
    docs: dict[int, list[float]] = {}
    n = len(final)
    for t in range(n):
        c = final[t]
        s = token_scores(c @ w.T, int(next_ids[t]))
        probs = np.sort(np.exp(s["logp"]))[::-1]
        out["nucleus"].append(float(np.argmax(np.cumsum(probs) >= p_nucleus) + 1))
        out["entropy"].append(s["entropy"])
        if next_ids[t] >= 0:
            wn = w[next_ids[t]]
            out["cos_unembed"].append(cos(c, wn))
            out["dot_unembed"].append(float(c @ wn))
            for k in ("rank", "prob", "logprob"):
                out[k].append(s[k])
            docs.setdefault(int(doc_ids[t]), []).append(s["logprob"])
        if t + 1 < n and seq_ids[t + 1] == seq_ids[t]:
            out["cos_step"].append(cos(final[t], final[t + 1]))
    return {k: np.array(v) for k, v in out.items()}, docs


def causal_attention(g, x: np.ndarray, n_heads: int, causal: bool, beta: float = 3.0):
    """Row-stochastic attention [L, H, S, S] that leans on similarity (so the
    association-bias correlation is clearly non-zero) plus noise; zero on invisible keys."""
    n_layers, s, _ = x.shape
    u = x / np.linalg.norm(x, axis=-1, keepdims=True)
    sim = np.einsum("lid,ljd->lij", u, u)
    logits = beta * sim[:, None] + g.normal(size=(n_layers, n_heads, s, s))
    if causal:
        logits = np.where(np.tril(np.ones((s, s), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return torch.tensor(p / p.sum(-1, keepdims=True), dtype=torch.float32)


def ref_attention(p: np.ndarray, x: np.ndarray | None, causal: bool, include_self=True):
    """Per (layer, head): self weight, baseline, entropy, sink, kernel, correlation."""
    n_layers, n_heads, s, _ = p.shape
    res = {k: np.zeros((n_layers, n_heads)) for k in ("self", "entropy", "sink", "corr")}
    kernel: dict[tuple[int, int, int], list[float]] = {}
    baseline = np.mean([1.0 / ((i + 1) if causal else s) for i in range(s)])
    for layer in range(n_layers):
        for h in range(n_heads):
            a_list, c_list = [], []
            selfw, ent, sink = [], [], []
            for i in range(s):
                keys = range(i + 1) if causal else range(s)
                selfw.append(p[layer, h, i, i])
                sink.append(p[layer, h, i, 0])
                ent.append(-sum(p[layer, h, i, j] * math.log(p[layer, h, i, j])
                                for j in keys if p[layer, h, i, j] > 0))
                for j in keys:
                    kernel.setdefault((layer, h, i - j), []).append(p[layer, h, i, j])
                    if x is not None and (include_self or i != j):
                        a_list.append(p[layer, h, i, j])
                        c_list.append(cos(x[layer, i], x[layer, j]))
            res["self"][layer, h] = np.mean(selfw)
            res["entropy"][layer, h] = np.mean(ent)
            res["sink"][layer, h] = np.mean(sink)
            if len(a_list) >= 2:
                res["corr"][layer, h] = np.corrcoef(a_list, c_list)[0, 1]
    return res, baseline, kernel


def assert_same_tables(got: dict, want: dict, rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """Statistics tables ({name: pyarrow Table}) of two routes: the same schema and rows, floats
    within ``rtol`` / ``atol``, everything else equal."""
    for name, a in got.items():
        b = want[name]
        assert a.schema == b.schema and a.num_rows == b.num_rows, name
        for col in a.column_names:
            x, y = a[col].to_numpy(zero_copy_only=False), b[col].to_numpy(zero_copy_only=False)
            if x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"{name}.{col}")
            else:
                assert (x == y).all(), f"{name}.{col}"
