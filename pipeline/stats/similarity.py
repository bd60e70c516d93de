"""Similarity map: the token-by-token cosine matrix of one document at one layer."""

from __future__ import annotations

import torch

from embwalk.stats.ops import f32, unit


def similarity_map(vectors: torch.Tensor, layer: int | None = None) -> torch.Tensor:
    """Cosine matrix [n, n] (float32, on the input's device) of ``vectors`` [n, d],
    or of ``vectors[:, layer]`` when given a residual stream [n, L+1, d].
    Rows of zero vectors are all zero."""
    x = f32(vectors)
    if x.ndim == 3:
        if layer is None:
            raise ValueError("vectors is [n, L+1, d]: say which layer")
        x = x[:, layer]
    elif x.ndim != 2 or layer is not None:
        raise ValueError(f"expected [n, d] (or [n, L+1, d] with a layer), got {tuple(x.shape)}")
    u = unit(x)
    return (u @ u.T).clamp_(-1.0, 1.0)
