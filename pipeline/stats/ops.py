"""Small tensor helpers shared by the statistic families."""

from __future__ import annotations

import torch

# Norms below this are treated as zero vectors (their direction is undefined).
TINY = 1e-30


def f32(x: torch.Tensor) -> torch.Tensor:
    """Detached float32 view/copy: every statistic is computed in float32 on the
    tensor's own device, whatever the storage dtype (fp16/bf16 lack the range/precision)."""
    return x.detach().to(torch.float32)


def cosine(a: torch.Tensor, b: torch.Tensor, na: torch.Tensor | None = None,
           nb: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine along the last axis; NaN where either vector is zero (then skipped by the
    histograms rather than counted as 0). Pass precomputed norms to save a pass."""
    na = a.norm(dim=-1) if na is None else na
    nb = b.norm(dim=-1) if nb is None else nb
    return torch.linalg.vecdot(a, b) / (na * nb)  # fused: (a * b).sum(-1) writes a temporary


def unit(x: torch.Tensor) -> torch.Tensor:
    """x / |x| along the last axis; a zero vector stays zero."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(TINY)


def group_index(ids: torch.Tensor | None, n: int, device: torch.device) -> tuple[torch.Tensor, int]:
    """Dense 0..G-1 index of each token's group (sequence, document); None = one group."""
    if ids is None:
        return torch.zeros(n, dtype=torch.long, device=device), 1
    ids = torch.as_tensor(ids, device=device)
    if ids.shape != (n,):
        raise ValueError(f"expected ids of shape ({n},), got {tuple(ids.shape)}")
    uniq, inv = torch.unique(ids, return_inverse=True)
    return inv, int(uniq.numel())


def same_sequence_pairs(seq_ids: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Bool [n-1]: tokens t and t+1 belong to the same sequence (tokens come in order)."""
    if seq_ids is None:
        return torch.ones(max(n - 1, 0), dtype=torch.bool, device=device)
    seq = torch.as_tensor(seq_ids, device=device)
    return seq[1:] == seq[:-1]


def as_ids(ids: torch.Tensor, n: int, device: torch.device, what: str) -> torch.Tensor:
    ids = torch.as_tensor(ids, device=device).long()
    if ids.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {tuple(ids.shape)}")
    return ids


# Sun et al. 2024 ("Massive activations in large language models"): an activation is massive
# when its magnitude is ~100x the median; here the median |x_k| of the same vector, which keeps
# every count a sum over tokens (they compare with the layer's median over a batch).
MASSIVE_RATIO = 100.0


def massive_activations(x: torch.Tensor, ratio: float = MASSIVE_RATIO) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` [n, L, d] -> (flagged [n, L]: the vector's largest |x_k| exceeds ``ratio`` x its
    median |x_k|; dim [n, L]: the dimension holding that largest |x_k|), a layer at a time so
    that |x| and the median's copy stay [n, d]."""
    n_layers = x.shape[1]
    dim = torch.empty(x.shape[:2], dtype=torch.long, device=x.device)
    flagged = torch.empty(x.shape[:2], dtype=torch.bool, device=x.device)
    for layer in range(n_layers):
        mag = x[:, layer].abs()
        top, dim[:, layer] = mag.max(dim=-1)
        flagged[:, layer] = top > ratio * mag.median(dim=-1).values
    return flagged, dim
