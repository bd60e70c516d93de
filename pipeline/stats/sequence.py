"""One sequence at a time into every statistic family: the code both routes share.

The two-step route (``pipeline.stats.store_stats``) reads a stored run and the
in-pass route (the extraction's shard runner) holds the captures in memory; both
build a ``WalkStats`` per shard, call ``update_sequence`` once per sequence and
``write_shard_partials`` at the end, so their partial results are the same
computation on the same values.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.stats.attention import AttentionStats
from pipeline.stats.base import Accumulator
from pipeline.stats.config import StatsConfig
from pipeline.stats.decoding import DecodingWalk
from pipeline.stats.encoding import EncodingWalk
from pipeline.stats.geometry import Geometry
from pipeline.stats.lens import LogitLens
from pipeline.store import layout as store_layout

# Families that read the unembedding (next-token statistics); encoders without an LM head skip them.
NEEDS_UNEMBED = ("logit_lens", "decoding")
# The sequence whose vectors a shard keeps for the report's trajectory and similarity map,
# so that a stats-only store (no activations) can still draw them; at most SAMPLE_TOKENS.
SAMPLE_SEQ = 0
SAMPLE_TOKENS = 128


@dataclass
class ModelHead:
    """What the statistics need from a model besides its activations.

    ``unembed`` W [V, d] and ``bias`` [V] are float32 (converted once here: the
    families would otherwise upcast a bf16 matrix on every call); ``final_norm``
    maps float32 [m, d] to float32 [m, d]; ``n_layers`` counts blocks.
    """

    n_layers: int
    d_model: int
    causal: bool
    unembed: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None

    def to(self, device: torch.device | str) -> ModelHead:
        """The same head on ``device`` (the final norm module moves too)."""
        device = torch.device(device)
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        norm = self.final_norm
        if isinstance(norm, Float32Norm):
            norm = Float32Norm(norm.module.to(device))
        return ModelHead(self.n_layers, self.d_model, self.causal, move(self.unembed), move(self.bias), norm)

    @classmethod
    def from_loaded(cls, loaded, device: torch.device | str | None = None) -> ModelHead:
        """From a ``pipeline.models.loading.LoadedModel`` (its LM head and final norm)."""
        device = torch.device(device) if device is not None else loaded.device
        head = loaded.model.get_output_embeddings() if loaded.family.causal else None
        unembed = bias = None
        if head is not None and getattr(head, "weight", None) is not None:
            unembed = head.weight.detach().to(device=device, dtype=torch.float32)
            if getattr(head, "bias", None) is not None:
                bias = head.bias.detach().to(device=device, dtype=torch.float32)
        norm = None
        if loaded.family.final_norm:
            norm = Float32Norm(loaded.trunk.get_submodule(loaded.family.final_norm))
        return cls(loaded.n_layers, loaded.d_model, loaded.family.causal, unembed, bias, norm)


class Float32Norm:
    """The final norm as a float32 -> float32 function whatever the module's dtype and
    device; a class (not a closure) so a ModelHead pickles to worker processes."""

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        param = next(self.module.parameters(), None)
        dtype, device = (param.dtype, param.device) if param is not None else (torch.float32, x.device)
        with torch.no_grad():
            # .forward, not __call__: during an extraction the norm carries capture hooks,
            # which must not see the statistics' calls
            out = self.module.forward(x.to(device=device, dtype=dtype))
        return out.to(device=x.device, dtype=torch.float32)


def required_sites(families: Sequence[str]) -> list[str]:
    """Capture sites the families need (what a stats-only extraction must capture)."""
    sites = []
    if set(families) & {"encoding", "geometry", "logit_lens", "attention"}:
        sites += ["resid_pre.0", "resid_post"]  # attention: each layer's input, for the association bias
    if "decoding" in families:
        sites.append("final")
    if "attention" in families:
        sites.append("attn_pattern")
    return sites


def next_token_ids(token_ids: torch.Tensor, doc_ids: torch.Tensor) -> torch.Tensor:
    """Each token's successor within the sequence, -1 for the last token and where the
    successor belongs to another document (packed sequences join documents)."""
    nxt = torch.full_like(token_ids, -1)
    if token_ids.numel() > 1:
        same = doc_ids[1:] == doc_ids[:-1]
        nxt[:-1] = torch.where(same, token_ids[1:], -1)
    return nxt


class WalkStats:
    """Every configured statistic family, fed one whole sequence per call.

    ``resid_layers`` are the residual indices along ``resid``'s layer axis (default
    0..n_layers: embeddings and every block's output); ``pattern_layers`` the model
    layer ids along the pattern's layer axis (None: no attention captured). The
    association bias of attention layer L uses resid at residual index L (the
    layer's input); it is skipped when resid lacks one of those indices.
    Families whose inputs are missing are left out and listed in ``skipped``.
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
    ):
        self.config, self.head = config, head
        self.resid_layers = list(range(head.n_layers + 1) if resid_layers is None else resid_layers)
        self.pattern_layers = None if pattern_layers is None else list(pattern_layers)
        self.pattern_heads = None if pattern_heads is None else list(pattern_heads)
        self.has_final = has_final
        self.skipped: dict[str, str] = {}
        can_final = has_final or (has_resid and self.resid_layers[-1] == head.n_layers)
        why_not = {
            "encoding": None if has_resid and len(self.resid_layers) >= 2 else "needs resid with >= 2 layers",
            "geometry": None if has_resid else "needs resid",
            "logit_lens": None if has_resid else "needs resid",
            "decoding": None if can_final else "needs final (or resid of the last block)",
            "attention": None if self.pattern_layers else "needs attention patterns",
        }
        for family in NEEDS_UNEMBED:
            if head.unembed is None and why_not[family] is None:
                why_not[family] = "the model has no unembedding (LM head)"
        self.families = tuple(f for f in config.families if why_not[f] is None)
        self.skipped = {f: why_not[f] for f in config.families if why_not[f] is not None}
        ids = [shard_ids] if isinstance(shard_ids, str) else list(shard_ids)
        classes = {"encoding": EncodingWalk, "logit_lens": LogitLens, "decoding": DecodingWalk,
                   "attention": AttentionStats, "geometry": Geometry}
        self.accumulators: dict[str, Accumulator] = {f: classes[f](config, ids) for f in self.families}
        self._assoc_index = None
        if self.pattern_layers and all(layer in self.resid_layers for layer in self.pattern_layers):
            self._assoc_index = [self.resid_layers.index(layer) for layer in self.pattern_layers]
        self.n_tokens = 0
        self.n_sequences = 0
        self.seconds: dict[str, float] = dict.fromkeys(self.families, 0.0)  # CPU timings (asynchronous on GPUs)
        self.sample: dict[str, np.ndarray] | None = None

    @classmethod
    def for_layout(cls, config: StatsConfig, head: ModelHead, shard_index: int, layout) -> WalkStats:
        """For an extraction shard: laid out like a ``pipeline.models.capture.CaptureLayout``."""
        return cls(
            config, head, shard_label(shard_index),
            resid_layers=list(layout.residual) or None, pattern_layers=list(layout.pattern_layers) or None,
            pattern_heads=None if layout.heads is None else list(layout.heads),
            has_resid=bool(layout.residual), has_final=bool(layout.final),
        )

    def update_sequence(
        self,
        resid: torch.Tensor | None,
        final: torch.Tensor | None,
        token_ids: torch.Tensor,
        doc_ids: torch.Tensor,
        pattern: torch.Tensor | None = None,
        seq_id: int | None = None,
    ) -> None:
        """One whole sequence, unpadded, in position order.

        ``resid`` [n, len(resid_layers), d]; ``final`` [n, d] after the final norm
        (None: derived as final_norm(resid of the last block)); ``token_ids``,
        ``doc_ids`` [n]; ``pattern`` [len(pattern_layers), H, n, n] (query, key).
        Any float dtype (upcast to float32 here); values should be what the store
        holds: the in-pass caller rounds to the store dtype (module docstring).
        ``seq_id`` lets the shard that owns ``config``'s sample sequence keep it.
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
        nxt = next_token_ids(tok, docs)
        head = self.head
        for family in self.families:
            t0 = time.perf_counter()
            acc = self.accumulators[family]
            if family == "encoding":
                acc.update(resid)
            elif family == "geometry":
                acc.update(resid, tok)
            elif family == "logit_lens":
                acc.update(resid, nxt, head.unembed, head.final_norm, head.bias)
            elif family == "decoding":
                final = self._final_from_resid(resid) if final is None else final
                acc.update(final, nxt.to(final.device), head.unembed, docs.to(final.device), None, head.bias)
            elif family == "attention" and pattern is not None:
                if tuple(pattern.shape[-2:]) != (n, n):
                    raise ValueError(f"pattern must be cropped to the sequence, [..., {n}, {n}]; "
                                     f"got {tuple(pattern.shape)}")
                inputs = None
                if self._assoc_index is not None and resid is not None:
                    inputs = resid[:, self._assoc_index].transpose(0, 1)  # [L_att, n, d]: each layer's input
                acc.update(pattern, head.causal, inputs, self.pattern_layers)
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

    def _final_from_resid(self, resid: torch.Tensor | None) -> torch.Tensor:
        if resid is None or self.resid_layers[-1] != self.head.n_layers:
            raise ValueError("the decoding walk needs final or resid of the last block")
        last = resid[:, -1]
        return last if self.head.final_norm is None else self.head.final_norm(last)

    def partials(self) -> dict[str, Accumulator]:
        return dict(self.accumulators)


def shard_label(index: int) -> str:
    """The shard id every partial of shard ``index`` carries (merging refuses duplicates)."""
    return store_layout.shard_name(index)
