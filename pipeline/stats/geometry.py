"""Geometry of the representation space per layer (Ethayarajh 2019 and friends).

All from additive sums, so shards merge exactly:

- anisotropy: mean cosine between vectors of different tokens,
  (|sum u|^2 - n) / (n (n - 1)) with u = x / |x|
- self-similarity of token type w: the same formula over the occurrences of w
  (types listed in ``config.self_sim_types`` with >= 2 occurrences); the layer
  figure is the unweighted mean over types, and ``*_adj`` subtracts anisotropy
- intra-sentence similarity: mean over sequences (>= 2 tokens) of the mean cosine
  of each token with its sequence's mean vector; the sequence is the context unit
- mean vector norm, norm of the mean vector
- covariance spectrum from sum x and sum x x^T (float64), effective dimension
  exp(entropy of the normalised eigenvalues) and participation ratio
- massive activations (Sun et al. 2024): a token's vector at a layer has one when
  its largest |x_k| exceeds `massive_ratio` (100) times the median |x_k| of the same vector
  (they compare with the layer's median magnitude; the vector's own median keeps the
  counts additive); per layer the number of such tokens, and which dimensions hold
  their largest activation
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from embwalk.stats.base import Accumulator
from embwalk.stats.inputs import SequenceInputs
from embwalk.stats.ops import as_ids, cosine, f32, group_index, massive_activations, unit

_FLUSH_TOKENS = 2048  # fast_moments: tokens of float32 products summed before a float64 add

LAYER_SCHEMA = pa.schema(
    [
        ("layer", pa.int64()), ("n", pa.int64()), ("anisotropy", pa.float64()),
        ("mean_norm", pa.float64()), ("norm_of_mean", pa.float64()),
        ("intra_sim", pa.float64()), ("intra_sim_adj", pa.float64()), ("n_seqs", pa.int64()),
        ("self_sim", pa.float64()), ("self_sim_adj", pa.float64()), ("n_types", pa.int64()),
        ("total_variance", pa.float64()), ("eff_dim", pa.float64()),
        ("participation_ratio", pa.float64()),
        ("massive_tokens", pa.int64()), ("massive_share", pa.float64()),
        ("massive_dim", pa.int64()), ("massive_dim_tokens", pa.int64()),
    ]
)
SELF_SIM_SCHEMA = pa.schema(
    [("layer", pa.int64()), ("token_id", pa.int64()), ("n", pa.int64()),
     ("self_sim", pa.float64())]
)
SPECTRUM_SCHEMA = pa.schema(
    [("layer", pa.int64()), ("index", pa.int64()), ("eigenvalue", pa.float64()),
     ("fraction", pa.float64())]
)


def pairwise_mean_cos(usum: np.ndarray, n: np.ndarray) -> np.ndarray:
    """Mean cosine over distinct pairs from a sum of n unit vectors (last axis = d)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = ((usum * usum).sum(-1) - n) / (n * (n - 1.0))
    return np.where(n >= 2, out, np.nan)


