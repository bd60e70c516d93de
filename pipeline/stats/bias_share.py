"""Bias share (family ``bias_share``): how much of each head's attention score the learned
position bias explains, in a model that has one (T5 family).

A T5 score is content + bias, q·k + b_h(key − query). For every layer whose input the store
holds (resid at residual index L = resid_pre.L), the head recomputes q and k from that input with
the layer's own norm and projections, and the bias from the model's kernel (``ModelHead.scores``,
pipeline/models/position_bias.py ``LayerScores``), and ``BiasShareStats`` adds, per head, the
float64 sums of the two terms over every visible query-key pair of the sequence: the table holds
var(content), var(bias), their covariance and the shares of var(score) = var(c) + var(b) + 2 cov,
both about each query row's means (``within_query``: what shapes the softmax, which ignores a
row's constant) and pooled over all pairs. Queries left out by the exclusion options are not
counted (their keys are). Stored values are float16 by default: q·k from rounded inputs.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from embwalk.models.position_bias import BiasShareStats
from embwalk.stats.base import Accumulator
from embwalk.stats.inputs import SequenceInputs

SUMS = {"count": (), "sums": (2,), "pooled": (3,), "within": (3,)}  # BiasShareStats' arrays, per head
KINDS = ("within_query", "pooled")
COLUMNS = ("var_content", "var_bias", "cov", "var_score", "bias_share", "content_share", "r2_bias")


class BiasShare(Accumulator):
    """Per (layer, head): the variance split of the attention score between content and bias."""

    family = "bias_share"
    labels = ("layers",)
    needs_resid = True
    needs_position_bias = True

    def update_from(self, inputs: SequenceInputs) -> None:
        scores = inputs.head.scores
        # positions along resid's layer axis that are some block's input: residual index L feeds block L
        slots = [p for p, index in enumerate(inputs.resid_layers) if index < scores.n_layers]
        self._init(np.asarray(slots, np.int64), scores.n_heads)
        valid = None if inputs.keep is None else inputs.keep[None]
        sums = {key: np.zeros_like(self.state[key]) for key in SUMS}
        for slot, p in enumerate(slots):
            one = BiasShareStats(scores.n_heads)
            one.update(scores.terms(inputs.resid_layers[p], inputs.resid[:, p]), valid)
            for key in SUMS:
                sums[key][slot] = getattr(one, key)
        for key, value in sums.items():
            self._add(key, torch.from_numpy(value))

    def _init(self, slots: np.ndarray, n_heads: int) -> None:
        if self.state:
            if not np.array_equal(self.state["layers"], slots):
                raise ValueError(f"resid holds layers {slots.tolist()}, this accumulator {self.state['layers']}")
            return
        self.state["layers"] = slots
        for key, tail in SUMS.items():
            self.state[key] = np.zeros((len(slots), n_heads, *tail))

    def result(self) -> dict[str, pa.Table]:
        """``bias_share``: layer (position along resid's layer axis, relabelled to the residual index L
        of the layer's input by the merge), head, kind, var_content, var_bias, cov, var_score,
        bias_share, content_share, r2_bias, pairs."""
        state = self.export_state()
        cols: dict[str, list] = {"layer": [], "head": [], "kind": [], **{c: [] for c in COLUMNS}, "pairs": []}
        for slot, layer in enumerate(state.get("layers", [])):
            one = BiasShareStats(state["count"].shape[1])
            for key in SUMS:
                setattr(one, key, state[key][slot])
            for kind in KINDS:
                summary = one.summary(kind)
                cols["layer"] += [int(layer)] * one.n_heads
                cols["head"] += list(range(one.n_heads))
                cols["kind"] += [kind] * one.n_heads
                for c in (*COLUMNS, "pairs"):
                    cols[c] += [float(v) for v in summary[c]]
        schema = pa.schema([("layer", pa.int64()), ("head", pa.int64()), ("kind", pa.string())]
                           + [(c, pa.float64()) for c in (*COLUMNS, "pairs")])
        return {"bias_share": pa.table(cols, schema=schema)}
