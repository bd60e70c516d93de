"""Attention probabilities without the eager path.

transformers looks attention functions up by name in a registry. We register
``embwalk_sdpa``: it computes the layer's output with SDPA, exactly as the
stock ``sdpa`` implementation does, and only for the layers and heads a
capture asked for also computes softmax(q k^T * scale + mask) from the same
query and key tensors. Layers nobody asked about cost nothing extra.

Which layers to record is marked on the attention modules themselves
(``module.embwalk_pattern_sink``), so the function needs no global state and
two models in one process do not see each other's requests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN_IMPLEMENTATION = "embwalk_sdpa"

# A sink receives (probabilities [batch, selected heads, query, key]) for one layer.
PatternSink = Callable[[torch.Tensor], None]


def attention_probabilities(
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
    causal: bool,
    heads: list[int] | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + mask) in float32 for the chosen query heads.

    query [B, H, Q, D], key [B, Hkv, K, D] with H a multiple of Hkv (grouped
    query attention: query head h reads key head h // (H / Hkv)). The mask is
    what the model passed to its attention function: None (then ``causal``
    decides, as SDPA's is_causal would), boolean (True = visible) or additive.
    """
    n_heads, n_kv = query.shape[1], key.shape[1]
    groups = n_heads // n_kv
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    if heads is None:
        # All heads: group query heads by their key head and broadcast, so
        # grouped-query keys are never copied.
        b, _, q_len, d = query.shape
        q = query.float().view(b, n_kv, groups, q_len, d)
        scores = torch.matmul(q, key.float().unsqueeze(2).transpose(-1, -2)).view(b, n_heads, q_len, -1)
    else:
        index = torch.as_tensor(heads, device=query.device)
        q = query.index_select(1, index).float()
        k = key.index_select(1, index // groups).float()
        scores = torch.matmul(q, k.transpose(-1, -2))
    scores.mul_(scale)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, : scores.shape[-1]]
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores.add_(mask.float())
    elif causal and scores.shape[-2] > 1:
        q_len, k_len = scores.shape[-2:]
        hidden = torch.ones(q_len, k_len, dtype=torch.bool, device=scores.device).triu_(k_len - q_len + 1)
        scores.masked_fill_(hidden, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if attention_mask is not None:
        probs.nan_to_num_(0.0)  # a query row with no visible key (only ever a padding row)
    return probs


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
    # The output always comes from SDPA, so the residual stream is the same
    # whether or not a capture asks for this layer's probabilities.
    output, _ = sdpa_attention_forward(
        module, query, key, value, attention_mask,
        dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs,
    )
    sink = getattr(module, "embwalk_pattern_sink", None)
    if sink is not None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        sink(attention_probabilities(query, key, attention_mask, scaling, causal, sink.heads))
    return output, None


def register() -> str:
    """Register the function (and SDPA's mask format for it); idempotent."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, embwalk_sdpa_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION
