"""One sequence at a time into every statistic family: the code both routes share.

The two-step route (``embwalk.stats.from_store``) reads a stored run and the
in-pass route (``embwalk.stats.inpass``, an observer of the extraction's shard
runner) holds the captures in memory; both build a ``WalkStats`` per shard, call
``update_sequence`` once per sequence and ``write_shard_partials`` at the end, so
their partial results are the same computation on the same values.

Which families a shard computes, and why the others are skipped, follows from each
family's declared needs (``Accumulator.missing``) and what the shard offers (an
``Offer``); no family is named here.

*The same values* needs one convention: the store holds ``store.dtype``
(float16 by default) while the forward pass produces float32. The in-pass caller
rounds every capture to the store dtype first (``x.to(store_dtype).float()``) and
the two-step route feeds the stored values upcast to float32, so both see
identical float32 tensors.

A sequence's statistics belong to the shard that holds its first token (the shard
that stores its attention pattern), also when a document-mode sequence runs past
the shard's last row: the shard then reads or computes the whole sequence. Every
sequence is therefore counted exactly once, in one shard.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from embwalk.errors import EmbwalkError
from embwalk.stats.base import Accumulator
from embwalk.stats.config import StatsConfig
from embwalk.stats.families import ACCUMULATORS
from embwalk.stats.head import ModelHead
from embwalk.stats.inputs import ARRAYS, Offer, SequenceInputs, next_token_ids
from embwalk.stats.ops import massive_activations
from embwalk.store import layout as store_layout

# The sequence whose vectors a shard keeps for the report's trajectory and similarity map,
# so that a stats-only store (no activations) can still draw them; at most SAMPLE_TOKENS.
SAMPLE_SEQ = 0
SAMPLE_TOKENS = 128


def plan_families(families: Sequence[str], offer: Offer) -> tuple[tuple[str, ...], dict[str, str]]:
    """The ``families`` a shard offering ``offer`` can compute, and why each other one cannot."""
    why_not = {f: ACCUMULATORS[f].missing(offer) for f in families}
    return tuple(f for f in families if why_not[f] is None), {f: w for f, w in why_not.items() if w is not None}


class WalkStats:
    """Every configured statistic family, fed one whole sequence per call.

    ``resid_layers`` are the residual indices along ``resid``'s layer axis (default
    0..n_layers: embeddings and every block's output); ``pattern_layers`` the model
    layer ids along the pattern's layer axis (None: no attention captured). The
    association bias of attention layer L uses resid at residual index L (the
    layer's input); it is skipped when resid lacks one of those indices.
    Families whose inputs are missing are left out and listed in ``skipped``
    (``plan_families``).
    """

    def __init__(
        self,
        config: StatsConfig,
        head: ModelHead,
        shard_ids: Sequence[str] | str = (),
        *,
        resid_layers: Sequence[int] | None = None,
        pattern_layers: Sequence[int] | None = None,
        pattern_heads: Sequence[int] | None = None,
        has_resid: bool = True,
        has_final: bool = True,
        columns: Sequence[str] = (),
        final_from_resid: bool = True,
    ):
        self.config, self.head = config, head
        self.resid_layers = list(range(head.n_layers + 1) if resid_layers is None else resid_layers)
        self.pattern_layers = None if pattern_layers is None else list(pattern_layers)
        self.pattern_heads = None if pattern_heads is None else list(pattern_heads)
        self.has_final = has_final
        self.offer = Offer(
            head.n_layers, tuple(self.resid_layers) if has_resid else None, has_final,
            tuple(self.pattern_layers) if self.pattern_layers else None, head.unembed is not None,
            columns=frozenset(columns), attention=head.attention, position_bias=head.scores is not None,
            final_from_resid=final_from_resid,
        )
        self.families, self.skipped = plan_families(config.families, self.offer)
        ids = [shard_ids] if isinstance(shard_ids, str) else list(shard_ids)
        self.accumulators: dict[str, Accumulator] = {f: ACCUMULATORS[f](config, ids) for f in self.families}
        # the token-table columns the families read (update_sequence's ``columns``)
        self.columns = sorted({c for acc in self.accumulators.values() for c in acc.needs_columns})
        # positions along resid's layer axis of each pattern layer's input (the association bias)
        self.assoc_index = None
        if self.offer.layer_inputs:
            self.assoc_index = [self.resid_layers.index(layer) for layer in self.pattern_layers]
        if config.exclude_massive and self.offer.resid_layers is None:
            raise EmbwalkError("stats.exclude_massive needs the residual stream (resid) to find massive activations")
        self.n_tokens = 0
        self.n_excluded = 0  # tokens left out by exclude_positions / exclude_massive
        self.n_sequences = 0
        self.seconds: dict[str, float] = dict.fromkeys(self.families, 0.0)  # CPU timings (asynchronous on GPUs)
        self.sample: dict[str, np.ndarray] | None = None

    @classmethod
    def for_layout(cls, config: StatsConfig, head: ModelHead, shard_index: int, layout,
                   columns: Sequence[str] = ()) -> WalkStats:
        """For an extraction shard: laid out like a ``embwalk.models.capture.CaptureLayout``;
        ``columns``: the token-table columns its rows have beyond the token ids. ``final`` is the
        captured one only (never the final norm re-applied to the last block: check_capture), and
        a family the capture cannot feed is listed in ``skipped`` with the reason."""
        return cls(
            config, head, shard_label(shard_index),
            resid_layers=list(layout.residual) or None, pattern_layers=list(layout.pattern_layers) or None,
            pattern_heads=None if layout.heads is None else list(layout.heads),
            has_resid=bool(layout.residual), has_final=bool(layout.final), columns=columns, final_from_resid=False,
        )

    def reads(self) -> list[str]:
        """The arrays (resid, final, pattern) the families computed here read from the shard."""
        read = {name for acc in self.accumulators.values() for name in acc.reads(self.offer)}
        return [name for name in ARRAYS if name in read]

    def update_sequence(
        self,
        resid: torch.Tensor | None,
        final: torch.Tensor | None,
        token_ids: torch.Tensor,
        doc_ids: torch.Tensor,
        pattern: torch.Tensor | None = None,
        seq_id: int | None = None,
        columns: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """One whole sequence, unpadded, in position order.

        ``resid`` [n, len(resid_layers), d]; ``final`` [n, d] after the final norm
        (None: derived as final_norm(resid of the last block)); ``token_ids``,
        ``doc_ids`` [n]; ``pattern`` [len(pattern_layers), H, n, n] (query, key).
        Any float dtype (upcast to float32 here); values should be what the store
        holds: the in-pass caller rounds to the store dtype (module docstring).
        ``seq_id`` lets the shard that owns ``config``'s sample sequence keep it; ``columns``
        the sequence's rows of the token-table columns in ``self.columns`` (``column_tensor``).
        """
        tok = torch.as_tensor(token_ids).long()
        docs = torch.as_tensor(doc_ids).long()
        n = tok.shape[0]
        if n == 0:
            return
        # float32 and contiguous: a permuted view (the in-pass buffers) would reduce in
        # another order and round float32 values differently from the stored route
        resid, final, pattern = (None if t is None else t.detach().float().contiguous()
                                 for t in (resid, final, pattern))
        if resid is not None:
            tok = tok.to(resid.device)
            docs = docs.to(resid.device)
        keep = self._kept(n, resid, tok.device)
        if keep is not None:
            self.n_excluded += int(n - keep.sum())
        inputs = SequenceInputs(
            tok, docs, next_token_ids(tok, docs), self.head, resid, final, pattern,
            self.resid_layers, self.pattern_layers, self.assoc_index, keep,
            None if columns is None else {k: v.to(tok.device) for k, v in columns.items()},
        )
        for family, acc in self.accumulators.items():
            t0 = time.perf_counter()
            acc.update_from(inputs)
            self.seconds[family] += time.perf_counter() - t0
        if seq_id == SAMPLE_SEQ and resid is not None:
            self.sample = {
                "seq_id": np.array([seq_id], np.int64),
                "token_ids": tok[:SAMPLE_TOKENS].cpu().numpy().astype(np.int64),
                "doc_ids": docs[:SAMPLE_TOKENS].cpu().numpy().astype(np.int64),
                "resid_layers": np.asarray(self.resid_layers, np.int64),
                "resid": resid[:SAMPLE_TOKENS].half().cpu().numpy(),  # for plots only
            }
        self.n_tokens += n
        self.n_sequences += 1

    def _kept(self, n: int, resid: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The tokens of an ``n``-token sequence the statistics count (None: all): positions in
        ``config.exclude_positions`` and, with ``exclude_massive``, tokens with a massive
        activation at any residual layer held."""
        if not self.config.excludes:
            return None
        keep = torch.ones(n, dtype=torch.bool, device=device)
        positions = [p for p in self.config.exclude_positions if p < n]
        keep[positions] = False
        if self.config.exclude_massive:
            keep &= ~massive_activations(resid, self.config.massive_ratio)[0].any(dim=1).to(device)
        return keep

    def partials(self) -> dict[str, Accumulator]:
        return dict(self.accumulators)


def shard_label(index: int) -> str:
    """The shard id every partial of shard ``index`` carries (merging refuses duplicates)."""
    return store_layout.shard_name(index)
