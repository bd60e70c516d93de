"""Binned moments: count, sum, sum of squares and a fixed-bin histogram per group.

All four merge by addition, so corpus-level means and standard deviations are
exact and quantiles can be read from the merged histogram (to within one bin).
They live as plain numpy arrays in an accumulator's state dict under
``{name}.count|sum|sumsq|hist`` so that merge and persistence stay generic.
"""

from __future__ import annotations

import numpy as np
import torch

QUANTILES = (0.25, 0.5, 0.75)


def init(state: dict[str, np.ndarray], name: str, n_groups: int, n_bins: int) -> None:
    state[f"{name}.count"] = np.zeros(n_groups, np.int64)
    state[f"{name}.sum"] = np.zeros(n_groups, np.float64)
    state[f"{name}.sumsq"] = np.zeros(n_groups, np.float64)
    # columns: underflow, the n_bins real bins, overflow
    state[f"{name}.hist"] = np.zeros((n_groups, n_bins + 2), np.int64)


def binned(
    name: str,
    values: torch.Tensor,
    edges: np.ndarray,
    keep: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Increments of ``{name}.*`` for ``values`` [n, G] (column g belongs to group g);
    ``keep`` [n] selects rows.

    Non-finite values (e.g. the cosine of a zero vector) are skipped, not counted.
    Sums are taken in float64 and stay on the values' device (no host sync here).
    """
    v = values.detach().to(torch.float64)
    ok = torch.isfinite(v)
    if keep is not None:
        ok &= keep.to(v.device)[:, None]
    n_groups, n_cols = v.shape[1], len(edges) + 1
    e = torch.as_tensor(edges, dtype=torch.float64, device=v.device)
    idx = torch.bucketize(v, e, right=True)  # 0 = underflow, len(edges) = overflow
    idx = torch.where(v == e[-1], len(edges) - 1, idx)  # the last bin is closed
    flat = (idx + torch.arange(n_groups, device=v.device) * n_cols)[ok]
    hist = torch.bincount(flat, minlength=n_groups * n_cols).view(n_groups, n_cols)
    vz = torch.where(ok, v, 0.0)
    return {
        f"{name}.count": ok.sum(0),
        f"{name}.sum": vz.sum(0),
        f"{name}.sumsq": (vz * vz).sum(0),
        f"{name}.hist": hist,
    }


def quantile(edges: np.ndarray, hist: np.ndarray, q: float, integer: bool = False) -> float:
    """Quantile ``q`` of a histogram row (with under/overflow columns).

    Linear interpolation inside the bin where the cumulative count reaches q*N,
    so the answer lies in the same bin as the sample quantile. A quantile in the
    under/overflow bin is reported as the first/last edge. ``integer``: the values
    are integers, and a quantile in a bin [k, k+1) is k itself: the sample's
    quantile (the smallest value whose cumulative share reaches q), exactly.
    """
    total = hist.sum()
    if total == 0:
        return float("nan")
    target = q * total
    cum = np.cumsum(hist)
    k = int(np.searchsorted(cum, target, side="left"))
    k = min(max(k, 0), len(hist) - 1)
    while hist[k] == 0 and k < len(hist) - 1:  # skip empty bins at exact boundaries
        k += 1
    if k == 0:
        return float(edges[0])
    if k == len(hist) - 1:
        return float(edges[-1])
    lo, hi = edges[k - 1], edges[k]
    if integer and hi - lo == 1:
        return float(lo)
    before = cum[k - 1]
    frac = (target - before) / hist[k]
    return float(lo + min(max(frac, 0.0), 1.0) * (hi - lo))


def summary(state: dict[str, np.ndarray], name: str, edges: np.ndarray,
            integer: bool = False) -> dict[str, np.ndarray]:
    """Per-group count, mean, population std and quartiles (from the histogram; ``integer``:
    see ``quantile``)."""
    n = state[f"{name}.count"]
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = state[f"{name}.sum"] / n
        var = np.maximum(state[f"{name}.sumsq"] / n - mean * mean, 0.0)
    hist = state[f"{name}.hist"]
    out = {"count": n, "mean": mean, "std": np.sqrt(var)}
    for label, q in zip(("q25", "median", "q75"), QUANTILES, strict=True):
        out[label] = np.array([quantile(edges, h, q, integer) for h in hist], dtype=np.float64)
    return out


def bin_bounds(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the histogram columns, under/overflow as +-inf."""
    lo = np.concatenate([[-np.inf], edges])
    hi = np.concatenate([edges, [np.inf]])
    return lo, hi
