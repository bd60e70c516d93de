"""Encoding walk: how each token's vector moves through depth (layer 0 .. L).

For x_l the residual vector of a token at layer l, per layer:

- ``norm``      |x_l|                                   layers 0..L
- ``step``      |x_{l+1} - x_l|  (the step out of l)    layers 0..L-1
- ``step_cos``  cos(x_{l+1} - x_l, x_l - x_{l-1})       layers 1..L-1 (the turn at l)
- ``cos_next``  cos(x_l, x_{l+1})                       layers 0..L-1
- ``cos_last``  cos(x_l, x_L)                           layers 0..L-1

and the trajectory as a path (its length and how it bends, per token):

- ``path_length``  sum of |x_{k+1} - x_k| for k < l    layers 1..L (at L: the whole walk)
- ``straightness`` |x_l - x_0| / path_length            layers 1..L (1 = a straight line)
- ``turn_angle``   angle in degrees between the steps into and out of l, the discrete
                   curvature: 0 = straight on, 180 = back      layers 1..L-1

Tokens are independent, so a call may hold any tokens of any sequences.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from embwalk.stats import hist
from embwalk.stats.base import Accumulator
from embwalk.stats.inputs import SequenceInputs
from embwalk.stats.ops import cosine, f32


def angle_degrees(a: torch.Tensor, b: torch.Tensor, na: torch.Tensor, nb: torch.Tensor) -> torch.Tensor:
    """The angle between a and b (last axis) in degrees, accurate near 0 and 180 too:
    2 atan2(|a' - b'|, |a' + b'|) of the unit vectors (Kahan), where acos(cos) loses half the
    digits (an angle of 0.01 degrees has a cosine 1 - 1.5e-8, below float32's resolution)."""
    ua, ub = a / na[..., None], b / nb[..., None]
    return torch.rad2deg(2.0 * torch.atan2((ua - ub).norm(dim=-1), (ua + ub).norm(dim=-1)))

# stat -> (bin kind, first layer, layers fewer than L+1)
_STATS = {
    "norm": ("norm", 0, 0),
    "step": ("step", 0, 1),
    "step_cos": ("cos", 1, 2),
    "cos_next": ("cos", 0, 1),
    "cos_last": ("cos", 0, 1),
    "path_length": ("step", 1, 1),
    "straightness": ("ratio", 1, 1),
    "turn_angle": ("angle", 1, 2),
}


class EncodingWalk(Accumulator):
    """Per-layer binned moments of the depth-wise trajectory of every token."""

    family = "encoding"
    labels = ("n_layers",)
    needs_resid = True
    min_resid_layers = 2

    def update_from(self, inputs: SequenceInputs) -> None:
        self.update(inputs.rows(inputs.resid))

    def update(self, resid: torch.Tensor) -> None:
        """``resid`` [n_tok, L+1, d]: residual stream, layer 0 = embeddings."""
        if resid.ndim != 3:
            raise ValueError(f"resid must be [n_tok, L+1, d], got shape {tuple(resid.shape)}")
        x = f32(resid)
        n_layers = x.shape[1]
        self._init(n_layers)
        # Cosines are dot products over norms. The polarization shortcut
        # (|a|^2 + |b|^2 - |a-b|^2) / 2 is cheaper on a CPU but cancels when the norms differ by
        # orders of magnitude (embeddings ~3 against ~900 later): errors of 1e-4 instead of ~1e-7.
        norms = x.norm(dim=-1)  # [n, L+1]
        steps = x[:, 1:] - x[:, :-1]  # [n, L, d]; steps[:, l] = x_{l+1} - x_l
        step_len = steps.norm(dim=-1)
        # (rounding can put a cosine a hair past +-1, outside the histogram's closed top bin)
        values = {
            "norm": norms,
            "step": step_len,
            "step_cos": cosine(steps[:, 1:], steps[:, :-1], step_len[:, 1:], step_len[:, :-1]).clamp(-1.0, 1.0),
            "cos_next": cosine(x[:, :-1], x[:, 1:], norms[:, :-1], norms[:, 1:]).clamp(-1.0, 1.0),
            "cos_last": cosine(x[:, :-1], x[:, -1:], norms[:, :-1], norms[:, -1:]).clamp(-1.0, 1.0),
        }
        length = step_len.double().cumsum(1).float()  # float64 running sum: L steps of any size
        values["path_length"] = length
        # the chord |x_l - x_0| a layer at a time: one more [n, L, d] difference would double the memory
        chords = [(x[:, layer] - x[:, 0]).norm(dim=-1) for layer in range(1, n_layers)]
        chord = torch.stack(chords, 1) if chords else norms[:, 1:]
        values["straightness"] = (chord / length).clamp(0.0, 1.0)
        values["turn_angle"] = angle_degrees(steps[:, 1:], steps[:, :-1], step_len[:, 1:], step_len[:, :-1])
        for name, v in values.items():
            self._add_binned(name, v, _STATS[name][0])

    def _init(self, n_layers: int) -> None:
        if self.state:
            if int(self.state["n_layers"][0]) != n_layers:
                raise ValueError(
                    f"resid has {n_layers} layers, this accumulator holds "
                    f"{int(self.state['n_layers'][0])}"
                )
            return
        self.state["n_layers"] = np.array([n_layers], np.int64)
        for name, (kind, _, fewer) in _STATS.items():
            n_bins = len(self.config.bins[kind].edges) - 1
            hist.init(self.state, name, max(n_layers - fewer, 0), n_bins)

    def layer_labels(self, name: str) -> np.ndarray:
        n_layers = int(self.state["n_layers"][0]) if self.state else 0
        _, first, fewer = _STATS[name]
        return np.arange(first, first + max(n_layers - fewer, 0))

    def result(self) -> dict[str, pa.Table]:
        """``encoding``: stat, layer, count, mean, std, q25, median, q75;
        ``encoding_hist``: stat, layer, bin, lo, hi, count."""
        stats = {name: (kind, self.layer_labels(name)) for name, (kind, _, _) in _STATS.items()}
        summary, histogram = self._binned_tables(stats)
        return {"encoding": summary, "encoding_hist": histogram}
