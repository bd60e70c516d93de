"""Logit lens: decode every layer's residual with the model's own unembedding.

p_l = softmax(final_norm(x_l) @ W.T + b), soft-capped where the model caps its logits
(Gemma 2's final_logit_softcapping). Per layer l = 0..L:

- ``rank``     rank of the actual next token under p_l (0 = top; ties count in its favour)
- ``prob``     p_l(next)
- ``logprob``  log p_l(next)
- ``entropy``  H(p_l) in nats                       (all tokens)
- ``kl``       KL(p_L || p_l) in nats, p_L = lens at the last layer   (all tokens)

Tokens with next id -1 (the last of a sequence) are left out of the next-token
stats only. Top-1 accuracy is the first bin ([0, 1)) of the rank histogram.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch

from embwalk.stats import hist
from embwalk.stats.base import Accumulator
from embwalk.stats.head import logits as _logits
from embwalk.stats.inputs import SequenceInputs
from embwalk.stats.ops import as_ids, f32

_STATS = {"rank": "rank", "prob": "prob", "logprob": "logprob", "entropy": "entropy", "kl": "kl"}
_NEXT_TOKEN = ("rank", "prob", "logprob")

Norm = Callable[[torch.Tensor], torch.Tensor]


def next_token_scores(logits: torch.Tensor, nxt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rank, log-prob, prob and entropy of each row's next token; ``nxt`` must be >= 0."""
    logp = torch.log_softmax(logits, dim=-1)
    z_next = logits.gather(-1, nxt[:, None])
    lp_next = logp.gather(-1, nxt[:, None])[:, 0]
    return {
        "logp": logp,
        "rank": (logits > z_next).sum(-1),
        "logprob": lp_next,
        "prob": lp_next.exp(),
        "entropy": -(logp.exp() * logp).sum(-1),
    }


class LogitLens(Accumulator):
    """Per-layer binned moments of the logit lens."""

    family = "logit_lens"
    labels = ("n_layers",)
    needs_resid = True
    needs_unembed = True

    def update_from(self, inputs: SequenceInputs) -> None:
        head = inputs.head
        self.update(inputs.rows(inputs.resid), inputs.rows(inputs.next_ids), head.unembed, head.final_norm, head.bias,
                    head.softcap)

    def update(
        self,
        resid: torch.Tensor,
        next_ids: torch.Tensor,
        unembed: torch.Tensor,
        final_norm: Norm | None = None,
        bias: torch.Tensor | None = None,
        softcap: float | None = None,
    ) -> None:
        """``resid`` [n, L+1, d]; ``next_ids`` [n] (-1 = none); ``unembed`` W [V, d];
        ``final_norm`` maps float32 [m, d] -> [m, d] (None = identity); ``bias`` [V];
        ``softcap``: the model's final logit soft-capping (None: none)."""
        if resid.ndim != 3:
            raise ValueError(f"resid must be [n_tok, L+1, d], got shape {tuple(resid.shape)}")
        n, n_layers, _ = resid.shape
        dev = resid.device
        nxt = as_ids(next_ids, n, dev, "next_ids")
        w = f32(unembed).to(dev)
        b = None if bias is None else f32(bias).to(dev)
        self._init(n_layers)
        norm = final_norm if final_norm is not None else (lambda t: t)
        # Logits are [chunk, V] per layer: chunk over tokens, loop over layers, to bound memory.
        for start in range(0, n, self.config.chunk_tokens):
            sl = slice(start, start + self.config.chunk_tokens)
            x = f32(resid[sl])
            c = x.shape[0]
            h = f32(norm(x.reshape(c * n_layers, -1))).reshape(c, n_layers, -1)
            valid = nxt[sl] >= 0
            safe = nxt[sl].clamp_min(0)
            cols: dict[str, list[torch.Tensor]] = {k: [] for k in _STATS}
            last = torch.log_softmax(_logits(h[:, -1], w, b, softcap), dim=-1)
            p_last = last.exp()
            for layer in range(n_layers):
                s = next_token_scores(_logits(h[:, layer], w, b, softcap), safe)
                for k in ("rank", "prob", "logprob", "entropy"):
                    cols[k].append(s[k])
                cols["kl"].append((p_last * (last - s["logp"])).sum(-1))
            for k, kind in _STATS.items():
                keep = valid if k in _NEXT_TOKEN else None
                self._add_binned(k, torch.stack(cols[k], 1), kind, keep)

    def _init(self, n_layers: int) -> None:
        if self.state:
            if int(self.state["n_layers"][0]) != n_layers:
                raise ValueError(f"resid has {n_layers} layers, accumulator has "
                                 f"{int(self.state['n_layers'][0])}")
            return
        self.state["n_layers"] = np.array([n_layers], np.int64)
        for k, kind in _STATS.items():
            hist.init(self.state, k, n_layers, len(self.config.bins[kind].edges) - 1)

    def result(self) -> dict[str, pa.Table]:
        """``logit_lens``: stat, layer, count, mean, std, q25, median, q75;
        ``logit_lens_hist``: stat, layer, bin, lo, hi, count."""
        n_layers = int(self.state["n_layers"][0]) if self.state else 0
        stats = {k: (kind, np.arange(n_layers)) for k, kind in _STATS.items()}
        summary, histogram = self._binned_tables(stats)
        return {"logit_lens": summary, "logit_lens_hist": histogram}
