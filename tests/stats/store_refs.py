"""float64 numpy references computed straight from a store's arrays (no embwalk.stats code).

Next-token ids follow the definition: the next token of the same sequence and the same
document, none for a sequence's last token.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from embwalk.store.reader import Store

from .helpers import ref_encoding
from .test_geometry import ref_geometry


def load(store_path) -> dict:
    store = Store(store_path)
    t = store.tokens().to_pandas()
    seq, doc, tok = t["seq_id"].to_numpy(), t["doc_id"].to_numpy(), t["token_id"].to_numpy()
    nxt = np.full(len(t), -1)
    same = (seq[1:] == seq[:-1]) & (doc[1:] == doc[:-1])
    nxt[:-1] = np.where(same, tok[1:], -1)
    out = {"tokens": t, "seq": seq, "doc": doc, "tok": tok, "next": nxt,
           "resid": store.array("resid")[:].astype(np.float64)}
    arrays = store.manifest["arrays"]
    if "final" in arrays:
        out["final"] = store.array("final")[:].astype(np.float64)
    if "pattern" in arrays:
        pat = store.array("pattern")
        out["pattern"] = {int(s): pat[int(s)].astype(np.float64) for s in np.unique(seq)}
    return out


def stats_table(store_path, name: str, out: str = "stats"):
    return pq.read_table(f"{store_path}/{out}/{name}.parquet")


def subset(d: dict, keep: np.ndarray) -> dict:
    """The rows of ``keep`` of every per-token array (next ids stay those of the whole store)."""
    return {k: (v[keep] if k in ("seq", "doc", "tok", "next", "resid", "final") else v) for k, v in d.items()}


def positions(d: dict) -> np.ndarray:
    """Each row's position in its sequence."""
    seq = d["seq"]
    starts = np.r_[0, np.flatnonzero(seq[1:] != seq[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, len(seq)]))
    return np.arange(len(seq)) - first


def encoding(d: dict) -> dict[str, list[np.ndarray]]:
    return ref_encoding(d["resid"])


def _rms(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _scores(z: np.ndarray, nxt: np.ndarray) -> dict[str, np.ndarray]:
    """z [n, V] float64 logits: rank / logprob of next (where >= 0), entropy, log-probs."""
    m = z.max(-1, keepdims=True)
    logp = z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))
    p = np.exp(logp)
    has = nxt >= 0
    safe = np.where(has, nxt, 0)
    zn = z[np.arange(len(z)), safe]
    return {"rank": (z > zn[:, None]).sum(-1)[has].astype(float), "logprob": logp[np.arange(len(z)), safe][has],
            "prob": p[np.arange(len(z)), safe][has], "entropy": -(p * logp).sum(-1), "logp": logp}


def lens(d: dict, w: np.ndarray, norm_w: np.ndarray, eps: float) -> dict[str, list[np.ndarray]]:
    x = d["resid"]
    n_layers = x.shape[1]
    last = _scores(_rms(x[:, -1], norm_w, eps) @ w.T, d["next"])["logp"]
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("rank", "prob", "logprob", "entropy", "kl")}
    for layer in range(n_layers):
        s = _scores(_rms(x[:, layer], norm_w, eps) @ w.T, d["next"])
        for k in ("rank", "prob", "logprob", "entropy"):
            out[k].append(s[k])
        out["kl"].append((np.exp(last) * (last - s["logp"])).sum(-1))
    return out


def decoding(d: dict, w: np.ndarray, p_nucleus: float = 0.9,
             keep: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[int, float]]:
    """``keep`` [rows]: the tokens counted (a step c_t -> c_t+1 counts when both are)."""
    keep = np.ones(len(d["seq"]), bool) if keep is None else keep
    c, nxt = d["final"], np.where(keep, d["next"], -1)
    s = _scores(c @ w.T, nxt)
    probs = -np.sort(-np.exp(s["logp"]), axis=-1)
    nucleus = (np.cumsum(probs, -1) - probs < p_nucleus).sum(-1)
    has = nxt >= 0
    wn = w[nxt[has]]
    ch = c[has]
    dot = (ch * wn).sum(-1)
    seq = d["seq"]
    pairs = (seq[1:] == seq[:-1]) & keep[1:] & keep[:-1]
    cs = (c[:-1] * c[1:]).sum(-1) / np.linalg.norm(c[:-1], axis=-1) / np.linalg.norm(c[1:], axis=-1)
    docs: dict[int, float] = {}
    for doc, lp in zip(d["doc"][has], s["logprob"], strict=True):
        docs[int(doc)] = docs.get(int(doc), 0.0) + lp
    out = {"rank": s["rank"], "prob": s["prob"], "logprob": s["logprob"], "entropy": s["entropy"][keep],
           "nucleus": nucleus[keep].astype(float), "dot_unembed": dot,
           "cos_unembed": dot / np.linalg.norm(ch, axis=-1) / np.linalg.norm(wn, axis=-1), "cos_step": cs[pairs]}
    return out, docs


def attention(d: dict, causal: bool, layers: list[int], include_self: bool = False,
              keep: np.ndarray | None = None) -> dict:
    """Pooled over every query of every sequence: per (layer, head) self weight, sink, entropy,
    association correlation (inputs: resid at residual index = layer; i == j pairs only with
    ``include_self``), and the kernel. ``keep`` [rows]: the tokens counted, as queries and in
    pairs (a kept query's entropy still reads its whole row)."""
    keep = np.ones(len(d["seq"]), bool) if keep is None else keep
    sw, sink, ent, base = [], [], [], []
    pairs_a: dict[int, list] = {}
    pairs_c: dict[int, list] = {}
    kernel: dict[tuple[int, int, int], list[float]] = {}
    for s, pat in d["pattern"].items():
        rows = np.flatnonzero(d["seq"] == s)
        n = len(rows)
        kept = keep[rows]
        p = pat[:, :, :n, :n]
        x = d["resid"][rows][:, layers]  # [n, L_att, d]
        u = x / np.linalg.norm(x, axis=-1, keepdims=True)
        for i in range(n):
            if not kept[i]:
                continue
            keys = np.arange(i + 1) if causal else np.arange(n)
            base.append(1.0 / len(keys))
            sw.append(p[:, :, i, i])
            sink.append(p[:, :, i, 0])
            a = p[:, :, i, keys]
            ent.append(-(np.where(a > 0, a * np.log(np.where(a > 0, a, 1)), 0)).sum(-1))
            for j in keys[kept[keys]]:
                for li in range(len(layers)):
                    for h in range(p.shape[1]):
                        kernel.setdefault((li, h, i - j), []).append(p[li, h, i, j])
                    if include_self or i != j:
                        pairs_c.setdefault(li, []).append(u[i, li] @ u[j, li])
                if include_self or i != j:
                    pairs_a.setdefault(-1, []).append(p[:, :, i, j])
    a = np.stack(pairs_a[-1], -1)  # [L, H, pairs]
    corr = np.zeros(a.shape[:2])
    for li in range(a.shape[0]):
        c = np.array(pairs_c[li])
        for h in range(a.shape[1]):
            corr[li, h] = np.corrcoef(a[li, h], c)[0, 1]
    return {"self_weight": np.mean(sw, 0), "sink_mass": np.mean(sink, 0), "entropy": np.mean(ent, 0),
            "uniform_baseline": np.mean(base), "assoc_corr": corr,
            "kernel": {k: np.mean(v) for k, v in kernel.items()}}


def geometry(d: dict, types: tuple[int, ...]):
    return ref_geometry(d["resid"], d["tok"], d["seq"], types)
