"""Model-family adapters: where each capture site lives in a transformers model.

An adapter is data, not code: attribute paths from the transformer trunk to its
blocks and final norm, and for each optional site the submodule whose input or
output *is* that site. Adding a family is adding one entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from embwalk.errors import ModelError

# A tap is (path inside a block, "input" | "output"): the site is that module's
# first positional input, or its output (the first element if a tuple).
Tap = tuple[str, str]


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: str  # path from the trunk to the ModuleList of blocks
    final_norm: str | None  # path from the trunk; None: the last block's output is final
    causal: bool
    taps: dict[str, Tap] = field(default_factory=dict)  # resid_mid / attn_out / mlp_out

    def tap(self, kind: str, config) -> Tap:
        tap = self.taps.get(kind)
        if kind == "resid_mid" and getattr(config, "use_parallel_residual", False):
            tap = None  # parallel attention+MLP: no point between them exists
        if tap is None:
            raise ModelError(f"site kind {kind!r} is not defined for {self.name} models")
        return tap


_LLAMA_TAPS = {
    "resid_mid": ("post_attention_layernorm", "input"),
    "attn_out": ("self_attn", "output"),
    "mlp_out": ("mlp", "output"),
}

MODEL_FAMILIES = (
    Family(
        "llama",
        ("llama", "mistral", "qwen2", "qwen3", "olmo"),
        blocks="layers",
        final_norm="norm",
        causal=True,
        taps=_LLAMA_TAPS,
    ),
    Family(
        "gpt2",
        ("gpt2",),
        blocks="h",
        final_norm="ln_f",
        causal=True,
        taps={
            "resid_mid": ("ln_2", "input"),
            "attn_out": ("attn", "output"),
            "mlp_out": ("mlp", "output"),
        },
    ),
    Family(
        "gpt_neox",
        ("gpt_neox",),
        blocks="layers",
        final_norm="final_layer_norm",
        causal=True,
        taps={
            # Only meaningful with use_parallel_residual=False (see Family.tap).
            "resid_mid": ("post_attention_layernorm", "input"),
            "attn_out": ("attention", "output"),
            "mlp_out": ("mlp", "output"),
        },
    ),
    Family(
        "bert",
        ("bert",),
        blocks="encoder.layer",
        final_norm=None,
        causal=False,
        # BERT is post-LN: what a sublayer adds to the stream is its dense
        # projection, before the residual sum and LayerNorm.
        taps={
            "resid_mid": ("attention", "output"),
            "attn_out": ("attention.output.dense", "output"),
            "mlp_out": ("output.dense", "output"),
        },
    ),
)


def family_for(config) -> Family:
    for family in MODEL_FAMILIES:
        if config.model_type in family.model_types:
            return family
    supported = ", ".join(t for f in MODEL_FAMILIES for t in f.model_types)
    raise ModelError(
        f"unsupported architecture {config.model_type!r}; supported model types: {supported}"
    )


def trunk(model: nn.Module) -> nn.Module:
    """The transformer body without any task head (LlamaModel inside LlamaForCausalLM)."""
    return getattr(model, "base_model", model)
