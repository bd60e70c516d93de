"""Learned relative position bias (T5 family): its kernel, the score's two terms, and their variance shares.

T5's attention score is ``q·k + b(k - q) + mask``: no 1/sqrt(d) scaling (T5Attention.scaling
is 1.0), plus a learned per-head bias of the bucketed offset key − query. T5 and MT5 learn one
bias per stack, in block 0's self-attention, and every later block reuses it; UMT5 learns one
per layer. The encoder's buckets are bidirectional; the decoder's are unidirectional (every
future offset shares offset 0's bucket, and is masked anyway). Cross-attention has no position
bias at all: transformers passes it a zero ``position_bias``.

- ``position_kernel``: a head's bias as a function of offset, from the model's own compute_bias;
  ``checkpoint_decoder`` gives it the decoder of a checkpoint whose encoder alone was loaded.
- ``score_terms``: the content term, bias term and visibility of one attention call, from the
  very tensors the model attends with (seq2seq.py calls it from inside the attention function).
- ``BiasShareStats``: per head, how much of the score's variance over visible query-key pairs
  the bias explains, as mergeable float64 sums; ``LayerScores`` recomputes the terms from a
  layer's stored input (the ``bias_share`` statistic, pipeline/stats/bias_share.py).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

STACKS = ("enc", "dec")


def kernel_offsets(max_len: int) -> np.ndarray:
    """The offsets (key − query) along a kernel's last axis: −(max_len − 1) .. max_len − 1."""
    return np.arange(-(max_len - 1), max_len)


def bias_module(model: torch.nn.Module, stack: str, layer: int | None = None) -> torch.nn.Module:
    """The self-attention module whose ``relative_attention_bias`` scores ``stack``'s layer ``layer``."""
    if stack not in STACKS:
        raise ValueError(
            f"no position bias for stack {stack!r}: T5 cross-attention has none (its score is q·k plus the "
            f"padding mask); stacks with one: {STACKS}"
        )
    attns = [block.layer[0].SelfAttention for block in _stack(model, stack).block]
    owners = bias_layers(model, stack)
    if layer is None:
        if len(owners) != 1:
            raise ValueError(f"{type(model).__name__} learns a position bias in every layer: pass layer=")
        return attns[owners[0]]
    if not -len(attns) <= layer < len(attns):
        raise ValueError(f"layer {layer} is past the {stack} stack's depth ({len(attns)} layers)")
    layer %= len(attns)
    # T5Stack hands the bias block 0 computed to every later block.
    return attns[max(i for i in owners if i <= layer)]


def bias_layers(model: torch.nn.Module, stack: str) -> list[int]:
    """The layers of ``stack`` that learn a position bias: [0] in T5 and MT5, every layer in UMT5."""
    blocks = _stack(model, stack).block
    return [i for i, block in enumerate(blocks) if block.layer[0].SelfAttention.has_relative_attention_bias]


_DECODER_BIAS = re.compile(r"^decoder\.block\.(\d+)\.layer\.0\.SelfAttention\.relative_attention_bias\.weight$")


def checkpoint_decoder(encoder_model: torch.nn.Module, files: Sequence[Path]) -> torch.nn.Module | None:
    """A stand-in model holding only the decoder of the checkpoint ``encoder_model`` (T5EncoderModel
    etc.) was loaded from, enough for ``position_kernel(..., "dec", ...)``; None when the checkpoint
    has no decoder (an encoder-only save).

    Cheap whatever the model's size: the decoder stack is built on the meta device from the
    encoder's own stack class (no memory; its bucketing and compute_bias are the model's code),
    and only its bias tables, a few kB, are read from the safetensors ``files``. Nothing else in
    it holds values.
    """
    from safetensors import safe_open

    tables = {}
    for path in files:
        with safe_open(str(path), "pt") as fh:
            for key in fh.keys():
                m = _DECODER_BIAS.match(key)
                if m:
                    tables[int(m[1])] = fh.get_tensor(key)
    if not tables:
        return None
    config = copy.deepcopy(encoder_model.config)
    config.is_decoder, config.num_layers = True, config.num_decoder_layers  # as T5ForConditionalGeneration does
    with torch.device("meta"):
        decoder = type(_stack(encoder_model, "enc"))(config)
    holder = torch.nn.ModuleDict({"decoder": decoder})
    if sorted(tables) != bias_layers(holder, "dec"):
        raise ValueError(f"the checkpoint's decoder learns a position bias in layers {sorted(tables)}, "
                         f"not in {bias_layers(holder, 'dec')} as {type(decoder).__name__} does")
    dtype = bias_module(encoder_model, "enc", 0).relative_attention_bias.weight.dtype  # as the encoder was loaded
    for i, weight in tables.items():
        attn = decoder.block[i].layer[0].SelfAttention
        attn.relative_attention_bias = torch.nn.Embedding.from_pretrained(weight.to(dtype), freeze=True)
    return holder