class Geometry(Accumulator):
    """Per-layer anisotropy, self-similarity, intra-sentence similarity, norms, spectrum."""

    family = "geometry"
    labels = ("n_layers", "type_ids", "cov_layers")
    needs_resid = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._centre: torch.Tensor | None = None  # pending centred second moments, see _second_moments

    def update_from(self, inputs: SequenceInputs) -> None:
        self.update(inputs.rows(inputs.resid), inputs.rows(inputs.token_ids))

    def update(
        self,
        resid: torch.Tensor,
        token_ids: torch.Tensor,
        seq_ids: torch.Tensor | None = None,
    ) -> None:
        """``resid`` [n, L+1, d]; ``token_ids`` [n]; ``seq_ids`` [n] when the call holds
        several sequences (each sequence must be complete within the call)."""
        if resid.ndim != 3:
            raise ValueError(f"resid must be [n_tok, L+1, d], got shape {tuple(resid.shape)}")
        n, n_layers, d = resid.shape
        dev = resid.device
        tok = as_ids(token_ids, n, dev, "token_ids")
        self._init(n_layers, d)
        x = f32(resid)
        norms = x.norm(dim=-1)  # [n, L+1]
        u = unit(x)
        self.state["n"] += n
        if self.config.fast_moments:
            # float32 sums (torch sums float32 pairwise: ~1e-7 relative), added in float64;
            # dtype=float64 would first copy the whole [n, L+1, d] block to float64
            self._add("usum", u.sum(0).double())
            self._add("xsum", x.sum(0).double())
            self._add("norm_sum", norms.sum(0).double())
            self._second_moments(x)
        else:
            self._add("usum", u.sum(0, dtype=torch.float64))
            self._add("xsum", x.sum(0, dtype=torch.float64))
            self._add("norm_sum", norms.sum(0, dtype=torch.float64))
            # Second moments in float64: the covariance is E[xx^T] - mu mu^T, and residual
            # streams have large mean components that would cancel float32 precision away.
            cov_l = torch.as_tensor(self.state["cov_layers"], device=dev)
            xc = x[:, cov_l].double().transpose(0, 1)  # [Lc, n, d]
            self._add("xxt", xc.transpose(1, 2) @ xc)
        self._self_sim(u, tok)
        self._intra(x, norms, seq_ids)
        self._massive(x)

    def _massive(self, x: torch.Tensor) -> None:
        """Tokens whose largest |x_k| at a layer exceeds config.massive_ratio x the vector's median |x_k|."""
        n_layers, d = x.shape[1], x.shape[2]
        flagged, dim = massive_activations(x, self.config.massive_ratio)
        self._add("massive_n", flagged.sum(0))
        where = (dim + torch.arange(n_layers, device=x.device) * d)[flagged]
        self._add("massive_dim", torch.bincount(where, minlength=n_layers * d).view(n_layers, d))

    def _second_moments(self, x: torch.Tensor) -> None:
        """``fast_moments``: Sum of x x^T per covariance layer, formed as a float32 product
        of *centred* vectors (a float64 product costs 2-4x more). Residual streams have
        large mean components: uncentred float32 products would lose the covariance to
        cancellation, centred ones keep ~1e-7 of it. The centre r is the first call's mean;
        float32 products of up to ``_FLUSH_TOKENS`` tokens are summed before they are added
        in float64 (converting a d x d block per call would cost half as much as the product).
        The float64 state Sum x x^T = G + r s^T + s r^T + m r r^T (G = Sum (x-r)(x-r)^T,
        s = Sum (x-r), m tokens) is rebuilt on every flush, so merges see plain sums."""
        layers = self.state["cov_layers"]
        if layers.size == 0:
            return
        if layers.size == x.shape[1] and (layers == np.arange(x.shape[1])).all():
            xc = x  # every layer: no copy
        else:
            xc = x.index_select(1, torch.as_tensor(layers, device=x.device, dtype=torch.long))
        if self._centre is None:
            self._centre = xc.mean(0)  # [Lc, d]
            lc, d = xc.shape[1], xc.shape[2]
            self._gram = torch.zeros(lc, d, d, dtype=torch.float64, device=x.device)
            self._gram32 = torch.zeros(lc, d, d, dtype=torch.float32, device=x.device)
            self._shift = torch.zeros(lc, d, dtype=torch.float64, device=x.device)
            self._count, self._unflushed = 0, 0
        dx = (xc - self._centre).transpose(0, 1)  # [Lc, n, d]
        self._gram32.baddbmm_(dx.transpose(1, 2), dx)
        self._shift += dx.sum(1).double()
        self._count += x.shape[0]
        self._unflushed += x.shape[0]
        if self._unflushed >= _FLUSH_TOKENS:
            self._flush_gram()

    def _flush_gram(self) -> None:
        self._gram += self._gram32
        self._gram32.zero_()
        self._unflushed = 0

    def _fold_second_moments(self) -> None:
        if getattr(self, "_centre", None) is None:
            self._centre = None
            return
        self._flush_gram()
        r = self._centre.double().cpu().numpy()
        g, sh, m = self._gram.cpu().numpy(), self._shift.cpu().numpy(), float(self._count)
        self.state["xxt"] += g + r[:, :, None] * sh[:, None, :] + sh[:, :, None] * r[:, None, :] \
            + m * r[:, :, None] * r[:, None, :]
        self._centre = None

    def export_state(self) -> dict[str, np.ndarray]:
        self._fold_second_moments()
        return super().export_state()

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        self._centre = None
        super().import_state(state)

    def _self_sim(self, u: torch.Tensor, tok: torch.Tensor) -> None:
        types = torch.as_tensor(self.state["type_ids"], device=u.device)
        if types.numel() == 0:
            return
        slot = torch.searchsorted(types, tok).clamp_max(types.numel() - 1)
        hit = types[slot] == tok
        # straight into the device-side accumulator: no [K, L+1, d] temporary per call
        self._acc("type_usum", u.device).index_add_(0, slot[hit], u[hit].double())
        self._add("type_n", torch.bincount(slot[hit], minlength=types.numel()))

    def _intra(self, x: torch.Tensor, norms: torch.Tensor, seq_ids: torch.Tensor | None) -> None:
        n = x.shape[0]
        idx, n_seq = group_index(seq_ids, n, x.device)
        length = torch.bincount(idx, minlength=n_seq)
        mean = torch.zeros(n_seq, *x.shape[1:], device=x.device).index_add_(0, idx, x)
        mean = mean / length[:, None, None]
        cos = cosine(x, mean[idx], norms)  # [n, L+1]
        per_seq = torch.zeros(n_seq, x.shape[1], dtype=torch.float64, device=x.device)
        per_seq = per_seq.index_add_(0, idx, cos.double()) / length[:, None]
        keep = length >= 2  # a 1-token sequence is trivially similar to itself
        self._add("intra_sum", torch.nan_to_num(per_seq[keep]).sum(0))
        self._add("intra_n", keep.sum()[None])

    def _init(self, n_layers: int, d: int) -> None:
        if self.state:
            if self.state["usum"].shape != (n_layers, d):
                raise ValueError(f"resid is [*, {n_layers}, {d}], accumulator holds "
                                 f"{self.state['usum'].shape}")
            return
        cov = self.config.cov_layers
        if cov is None:
            cov_layers = np.arange(n_layers)
        else:
            if any(not -n_layers <= c < n_layers for c in cov):
                raise ValueError(f"cov_layers {list(cov)} out of range for {n_layers} layers")
            cov_layers = np.array(sorted({c % n_layers for c in cov}), np.int64)
        types = np.asarray(self.config.self_sim_types, np.int64)
        self.state = {
            "n_layers": np.array([n_layers], np.int64),
            "type_ids": types,
            "cov_layers": cov_layers.astype(np.int64),
            "n": np.zeros(1, np.int64),
            "usum": np.zeros((n_layers, d)),
            "xsum": np.zeros((n_layers, d)),
            "norm_sum": np.zeros(n_layers),
            "xxt": np.zeros((len(cov_layers), d, d)),
            "type_usum": np.zeros((len(types), n_layers, d)),
            "type_n": np.zeros(len(types), np.int64),
            "intra_sum": np.zeros(n_layers),
            "intra_n": np.zeros(1, np.int64),
            "massive_n": np.zeros(n_layers, np.int64),
            "massive_dim": np.zeros((n_layers, d), np.int64),
        }

    def result(self) -> dict[str, pa.Table]:
        """``geometry``: one row per layer (see LAYER_SCHEMA);
        ``geometry_self_sim``: layer, token_id, n, self_sim (types with >= 2 occurrences);
        ``geometry_spectrum``: layer, index, eigenvalue, fraction (covariance, descending).
        Massive activations: ``massive_tokens`` per layer, their share, and ``massive_dim``, the
        dimension holding the largest activation of most of them (-1: none), for how many."""
        st = self.export_state()
        if not st:
            return {"geometry": LAYER_SCHEMA.empty_table(),
                    "geometry_self_sim": SELF_SIM_SCHEMA.empty_table(),
                    "geometry_spectrum": SPECTRUM_SCHEMA.empty_table()}
        n_layers = int(st["n_layers"][0])
        n = float(st["n"][0])
        layers = np.arange(n_layers)
        aniso = pairwise_mean_cos(st["usum"], np.float64(n))
        with np.errstate(invalid="ignore", divide="ignore"):
            intra = st["intra_sum"] / st["intra_n"][0]
            mean_norm = st["norm_sum"] / n
            norm_of_mean = np.linalg.norm(st["xsum"], axis=-1) / n
        # self-similarity: [types, layers]
        tn = st["type_n"].astype(np.float64)
        ts = pairwise_mean_cos(st["type_usum"], tn[:, None])
        seen = st["type_n"] >= 2
        n_types = int(seen.sum())
        self_sim = ts[seen].mean(0) if n_types else np.full(n_layers, np.nan)
        # covariance spectrum
        total = np.full(n_layers, np.nan)
        eff = np.full(n_layers, np.nan)
        part = np.full(n_layers, np.nan)
        spec_cols: list[list[np.ndarray]] = [[], [], [], []]
        if n >= 2:
            for row, layer in enumerate(st["cov_layers"]):
                mu = st["xsum"][layer] / n
                cov = (st["xxt"][row] - n * np.outer(mu, mu)) / (n - 1.0)
                lam = np.clip(np.linalg.eigvalsh((cov + cov.T) / 2)[::-1], 0.0, None)
                tot = lam.sum()
                frac = lam / tot if tot > 0 else np.full_like(lam, np.nan)
                pos = frac[frac > 0]
                total[layer] = tot
                eff[layer] = np.exp(-(pos * np.log(pos)).sum())
                part[layer] = tot**2 / (lam**2).sum() if tot > 0 else np.nan
                for col, v in zip(spec_cols, (np.full(len(lam), layer), np.arange(len(lam)),
                                              lam, frac), strict=True):
                    col.append(v)
        geometry = pa.table(
            [layers, np.full(n_layers, int(n)), aniso, mean_norm, norm_of_mean, intra,
             intra - aniso, np.full(n_layers, int(st["intra_n"][0])), self_sim,
             self_sim - aniso, np.full(n_layers, n_types), total, eff, part,
             st["massive_n"], st["massive_n"] / n if n else np.full(n_layers, np.nan),
             np.where(st["massive_n"] > 0, st["massive_dim"].argmax(-1), -1), st["massive_dim"].max(-1)],
            schema=LAYER_SCHEMA,
        )
        ids = st["type_ids"][seen]
        self_tab = pa.table(
            [np.repeat(layers, len(ids)), np.tile(ids, n_layers),
             np.tile(st["type_n"][seen], n_layers), ts[seen].T.reshape(-1)],
            schema=SELF_SIM_SCHEMA,
        )
        spectrum = pa.table(
            [np.concatenate(c) if c else np.zeros(0) for c in spec_cols], schema=SPECTRUM_SCHEMA
        )
        return {"geometry": geometry, "geometry_self_sim": self_tab, "geometry_spectrum": spectrum}
