"""Binned moments: count, sum, sum of squares, a fixed-bin histogram, and the extremes, per group.

The first four merge by addition and the extremes by min/max (``EXTREMES``), so
corpus-level means and standard deviations are exact and quantiles can be read
from the merged histogram (to within one bin), never outside the values seen: a
quantile in the under/overflow bin is bounded by the smallest/largest value (a KL
that is exactly 0 reads 0, not the first edge). They live as plain numpy arrays
in an accumulator's state dict under ``{name}.count|sum|sumsq|hist|min|max`` so
that merge and persistence stay generic.
"""

from __future__ import annotations

import numpy as np
import torch

QUANTILES = (0.25, 0.5, 0.75)
# state suffixes merged by an extreme instead of a sum, with their identity
EXTREMES = {".min": (np.minimum, np.inf), ".max": (np.maximum, -np.inf)}


def init(state: dict[str, np.ndarray], name: str, n_groups: int, n_bins: int) -> None:
    state[f"{name}.count"] = np.zeros(n_groups, np.int64)
    state[f"{name}.sum"] = np.zeros(n_groups, np.float64)
    state[f"{name}.sumsq"] = np.zeros(n_groups, np.float64)
    # columns: underflow, the n_bins real bins, overflow
    state[f"{name}.hist"] = np.zeros((n_groups, n_bins + 2), np.int64)
    for suffix, (_, identity) in EXTREMES.items():
        state[f"{name}{suffix}"] = np.full(n_groups, identity, np.float64)


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
        f"{name}.min": torch.where(ok, v, torch.inf).amin(0) if len(v) else torch.full((n_groups,), torch.inf),
        f"{name}.max": torch.where(ok, v, -torch.inf).amax(0) if len(v) else torch.full((n_groups,), -torch.inf),
    }


def combine(key: str, mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """``mine`` and ``theirs`` of state array ``key`` together: the extreme, or the sum."""
    for suffix, (extreme, _) in EXTREMES.items():
        if key.endswith(suffix):
            return extreme(mine, theirs)
    return mine + theirs


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
    lo = state.get(f"{name}.min", np.full(len(n), -np.inf))
    hi = state.get(f"{name}.max", np.full(len(n), np.inf))
    for label, q in zip(("q25", "median", "q75"), QUANTILES, strict=True):
        est = np.array([quantile(edges, h, q, integer) for h in hist], dtype=np.float64)
        with np.errstate(invalid="ignore"):
            out[label] = np.where(n > 0, np.clip(est, lo, hi), est)  # never outside the values seen
    return out


def bin_bounds(edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds of the histogram columns, under/overflow as +-inf."""
    lo = np.concatenate([[-np.inf], edges])
    hi = np.concatenate([edges, [np.inf]])
    return lo, hi