@torch.no_grad()
def position_kernel(
    model: torch.nn.Module, stack: str, layer: int | None = None, max_len: int | None = None
) -> np.ndarray:
    """[heads, 2 * max_len - 1] float32: each head's bias at offsets ``kernel_offsets(max_len)``.

    ``max_len`` defaults to relative_attention_max_distance + 1: offsets beyond ±max_distance all
    fall in the last bucket. ``layer`` is needed only where each layer learns its own (UMT5).
    """
    attn = bias_module(model, stack, layer)
    if max_len is None:
        max_len = attn.relative_attention_max_distance + 1
    # One query at position max_len - 1 against keys 0 .. 2 * max_len - 2 sees every offset once,
    # through the model's own bucketing (compute_bias) rather than a copy of it.
    values = attn.compute_bias(1, 2 * max_len - 1, past_seen_tokens=max_len - 1)
    return values[0, :, 0].float().cpu().numpy()


@dataclass
class ScoreTerms:
    """One attention call's pre-softmax score, split: score = content + bias where visible, −inf elsewhere."""

    content: torch.Tensor  # [B, H, Q, K] float32: q·k times the module's scaling (1.0 in T5)
    bias: torch.Tensor  # [1 or B, H, Q, K] float32: the position bias (zeros for cross-attention)
    visible: torch.Tensor | None  # [1 or B, 1, Q, K] bool, True = the query sees the key; None = all

    def score(self) -> torch.Tensor:
        score = self.content + self.bias
        if self.visible is not None:
            score.masked_fill_(~self.visible, float("-inf"))
        return score

    def probabilities(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(score, softmax(score)): what T5's eager attention weights values with; a query row
        with no visible key (only ever a padding row) gets zeros, not NaN."""
        score = self.score()
        probs = torch.softmax(score, dim=-1)
        if self.visible is not None:
            probs.nan_to_num_(0.0)
        return score, probs


def score_terms(
    query: torch.Tensor,
    key: torch.Tensor,
    position_bias: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    causal: bool,
) -> ScoreTerms:
    """The terms of softmax(q k^T * scaling + position_bias + mask) in float32.

    ``attention_mask`` is what the model passed its attention function: None (``causal`` then
    decides, as SDPA's is_causal would), boolean (True = visible) or additive (0 or very negative).
    """
    q_len, k_len = query.shape[2], key.shape[2]
    scale = 1.0 if scaling is None else scaling  # T5 passes 1.0; never default to 1/sqrt(d) here
    content = torch.matmul(query.float(), key.float().transpose(2, 3)).mul_(scale)
    if position_bias is None:
        bias = torch.zeros((1, *content.shape[1:]), device=content.device)
    else:
        bias = position_bias[..., :k_len].float()
    visible = None
    if attention_mask is None:
        if causal and q_len > 1:  # the last q_len of k_len positions: query i sees keys up to k_len - q_len + i
            visible = torch.ones(q_len, k_len, dtype=torch.bool, device=content.device).tril_(k_len - q_len)[None, None]
    elif attention_mask.dtype == torch.bool:
        visible = attention_mask[..., :k_len]
    else:
        mask = attention_mask[..., :k_len]
        visible = mask > torch.finfo(mask.dtype).min / 2
    return ScoreTerms(content, bias, visible)


class LayerScores(torch.nn.Module):
    """A stack's self-attention scores recomputed from each layer's input, without the model.

    Holds float32 copies of what the scores are made of: every layer's pre-attention norm and q, k
    projections, and the bias of the layer that scores it as a kernel over ±max_distance (beyond it
    the bias is the last bucket's, so clamping the offset looks every one up exactly). Small enough
    to send to statistics workers (2/4 of the attention weights, no values or outputs).
    """

    def __init__(self, model: torch.nn.Module, stack: str = "enc"):
        super().__init__()
        layers = [block.layer[0] for block in _stack(model, stack).block]
        self.norms = torch.nn.ModuleList(copy.deepcopy(layer.layer_norm).float() for layer in layers)
        self.q = torch.nn.ModuleList(copy.deepcopy(layer.SelfAttention.q).float() for layer in layers)
        self.k = torch.nn.ModuleList(copy.deepcopy(layer.SelfAttention.k).float() for layer in layers)
        attn = layers[0].SelfAttention
        self.n_heads, self.scaling, self.reach = attn.n_heads, attn.scaling, attn.relative_attention_max_distance
        self.causal = stack == "dec"
        kernels = [torch.from_numpy(position_kernel(model, stack, i)) for i in range(len(layers))]
        self.register_buffer("kernels", torch.stack(kernels))  # [layer, head, 2 * reach + 1]

    @property
    def n_layers(self) -> int:
        return len(self.norms)

    @torch.no_grad()
    def terms(self, layer: int, x: torch.Tensor) -> ScoreTerms:
        """The score terms of layer ``layer`` for one unpadded sequence whose input there is x [n, d]."""
        n = x.shape[0]
        h = self.norms[layer](x.float())
        q, k = (proj[layer](h).view(n, self.n_heads, -1).transpose(0, 1)[None] for proj in (self.q, self.k))
        pos = torch.arange(n, device=x.device)
        offsets = (pos[None, :] - pos[:, None]).clamp_(-self.reach, self.reach) + self.reach  # key − query
        bias = self.kernels[layer][:, offsets][None]
        return score_terms(q, k, bias, None, self.scaling, self.causal)


def _pair_sums(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Per head: sum over batch, query and key of w * x * y (float64)."""
    return (x * y * w).sum(dim=(0, 2, 3))


@dataclass
class BiasShareStats:
    """Per head: how the score's variance over visible pairs splits between content and bias.

    Two decompositions, both var(score) = var(content) + var(bias) + 2 cov(content, bias):
    ``pooled`` over every valid pair, and ``within_query``, about each query row's own means.
    Softmax ignores a constant added to a row, so within_query is the one that says what shapes
    the attention pattern; pooled also counts how rows differ from one another. Float64 sums,
    merged by adding: shards combine exactly.
    """

    n_heads: int
    count: np.ndarray = field(init=False)  # [heads] valid pairs
    sums: np.ndarray = field(init=False)  # [heads, 2]: sum content, sum bias
    pooled: np.ndarray = field(init=False)  # [heads, 3]: raw sums of cc, bb, cb
    within: np.ndarray = field(init=False)  # [heads, 3]: sums of the row-centred cc, bb, cb

    def __post_init__(self) -> None:
        self.count = np.zeros(self.n_heads)
        self.sums = np.zeros((self.n_heads, 2))
        self.pooled = np.zeros((self.n_heads, 3))
        self.within = np.zeros((self.n_heads, 3))

    @torch.no_grad()
    def update(self, terms: ScoreTerms, query_valid: torch.Tensor | None = None) -> None:
        """Add one attention call's visible pairs; ``query_valid`` [B, Q] bool drops padding queries."""
        c = terms.content.double()
        b = terms.bias.double().expand_as(c)
        w = torch.ones((1, 1, *c.shape[2:]), dtype=torch.bool, device=c.device)
        if terms.visible is not None:
            w = w & terms.visible
        if query_valid is not None:
            w = w & query_valid.to(c.device)[:, None, :, None]
        w = w.expand_as(c).double()
        n_row = w.sum(-1, keepdim=True)
        mean_c = (c * w).sum(-1, keepdim=True) / n_row.clamp(min=1)
        mean_b = (b * w).sum(-1, keepdim=True) / n_row.clamp(min=1)
        cc, bc = c - mean_c, b - mean_b
        pooled = [_pair_sums(c, c, w), _pair_sums(b, b, w), _pair_sums(c, b, w)]
        within = [_pair_sums(cc, cc, w), _pair_sums(bc, bc, w), _pair_sums(cc, bc, w)]
        self.count += w.sum(dim=(0, 2, 3)).cpu().numpy()
        self.sums += torch.stack([(c * w).sum(dim=(0, 2, 3)), (b * w).sum(dim=(0, 2, 3))], 1).cpu().numpy()
        self.pooled += torch.stack(pooled, 1).cpu().numpy()
        self.within += torch.stack(within, 1).cpu().numpy()

    def merge(self, other: BiasShareStats) -> BiasShareStats:
        for name in ("count", "sums", "pooled", "within"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        return self

    def summary(self, kind: str = "within_query") -> dict[str, np.ndarray]:
        """Per-head arrays: var_content, var_bias, cov, var_score; bias_share and content_share
        ((var_bias + cov) / var_score and its complement: the two parts of var(score)); r2_bias
        (R² of the score regressed on the bias alone: corr(score, bias)²)."""
        n = np.maximum(self.count, 1)
        if kind == "within_query":
            var_c, var_b, cov = (self.within / n[:, None]).T
        elif kind == "pooled":
            mean_c, mean_b = (self.sums / n[:, None]).T
            raw_cc, raw_bb, raw_cb = (self.pooled / n[:, None]).T
            var_c, var_b, cov = raw_cc - mean_c**2, raw_bb - mean_b**2, raw_cb - mean_c * mean_b
        else:
            raise ValueError(f"kind must be 'within_query' or 'pooled', not {kind!r}")
        var_s = var_c + var_b + 2 * cov
        with np.errstate(divide="ignore", invalid="ignore"):
            bias_share = np.where(var_s > 0, (var_b + cov) / var_s, np.nan)
            r2 = np.where((var_s > 0) & (var_b > 0), (var_b + cov) ** 2 / (var_s * var_b), 0.0)
        return {
            "var_content": var_c, "var_bias": var_b, "cov": cov, "var_score": var_s,
            "bias_share": bias_share, "content_share": 1 - bias_share, "r2_bias": r2, "pairs": self.count,
        }


def _stack(model: torch.nn.Module, stack: str) -> torch.nn.Module:
    module = getattr(model, {"enc": "encoder", "dec": "decoder"}[stack], None)
    if module is None or not hasattr(module, "block"):
        raise ValueError(f"{type(model).__name__} has no T5-style {stack} stack")
    return module
