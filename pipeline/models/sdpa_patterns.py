"""``embwalk_patterns``: SDPA attention that also hands over its probabilities, without the eager path.

transformers looks attention functions up by name in a registry. We register
``embwalk_patterns`` (a name without "sdpa" in it: transformers refuses any such
name for a model it has no SDPA path for, Gemma 2). In layers nobody asked about it is the stock ``sdpa``
implementation, so they cost nothing extra. In a layer whose probabilities a
capture asked for it computes softmax(q k^T * scale + mask) once, hands it to
the capture, and, when every head was asked for, computes the layer's output
from those same probabilities (probs @ v, as the eager implementation does)
instead of running SDPA as well: the pattern stored is exactly the one that
produced the output, and the scores are computed once rather than twice. (The
output then differs from SDPA's by float rounding, ~1e-7 relative in float32,
as eager's does.) With a subset of heads the output stays SDPA's.

Soft-capped scores (Gemma 2's ``softcap``: softcap * tanh(scores / softcap),
before the mask) have no SDPA kernel, so a layer that passes one computes its
output from its probabilities, all heads, as eager does, whether or not anyone
captures them. Sliding-window layers need nothing: their mask carries the window.

A learned relative position bias (T5 family: ``position_bias``, with ``scaling`` 1.0) is part
of the score: a captured layer that passes one stores softmax(q k^T * scale + position_bias +
mask), computed by position_bias.score_terms, hands those terms to ``embwalk_terms_sink`` where
its score terms are captured (attn_score, attn_content, attn_bias, cross_score), and computes its
output from those probabilities over every head, as eager and seq2seq.py's ``embwalk_t5`` do,
whichever heads are captured. Layers nobody asked about keep SDPA with the bias as a float mask.

Which layers to record is marked on the attention modules themselves
(``module.embwalk_pattern_sink``: a callable with a ``heads`` attribute, handed
the probabilities [batch, selected heads, query, key] of its layer), so the
function needs no global state and two models in one process do not see each
other's requests.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from embwalk.models.position_bias import score_terms

ATTN_IMPLEMENTATION = "embwalk_patterns"


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    causal: bool,
    heads: list[int] | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) in float32 for the chosen query heads; with ``softcap``,
    softmax(softcap * tanh(q k^T * scale / softcap) + mask), as eager computes it.

    query [B, H, Q, D], key [B, Hkv, K, D] with H a multiple of Hkv (grouped
    query attention: query head h reads key head h // (H / Hkv)). The mask is
    what the model passed to its attention function: None (then ``causal``
    decides, as SDPA's is_causal would), boolean (True = visible) or additive.
    """
    b, n_heads, q_len, d = query.shape
    n_kv, k_len = key.shape[1], key.shape[2]
    groups = n_heads // n_kv
    scale = scaling if scaling is not None else d**-0.5
    # Scale q rather than the scores: [Q, D] values instead of [Q, K].
    if heads is None:
        # All heads: the query heads sharing a key head become one matrix
        # [groups * Q, D] against that key head, so grouped keys are never copied.
        q = (query.float() * scale).reshape(b * n_kv, groups * q_len, d)
        k = key.float().reshape(b * n_kv, k_len, d)
        rows, n_sel = groups, n_heads
    else:
        index = torch.as_tensor(heads, device=query.device)
        q = (query.index_select(1, index).float() * scale).reshape(b * len(heads), q_len, d)
        k = key.index_select(1, index // groups).float().reshape(b * len(heads), k_len, d)
        rows, n_sel = 1, len(heads)
    implicit_causal = attention_mask is None and causal and q_len > 1
    if implicit_causal and softcap is None:
        # The causal mask as an additive bias fused into the product (baddbmm).
        scores = torch.baddbmm(_causal_bias(q_len, k_len, rows, query.device), q, k.transpose(1, 2))
    else:
        scores = torch.bmm(q, k.transpose(1, 2))
        if softcap is not None:  # capped before any mask is added
            scores.div_(softcap).tanh_().mul_(softcap)
        if implicit_causal:
            scores.add_(_causal_bias(q_len, k_len, rows, query.device))
    scores = scores.view(b, n_sel, q_len, k_len)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :k_len]
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    probs = torch.softmax(scores, dim=-1)
    if attention_mask is not None:
        probs.nan_to_num_(0.0)  # a query row with no visible key (only ever a padding row)
    return probs


_CAUSAL_BIASES: dict[tuple, torch.Tensor] = {}


def _causal_bias(q_len: int, k_len: int, repeat: int, device: torch.device) -> torch.Tensor:
    """[repeat * Q, K] float32: 0 where a query sees a key, -inf after it (cached: one per shape)."""
    key = (q_len, k_len, repeat, device)
    bias = _CAUSAL_BIASES.get(key)
    if bias is None:
        if len(_CAUSAL_BIASES) > 16:  # sequence lengths vary in document mode; keep the cache small
            _CAUSAL_BIASES.clear()
        # Query i (the last q_len of k_len positions) sees keys up to k_len - q_len + i.
        bias = torch.full((q_len, k_len), float("-inf"), device=device).triu_(k_len - q_len + 1).repeat(repeat, 1)
        _CAUSAL_BIASES[key] = bias
    return bias


def output_from_probabilities(probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """probs [B, H, Q, K] (all heads) @ value [B, Hkv, K, D] -> [B, Q, H, D], the
    layout attention functions return; grouped query heads share their value head."""
    b, n_heads, q_len, k_len = probs.shape
    n_kv, d = value.shape[1], value.shape[3]
    grouped = probs.to(value.dtype).view(b, n_kv, (n_heads // n_kv) * q_len, k_len)
    return torch.matmul(grouped, value).view(b, n_heads, q_len, d).transpose(1, 2).contiguous()


def embwalk_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    sink = getattr(module, "embwalk_pattern_sink", None)
    terms_sink = getattr(module, "embwalk_terms_sink", None)  # the score's terms (T5: attn_score etc.)
    softcap = kwargs.pop("softcap", None)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    position_bias = kwargs.get("position_bias")  # T5 family: a learned relative position bias
    captured = sink is not None or terms_sink is not None
    # Eager's computation, every head: no SDPA kernel soft-caps, and a captured biased layer's
    # output comes from the very probabilities (and score terms) stored.
    if softcap is not None or (captured and position_bias is not None):
        if position_bias is not None:
            terms = score_terms(query, key, position_bias, attention_mask, scaling, causal)
            if terms_sink is not None:
                terms_sink(terms)
            _, probs = terms.probabilities()
        else:
            probs = attention_probabilities(query, key, attention_mask, scaling, causal, None, softcap)
        if sink is not None:
            sink(probs if sink.heads is None else probs[:, sink.heads])
        probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
        return output_from_probabilities(probs, value), None
    # Reuse the probabilities for the output only in the plain case SDPA and eager agree on.
    plain = sink is not None and sink.heads is None and not (dropout and module.training)
    plain = plain and kwargs.get("cache") is None
    if sink is None or not plain:
        output, _ = sdpa_attention_forward(
            module, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
        )
        if sink is None:
            return output, None
    probs = attention_probabilities(query, key, attention_mask, scaling, causal, sink.heads)
    sink(probs)
    if plain:
        output = output_from_probabilities(probs, value)
    return output, None


def register() -> str:
    """Register the function (and SDPA's mask format for it); idempotent."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, embwalk_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
