"""Model-family adapters: where each capture site lives in a transformers model.

An adapter is data, not code: attribute paths from the transformer trunk to its
blocks and final norm, and for each optional site the submodule whose input or
output *is* that site. Adding a family is adding one entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import transformers
from torch import nn

from embwalk.errors import ModelError

# A tap is (path inside a block, "input" | "output"): the site is that module's
# first positional input, or its output (the first element if a tuple).
Tap = tuple[str, str]
TAP_KINDS = ("resid_mid", "resid_cross", "attn_out", "mlp_out", "router_logits")
# Per-token sites whose vectors are not d_model wide: a mixture-of-experts router's logits [token, expert].
ROUTER_KIND = "router_logits"
PATTERN_KINDS = ("attn_pattern", "cross_pattern")  # per-sequence attention arrays (cross: a decoder's)
# The pre-softmax score's terms, stored like patterns: kind -> the pattern kind of the attention
# they come from (its module: Family.patterns). Only where the score has a learned position bias.
SCORE_TERMS = {"attn_score": "attn_pattern", "attn_content": "attn_pattern", "attn_bias": "attn_pattern",
               "cross_score": "cross_pattern"}


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    blocks: str  # path from the trunk to the ModuleList of blocks
    final_norm: str | None  # path from the trunk; None: the last block's output is final
    causal: bool
    taps: dict[str, Tap] = field(default_factory=dict)  # resid_mid / attn_out / mlp_out
    attention: bool = True  # False: attention-free (Mamba): no attention sublayer, heads or patterns
    sdpa: bool = True  # transformers has an SDPA path for it (Gemma 2 has none: soft-capped scores)
    # The transformers auto class that loads the model as embwalk captures it; None: causal
    # families load with their LM head (AutoModelForCausalLM), encoders as the bare body (AutoModel).
    auto: str | None = None
    # An encoder-decoder model stored as one stack ("enc": T5's encoder): sites may carry that
    # stack's prefix, and the other stack's are refused (pipeline/models/sites.py).
    stack: str | None = None
    position_bias: bool = False  # a learned relative position bias (T5): kernels from the weights
    # Pattern kind -> the attention module inside a block whose probabilities it is; empty: every
    # submodule of the block is marked for attn_pattern (the one attention finds it whatever its name).
    # A T5 decoder block has two attentions, so each kind must name its own.
    patterns: dict[str, str] = field(default_factory=dict)
    n_layers_attr: str = "num_hidden_layers"  # the config's depth of the stored stack (T5's decoder: its own)

    def auto_class(self) -> type:
        name = self.auto or ("AutoModelForCausalLM" if self.causal else "AutoModel")
        return getattr(transformers, name)

    def tap(self, kind: str, config, layer: int | None = None) -> Tap:
        tap = self.taps.get(kind)
        if kind == "resid_mid" and getattr(config, "use_parallel_residual", False):
            tap = None  # parallel attention+MLP: no point between them exists
        if tap is None:
            raise ModelError(f"site kind {kind!r} is not defined for {self.name} models{self._why()}")
        if kind == ROUTER_KIND:
            routed = router_layers(config)
            if not routed:
                raise ModelError(f"site kind {kind!r} is defined for mixture-of-experts models only; "
                                 f"{config.model_type!r} has no router")
            if layer is not None and layer not in routed:
                raise ModelError(f"site {kind}.{layer}: block {layer} of this {config.model_type!r} model has a dense "
                                 f"MLP, no router (routed blocks: {routed})")
        return tap

    def site_width(self, kind: str, config, d_model: int) -> int:
        """The last axis of a per-token site's vectors: d_model, or a router's number of experts."""
        return n_experts(config) if kind == ROUTER_KIND else d_model

    def check_kinds(self, kinds: Iterable[str], config, taps: Iterable[tuple[str, Iterable[int]]] = ()) -> None:
        """Raise a one-line ModelError for the first site kind this family cannot capture (``taps``:
        (kind, blocks) of the layout, for sites that exist in some blocks only: a router's)."""
        for kind, blocks in taps:
            for b in blocks:
                self.tap(kind, config, b)
        for kind in kinds:
            if kind in TAP_KINDS:
                self.tap(kind, config)
            elif kind == "attn_pattern" and not self.attention:
                raise ModelError(f"site kind 'attn_pattern' is not defined for {self.name} models{self._why()}")
            elif kind == "cross_pattern" and kind not in self.patterns:
                raise ModelError(f"site kind 'cross_pattern' is not defined for {self.name} models{self._stack_why()}")
            elif kind in SCORE_TERMS:
                if not self.position_bias:
                    raise ModelError(f"site kind {kind!r} is defined for models with a learned relative position "
                                     f"bias (T5 family) only; {self.name} models have none{self._why()}")
                if SCORE_TERMS[kind] not in self.patterns:
                    raise ModelError(f"site kind {kind!r} is not defined for {self.name} models{self._stack_why()}")

    def attn_implementation(self, asked: str) -> str:
        """What to load the model with: ``asked``, or eager where SDPA is asked for and transformers
        has none for the family (patterns are still captured by embwalk's own function)."""
        return "eager" if asked == "sdpa" and not self.sdpa else asked

    def _stack_why(self) -> str:
        return " (cross-attention is the decoder's: dec.* sites)" if self.stack == "enc" else ""

    def attention_module(self, kind: str) -> str | None:
        """The path inside a block of the attention a pattern or score-term kind reads (None: the family
        names none; every submodule of the block is marked then, see Capturer)."""
        return self.patterns.get(SCORE_TERMS.get(kind, kind))

    def _why(self) -> str:
        return "" if self.attention else " (attention-free: a block adds one mixer output, no attention or MLP)"


_LLAMA_TAPS = {
    "resid_mid": ("post_attention_layernorm", "input"),
    "attn_out": ("self_attn", "output"),
    "mlp_out": ("mlp", "output"),
    # Mixtral / Qwen2-MoE: the router (a TopKRouter returning (logits, weights, indices)); its logits
    # [batch * seq, experts] decide which experts each token goes to (the top num_experts_per_tok).
    "router_logits": ("mlp.gate", "output"),
}

# Gemma 2/3 norm each sublayer's output before adding it (post_attention_layernorm and
# post_feedforward_layernorm are *post*-norms there): what a sublayer adds is that norm's
# output, and the stream between the sublayers is the input of the MLP's pre-norm. The
# embeddings are scaled by sqrt(d_model) inside embed_tokens, so resid_pre.0 (block 0's
# input) is scaled too. Soft-capping and sliding windows: sdpa_patterns.py, stats/head.py.
_GEMMA_TAPS = {
    "resid_mid": ("pre_feedforward_layernorm", "input"),
    "attn_out": ("post_attention_layernorm", "output"),
    "mlp_out": ("post_feedforward_layernorm", "output"),
}

MODEL_FAMILIES = (
    Family(
        "llama",
        # Phi-3 has Llama's taps (fused qkv/gate_up projections and resid dropouts change
        # nothing); Qwen2-MoE and Mixtral too: their mlp module is the sparse MoE block,
        # whose output is the routed experts' weighted sum (plus Qwen2-MoE's gated shared
        # expert), what the MLP sublayer adds to the stream.
        ("llama", "mistral", "qwen2", "qwen3", "olmo", "phi3", "qwen2_moe", "mixtral"),
        blocks="layers",
        final_norm="norm",
        causal=True,
        taps=_LLAMA_TAPS,
    ),
    Family("gemma2", ("gemma2",), blocks="layers", final_norm="norm", causal=True, taps=_GEMMA_TAPS,
           sdpa=False),  # transformers has Gemma 2 eager only (SDPA cannot soft-cap the scores)
    Family("gemma3", ("gemma3_text",), blocks="layers", final_norm="norm", causal=True, taps=_GEMMA_TAPS),
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
        "mamba",
        # Attention-free: a block is x + mixer(norm(x)), so only the residual sites and the
        # final norm exist; the mixer is neither attention nor MLP and has no site of its own.
        ("mamba", "mamba2"),
        blocks="layers",
        final_norm="norm_f",
        causal=True,
        attention=False,
        sdpa=False,
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
    Family(
        "t5",
        # T5, Flan-T5 / T5 v1.1, MT5, UMT5, stored as the encoder alone (AutoModelForTextEncoding:
        # T5EncoderModel etc., the decoder's weights never loaded): bidirectional and pre-norm. A
        # block is layer[0] (T5LayerSelfAttention: x + SelfAttention(norm(x))) then layer[1]
        # (T5LayerFF: x + DenseReluDense(norm(x))), so the stream between them is layer[1]'s input
        # and each sublayer adds its inner module's output. The score is q·k + a learned position
        # bias, no 1/sqrt(d) (sdpa_patterns.py stores exactly that). Both stacks: seq2seq.py.
        ("t5", "mt5", "umt5"),
        blocks="encoder.block",
        final_norm="encoder.final_layer_norm",
        causal=False,
        taps={
            "resid_mid": ("layer.1", "input"),
            "attn_out": ("layer.0.SelfAttention", "output"),
            "mlp_out": ("layer.1.DenseReluDense", "output"),
        },
        auto="AutoModelForTextEncoding",
        stack="enc",
        position_bias=True,
        patterns={"attn_pattern": "layer.0.SelfAttention"},
    ),
)

# The decoder stack of the same checkpoints (a decoder store, docs/seq2seq.md), loaded whole as
# T5ForConditionalGeneration: the encoder runs as context only. A decoder block is layer[0]
# (causal self-attention), layer[1] (cross-attention over the encoder's output), layer[2] (the
# feed-forward), each x + sublayer(norm(x)); it is causal with an LM head, so the decoding walk
# and the logit lens apply (pipeline/stats/head.py applies T5's output scaling).
T5_DECODER = Family(
    "t5",
    ("t5", "mt5", "umt5"),
    blocks="decoder.block",
    final_norm="decoder.final_layer_norm",
    causal=True,
    taps={
        "resid_mid": ("layer.1", "input"),  # after self-attention, before cross-attention
        "resid_cross": ("layer.2", "input"),  # after cross-attention, before the feed-forward
        "attn_out": ("layer.0.SelfAttention", "output"),
        "mlp_out": ("layer.2.DenseReluDense", "output"),
    },
    auto="AutoModelForSeq2SeqLM",
    stack="dec",
    position_bias=True,
    patterns={"attn_pattern": "layer.0.SelfAttention", "cross_pattern": "layer.1.EncDecAttention"},
    n_layers_attr="num_decoder_layers",
)
_OTHER_STACKS = {("t5", "dec"): T5_DECODER}


def n_experts(config) -> int:
    """A mixture-of-experts model's number of routed experts (0: a dense model)."""
    return int(getattr(config, "num_local_experts", None) or getattr(config, "num_experts", None) or 0)


def router_layers(config) -> list[int]:
    """The blocks whose MLP is routed: every block of Mixtral; Qwen2-MoE's sparse ones (every
    ``decoder_sparse_step``-th, minus ``mlp_only_layers``), as its decoder layers decide."""
    if not n_experts(config):
        return []
    step, dense = getattr(config, "decoder_sparse_step", 1) or 1, set(getattr(config, "mlp_only_layers", []) or [])
    return [b for b in range(config.num_hidden_layers) if b not in dense and (b + 1) % step == 0]


def family_for(config, stack: str | None = None) -> Family:
    """The family of a transformers config (by its model_type); ModelError naming the supported ones.
    ``stack``: of an encoder-decoder model, the stack a store holds (None: the family's default)."""
    for family in MODEL_FAMILIES:
        if config.model_type in family.model_types:
            if stack is None or stack == family.stack:
                return family
            other = _OTHER_STACKS.get((family.name, stack))
            if other is None:
                raise ModelError(f"{config.model_type!r} models have no {stack!r} stack (dec.* sites are for "
                                 "encoder-decoder models: T5, Flan-T5, MT5, UMT5)")
            return other
    supported = ", ".join(t for f in MODEL_FAMILIES for t in f.model_types)
    raise ModelError(
        f"unsupported architecture {config.model_type!r}; supported model types: {supported}"
    )


def family_named(name: str) -> Family | None:
    """The family a manifest names (``model.family``); None for one this version does not know."""
    return next((f for f in MODEL_FAMILIES if f.name == name), None)


def trunk(model: nn.Module) -> nn.Module:
    """The transformer body without any task head (LlamaModel inside LlamaForCausalLM)."""
    return getattr(model, "base_model", model)
