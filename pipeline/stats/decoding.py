"""Decoding walk: the final context vector c_t against the unembedding vectors.

p_t = softmax(c_t @ W.T + b). Per token:

- ``cos_unembed``  cos(c_t, W[next])       ``dot_unembed``  c_t . W[next]
- ``rank``, ``prob``, ``logprob``  of the actual next token under p_t
- ``entropy``  H(p_t)                        (all tokens)
- ``nucleus``  size of the top-p nucleus: the fewest tokens whose mass reaches p (all tokens)
- ``cos_step`` cos(c_t, c_{t+1}) for consecutive tokens of one sequence

plus a per-document table of the path log-probability sum_t log p_t(next_t),
attributed to the document of token t. Tokens with next id -1 are left out of
the next-token stats; a caller that does not want predictions across document
boundaries of a packed sequence marks those with -1 too.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from embwalk.stats import hist
from embwalk.stats.base import Accumulator
from embwalk.stats.head import logits as _logits
from embwalk.stats.inputs import SequenceInputs
from embwalk.stats.lens import next_token_scores
from embwalk.stats.ops import as_ids, cosine, f32, same_sequence_pairs

_STATS = {
    "cos_unembed": "cos",
    "dot_unembed": "dot",
    "rank": "rank",
    "prob": "prob",
    "logprob": "logprob",
    "entropy": "entropy",
    "nucleus": "nucleus",
    "cos_step": "cos",
}
_NEXT_TOKEN = ("cos_unembed", "dot_unembed", "rank", "prob", "logprob")
_DOCS = ("doc_id", "doc_n", "doc_logprob")

DOCS_SCHEMA = pa.schema(
    [
        ("doc_id", pa.int64()),
        ("n_pred", pa.int64()),
        ("logprob", pa.float64()),
        ("mean_logprob", pa.float64()),
        ("perplexity", pa.float64()),
    ]
)


def nucleus_size(logp: torch.Tensor, p: float, first_k: int = 256) -> torch.Tensor:
    """Fewest top tokens whose probabilities sum to at least ``p`` (per row).

    A full sort of the vocabulary costs far more than the logits themselves, so the
    top ``first_k`` come first (``topk``); a row whose top-k mass reaches ``p`` has its
    answer among them (every later token has at least that much mass before it), the
    others retry with 16x more, up to the whole vocabulary. The top-k prefix is the
    sorted prefix, so the result equals the full sort's.
    """
    n, vocab = logp.shape
    out = torch.empty(n, dtype=torch.long, device=logp.device)
    rows = torch.arange(n, device=logp.device)
    k = min(first_k, vocab)
    while rows.numel():
        top = logp[rows].topk(k, dim=-1).values.exp() if k < vocab else \
            logp[rows].exp().sort(dim=-1, descending=True).values
        cum = top.cumsum(-1)
        mass_before = cum - top  # mass of the strictly-better tokens
        size = (mass_before < p).sum(-1).clamp(1, vocab)
        done = (cum[:, -1] >= p) | (k >= vocab)
        out[rows[done]] = size[done]
        rows = rows[~done]
        k = min(k * 16, vocab)
    return out


class DecodingWalk(Accumulator):
    """Binned per-token decoding statistics and per-document path log-probabilities."""

    family = "decoding"
    special = _DOCS
    needs_final_or_last_resid = True
    needs_unembed = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Per-call (doc ids, counts, sums) waiting to be folded into the doc table:
        # folding on every call would cost O(#docs) each time.
        self._docs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update_from(self, inputs: SequenceInputs) -> None:
        final = inputs.final
        self.update(final, inputs.next_ids.to(final.device), inputs.head.unembed,
                    inputs.doc_ids.to(final.device), None, inputs.head.bias, inputs.keep, inputs.head.softcap)

    def update(
        self,
        final: torch.Tensor,
        next_ids: torch.Tensor,
        unembed: torch.Tensor,
        doc_ids: torch.Tensor,
        seq_ids: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        softcap: float | None = None,
    ) -> None:
        """``final`` [n, d] context vectors (after the final norm) of whole sequences in
        order; ``next_ids`` [n] (-1 = none); ``unembed`` W [V, d]; ``doc_ids`` [n];
        ``seq_ids`` [n] when the call holds several sequences; ``bias`` [V]; ``keep`` [n]
        the tokens counted (None: all; a step c_t -> c_t+1 counts when both are kept); ``softcap``
        the model's final logit soft-capping (None: none)."""
        if final is None or final.ndim != 2:
            raise ValueError("the decoding walk needs final [n_tok, d] (after the final norm)")
        n, dev = final.shape[0], final.device
        nxt = as_ids(next_ids, n, dev, "next_ids")
        docs = as_ids(doc_ids, n, dev, "doc_ids")
        c = f32(final)
        w = f32(unembed).to(dev)
        b = None if bias is None else f32(bias).to(dev)
        self._init()
        kept = torch.ones(n, dtype=torch.bool, device=dev) if keep is None else keep.to(dev)
        valid = (nxt >= 0) & kept
        safe = nxt.clamp_min(0)
        w_next = w[safe]
        cols: dict[str, list[torch.Tensor]] = {k: [] for k in ("rank", "prob", "logprob",
                                                               "entropy", "nucleus")}
        for start in range(0, n, self.config.chunk_tokens):
            sl = slice(start, start + self.config.chunk_tokens)
            s = next_token_scores(_logits(c[sl], w, b, softcap), safe[sl])
            s["nucleus"] = nucleus_size(s.pop("logp"), self.config.nucleus_p)
            for k in cols:
                cols[k].append(s[k])
        values = {k: torch.cat(v) for k, v in cols.items()}
        values["dot_unembed"] = (c * w_next).sum(-1)
        values["cos_unembed"] = values["dot_unembed"] / (c.norm(dim=-1) * w_next.norm(dim=-1))
        for k, v in values.items():
            rows = valid if k in _NEXT_TOKEN else (None if keep is None else kept)
            self._add_binned(k, v[:, None], _STATS[k], rows)
        pairs = same_sequence_pairs(seq_ids, n, dev) & kept[1:] & kept[:-1]
        step = cosine(c[:-1], c[1:])[pairs]
        self._add_binned("cos_step", step[:, None], "cos")
        # Path log-probability per document: reduce on device, then queue the small table.
        d, lp = docs[valid], values["logprob"][valid].double()
        uniq, inv = torch.unique(d, return_inverse=True)
        sums = torch.zeros(len(uniq), dtype=torch.float64, device=dev).index_add_(0, inv, lp)
        counts = torch.bincount(inv, minlength=len(uniq))
        self._docs.append((uniq, counts, sums))

    def _init(self) -> None:
        if self.state:
            return
        for k, kind in _STATS.items():
            hist.init(self.state, k, 1, len(self.config.bins[kind].edges) - 1)
        self.state["doc_id"] = np.zeros(0, np.int64)
        self.state["doc_n"] = np.zeros(0, np.int64)
        self.state["doc_logprob"] = np.zeros(0, np.float64)

    def export_state(self) -> dict[str, np.ndarray]:
        if self._docs:
            self._fold([tuple(t.cpu().numpy() for t in part) for part in self._docs])
            self._docs = []
        return super().export_state()

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        self._docs = []
        super().import_state(state)

    def _fold(self, parts: list[tuple[np.ndarray, ...]]) -> None:
        s = self.state
        ids = np.concatenate([s["doc_id"]] + [p[0] for p in parts])
        ns = np.concatenate([s["doc_n"]] + [p[1] for p in parts])
        lps = np.concatenate([s["doc_logprob"]] + [p[2] for p in parts])
        uniq, inv = np.unique(ids, return_inverse=True)
        s["doc_id"] = uniq.astype(np.int64)
        s["doc_n"] = np.bincount(inv, weights=ns, minlength=len(uniq)).round().astype(np.int64)
        s["doc_logprob"] = np.bincount(inv, weights=lps, minlength=len(uniq))

    def _merge_state(self, theirs: dict[str, np.ndarray]) -> None:
        super()._merge_state(theirs)  # checks and adds everything but the doc table
        self._fold([tuple(theirs[k] for k in _DOCS)])  # a document may span shards

    def result(self) -> dict[str, pa.Table]:
        """``decoding``: stat, count, mean, std, q25, median, q75;
        ``decoding_hist``: stat, bin, lo, hi, count;
        ``decoding_docs``: doc_id, n_pred, logprob, mean_logprob, perplexity."""
        s = self.export_state()
        summary, histogram = self._binned_tables(
            {k: (kind, None) for k, kind in _STATS.items()}, group=None
        )
        ids = s.get("doc_id", np.zeros(0, np.int64))
        n = s.get("doc_n", np.zeros(0, np.int64))
        lp = s.get("doc_logprob", np.zeros(0))
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = lp / n
        docs = pa.table(
            [ids, n, lp, mean, np.exp(-mean)], schema=DOCS_SCHEMA
        )
        return {"decoding": summary, "decoding_hist": histogram, "decoding_docs": docs}
