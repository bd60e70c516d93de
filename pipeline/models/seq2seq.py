"""Capture T5-family encoder-decoder models (T5, Flan-T5, MT5, UMT5) in one forward pass.

Sites carry their stack: ``enc.resid_post.3``, ``dec.cross_pattern.*``, ``dec.final``.

| kind | enc | dec | array and layout |
|---|---|---|---|
| resid_pre.L / resid_post.L | ✓ | ✓ | ``{stack}.resid`` [B, T, residual, d]: 0 = embeddings, i = output of block i-1 |
| resid_mid.L | ✓ | ✓ | after self-attention's residual add, [B, T, layer, d] (likewise below) |
| resid_cross.L | | ✓ | after cross-attention's residual add |
| attn_out.L, cross_out.L, mlp_out.L | ✓ | ✓ (cross: dec) | each sublayer's output, before its residual add |
| final | ✓ | ✓ | [B, T, d] after the stack's final_layer_norm (see below) |
| attn_pattern.L | ✓ | ✓ | self-attention probabilities [B, layer, head, T, T] |
| attn_content.L, attn_bias.L, attn_score.L | ✓ | ✓ | q·k, position bias, their sum (−inf where masked) |
| cross_pattern.L, cross_content.L, cross_score.L | | ✓ | [B, layer, head, T_dec, T_enc]; no bias term |

``enc.final`` is transformers' encoder_last_hidden_state (what cross-attention reads). ``dec.final``
is the decoder's last_hidden_state: after its final norm and *before* the LM head's rescaling:
T5 and UMT5 configs whose checkpoint did not set tie_word_embeddings=False (original T5) multiply
by d_model**-0.5 before lm_head; T5 v1.1 / Flan-T5 do not, nor does MT5. ``logit_scale`` gives
the factor, so logits = lm_head(dec.final * logit_scale(model)).

Patterns: in transformers 5.x, T5Attention hands q, k, v, the mask and ``position_bias`` to the
attention-function registry (default SDPA, with the bias folded into a float mask). We register
``embwalk_t5``: in layers nobody asked about it is stock SDPA; in a captured layer it computes
content = q·k (T5 does not scale by 1/sqrt(d)), score = content + bias + mask and
softmax(score) once, hands them over, and computes the layer's output from those same
probabilities, as eager does: what is stored is exactly what the model attended with. With a
subset of heads the layer still runs eager over every head (the output needs all of them);
only the storing is per head. The pass checks that every marked layer was reached, so a
transformers version whose T5 bypasses the registry fails loudly rather than storing garbage.

TransformerLens aliases follow its HookedEncoderDecoder: ``encoder.3.hook_resid_post``,
``decoder.1.hook_resid_mid_cross``, ``decoder.0.cross_attn.hook_pattern``,
``encoder.2.attn.hook_attn_scores`` (= attn_score), ``encoder_final_ln.hook_normalized``,
``hook_embed`` (the encoder's embeddings: TransformerLens hooks no decoder embedding).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from embwalk.errors import ModelError, SiteError
from embwalk.models.capture import StopForward
from embwalk.models.position_bias import BiasShareStats, ScoreTerms, score_terms
from embwalk.models.sdpa_patterns import output_from_probabilities

ATTN_IMPLEMENTATION = "embwalk_t5"
SINK_ATTR = "embwalk_seq2seq_sink"
STACKS = ("enc", "dec")

RESID_KINDS = ("resid_pre", "resid_post")
# Sublayer sites: the module (inside a block) whose output is the site.
TAPS: dict[str, Callable[[torch.nn.Module], torch.nn.Module]] = {
    "resid_mid": lambda block: block.layer[0],
    "attn_out": lambda block: block.layer[0].SelfAttention,
    "resid_cross": lambda block: block.layer[1],
    "cross_out": lambda block: block.layer[1].EncDecAttention,
    "mlp_out": lambda block: block.layer[-1].DenseReluDense,
}
# Attention sites: kind -> (which attention, which term).
ATTENTION = {
    "attn_pattern": ("self", "pattern"), "attn_content": ("self", "content"),
    "attn_bias": ("self", "bias"), "attn_score": ("self", "score"),
    "cross_pattern": ("cross", "pattern"), "cross_content": ("cross", "content"), "cross_score": ("cross", "score"),
}
KINDS = RESID_KINDS + tuple(TAPS) + ("final",) + tuple(ATTENTION)
DECODER_ONLY = ("resid_cross", "cross_out") + tuple(k for k, (attn, _) in ATTENTION.items() if attn == "cross")

_TL_GLOBAL = {
    "hook_embed": "enc.resid_pre.0",
    "encoder_final_ln.hook_normalized": "enc.final",
    "decoder_final_ln.hook_normalized": "dec.final",
}
_TL_HOOKS = {
    "hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_mid_cross": "resid_cross",
    "hook_resid_post": "resid_post", "hook_attn_out": "attn_out", "hook_cross_attn_out": "cross_out",
    "hook_mlp_out": "mlp_out", "attn.hook_pattern": "attn_pattern", "attn.hook_attn_scores": "attn_score",
    "cross_attn.hook_pattern": "cross_pattern", "cross_attn.hook_attn_scores": "cross_score",
}
_TL = re.compile(r"^(?P<stack>encoder|decoder)\.(?P<layer>\*|\d+)\.(?P<hook>.+)$")
_OURS = re.compile(r"^(?P<stack>[a-z]+)\.(?P<kind>[a-z_]+)(?:\.(?P<layer>\*|-?\d+))?$")


@dataclass(frozen=True, order=True)
class StackSite:
    stack: str  # "enc" or "dec"
    kind: str
    layer: int | None = None

    @property
    def name(self) -> str:
        return f"{self.stack}.{self.kind}" + ("" if self.layer is None else f".{self.layer}")

    @property
    def array(self) -> str:
        """The buffer this site lands in (both residual kinds share ``{stack}.resid``)."""
        return f"{self.stack}.{'resid' if self.kind in RESID_KINDS else self.kind}"

    @property
    def residual_index(self) -> int | None:
        return {"resid_pre": self.layer, "resid_post": (self.layer or 0) + 1}.get(self.kind)


def parse_seq2seq_sites(names: Sequence[str] | str, n_enc_layers: int, n_dec_layers: int) -> list[StackSite]:
    """Resolve site names (ours or TransformerLens') to sorted, de-duplicated sites; SiteError on bad input."""
    if isinstance(names, str):
        names = [n for n in re.split(r"[,\s]+", names) if n]
    depth = {"enc": n_enc_layers, "dec": n_dec_layers}
    sites = {site for raw in names for site in _parse_one(str(raw).strip(), depth)}
    if not sites:
        raise SiteError("no capture sites given")
    return sorted(sites, key=lambda s: (s.stack, KINDS.index(s.kind), -1 if s.layer is None else s.layer))


def _parse_one(raw: str, depth: dict[str, int]) -> list[StackSite]:
    name = _TL_GLOBAL.get(raw, raw)
    tl = _TL.match(name)
    if tl:
        if tl["hook"] not in _TL_HOOKS:
            raise SiteError(f"unknown TransformerLens hook {raw!r}; known: {', '.join(_TL_HOOKS)}")
        name = f"{tl['stack'][:3]}.{_TL_HOOKS[tl['hook']]}.{tl['layer']}"
    m = _OURS.match(name)
    if not m or m["stack"] not in STACKS or m["kind"] not in KINDS:
        raise SiteError(
            f"unknown encoder-decoder capture site {raw!r}; write enc.KIND.L or dec.KIND.L "
            f"(L an index, '*' or omitted for all) with KIND one of {', '.join(KINDS)}"
        )
    stack, kind, layer = m["stack"], m["kind"], m["layer"]
    if stack == "enc" and kind in DECODER_ONLY:
        raise SiteError(f"capture site {raw!r}: the encoder has no cross-attention")
    if kind == "final":
        if layer is not None:
            raise SiteError(f"capture site {raw!r} takes no layer index")
        return [StackSite(stack, kind)]
    n = depth[stack]
    if layer is None or layer == "*":
        return [StackSite(stack, kind, i) for i in range(n)]
    if not -n <= int(layer) < n:
        raise SiteError(f"layer {layer} in capture site {raw!r} is past the {stack} stack's depth ({n} layers)")
    return [StackSite(stack, kind, int(layer) % n)]


def logit_scale(model: torch.nn.Module) -> float:
    """What the LM head's input is multiplied by: d_model**-0.5 where transformers rescales (original
    T5, UMT5 unless tie_word_embeddings=False), 1.0 otherwise (T5 v1.1 / Flan-T5, MT5)."""
    return model.config.d_model**-0.5 if getattr(model.config, "scale_decoder_outputs", False) else 1.0


def t5_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    position_bias: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The attention function registered as ``embwalk_t5`` (see the module docstring)."""
    sink = getattr(module, SINK_ATTR, None)
    if sink is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask,
            dropout=dropout, scaling=scaling, is_causal=is_causal, position_bias=position_bias, **kwargs,
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    terms = score_terms(query, key, position_bias, attention_mask, scaling, causal)
    score, probs = terms.probabilities()
    sink(terms, score, probs)
    probs = torch.nn.functional.dropout(probs, p=dropout, training=module.training)
    return output_from_probabilities(probs, value), None


def register() -> str:
    """Register the function and SDPA's mask format for it (boolean or None); idempotent."""
    AttentionInterface.register(ATTN_IMPLEMENTATION, t5_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_IMPLEMENTATION, sdpa_mask)
    return ATTN_IMPLEMENTATION


class Seq2SeqCapturer:
    """Hooks a T5-family model once; ``run`` fills buffers for one teacher-forced batch.

    ``heads`` limits the attention buffers to those heads. ``bias_share_layers`` ({"enc": [0, 1],
    "dec": [0]}) accumulates a BiasShareStats per self-attention layer in the pass, in
    ``self.bias_share[(stack, layer)]``, over valid queries and visible keys.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sites: Sequence[str] | Sequence[StackSite],
        dtype: torch.dtype = torch.float32,
        heads: Sequence[int] | None = None,
        bias_share_layers: Mapping[str, Sequence[int]] | None = None,
    ):
        self.model, self.dtype = model, dtype
        self.stacks = {"enc": getattr(model, "encoder", None), "dec": getattr(model, "decoder", None)}
        if not hasattr(getattr(self.stacks["enc"], "block", [None])[0], "layer"):
            raise ModelError(f"{type(model).__name__} is not a T5-family model (no encoder.block[i].layer)")
        depth = {s: len(m.block) if m is not None else 0 for s, m in self.stacks.items()}
        if isinstance(sites, str) or any(isinstance(s, str) for s in sites):
            sites = parse_seq2seq_sites(sites if isinstance(sites, str) else list(sites), depth["enc"], depth["dec"])
        self.sites: list[StackSite] = list(sites)
        bias_share_layers = dict(bias_share_layers or {})
        if set(bias_share_layers) - set(STACKS):
            raise SiteError(f"bias_share_layers stacks must be among {STACKS} (cross-attention has no position bias)")
        if self.stacks["dec"] is None and (bias_share_layers.get("dec") or any(s.stack == "dec" for s in self.sites)):
            raise SiteError(f"{type(model).__name__} has no decoder: only enc.* sites")
        self.n_heads = model.config.num_heads
        self.heads = list(heads) if heads is not None else None
        self.layers = self._layers()
        self.bias_share = {
            (stack, layer % depth[stack]): BiasShareStats(self.n_heads)
            for stack, layers in bias_share_layers.items() for layer in layers
        }
        self.uses_decoder = any(s.stack == "dec" for s in self.sites) or any(k[0] == "dec" for k in self.bias_share)
        self._out: dict[str, torch.Tensor] = {}
        self._query_valid: dict[str, torch.Tensor | None] = {}
        self._fired: set[int] = set()
        self._handles: list = []
        self._sinks: list[tuple[torch.nn.Module, _Sink]] = []
        self._previous_attn: str | None = None
        for stack in STACKS:
            if self.stacks[stack] is not None:
                self._hook_stack(stack)
        if self._sinks:
            self._previous_attn = model.config._attn_implementation
            model.set_attn_implementation(register())

    def _layers(self) -> dict[str, tuple[int, ...]]:
        """Buffer name -> the residual indices or blocks along its layer axis (() for final)."""
        layers: dict[str, set[int]] = {}
        for site in self.sites:
            index = site.residual_index if site.kind in RESID_KINDS else site.layer
            layers.setdefault(site.array, set()).update(() if index is None else (index,))
        return {name: tuple(sorted(v)) for name, v in layers.items()}

    # -- hooks ---------------------------------------------------------------------------

    def _hook_stack(self, stack: str) -> None:
        module, blocks = self.stacks[stack], self.stacks[stack].block
        residual = self.layers.get(f"{stack}.resid", ())
        if 0 in residual:
            hook = self._input_hook(f"{stack}.resid", 0)
            self._handles.append(blocks[0].register_forward_pre_hook(hook, with_kwargs=True))
        for slot, index in enumerate(residual):
            if index > 0:
                self._handles.append(blocks[index - 1].register_forward_hook(self._output_hook(f"{stack}.resid", slot)))
        for kind, path in TAPS.items():
            for slot, b in enumerate(self.layers.get(f"{stack}.{kind}", ())):
                self._handles.append(path(blocks[b]).register_forward_hook(self._output_hook(f"{stack}.{kind}", slot)))
        if f"{stack}.final" in self.layers:
            hook = self._output_hook(f"{stack}.final", None)
            self._handles.append(module.final_layer_norm.register_forward_hook(hook))
        self._mark_sinks(stack, blocks)
        last = self._last_block(stack)
        if last is not None and last < len(blocks) - 1:  # nothing after block `last` is needed
            self._handles.append(blocks[last].register_forward_hook(_stop))

    def _mark_sinks(self, stack: str, blocks: torch.nn.ModuleList) -> None:
        writes: dict[tuple[str, int], list[tuple[str, str, int]]] = {}
        for kind, (attn, term) in ATTENTION.items():
            for slot, b in enumerate(self.layers.get(f"{stack}.{kind}", ())):
                writes.setdefault((attn, b), []).append((f"{stack}.{kind}", term, slot))
        for (s, b) in self.bias_share:
            if s == stack:
                writes.setdefault(("self", b), [])
        for (attn, b), targets in writes.items():
            layer = blocks[b].layer[0].SelfAttention if attn == "self" else blocks[b].layer[1].EncDecAttention
            sink = _Sink(self, stack, targets, self.bias_share.get((stack, b)) if attn == "self" else None)
            setattr(layer, SINK_ATTR, sink)
            self._sinks.append((layer, sink))

    def _last_block(self, stack: str) -> int | None:
        """The last block of ``stack`` some capture needs; None = run the stack to its end."""
        if f"{stack}.final" in self.layers or (stack == "enc" and self.uses_decoder):
            return None  # cross-attention reads the encoder's final output
        needed = [i - 1 for i in self.layers.get(f"{stack}.resid", ())]
        for name, layers in self.layers.items():
            if name.startswith(f"{stack}.") and name != f"{stack}.resid":
                needed += layers
        needed += [b for s, b in self.bias_share if s == stack]
        return max(max(needed), 0) if needed else None  # resid_pre.0 alone still runs block 0

    def _input_hook(self, name: str, slot: int):
        def hook(module, args, kwargs):
            self._write(name, slot, args[0] if args else kwargs["hidden_states"])

        return hook

    def _output_hook(self, name: str, slot: int | None):
        def hook(module, args, output):
            self._write(name, slot, output[0] if isinstance(output, tuple) else output)

        return hook

    def _write(self, name: str, slot: int | None, hidden: torch.Tensor) -> None:
        dest = self._out[name]
        (dest if slot is None else dest[:, :, slot]).copy_(hidden, non_blocking=True)

    # -- running -------------------------------------------------------------------------

    def buffer_shapes(self, batch: int, enc_len: int, dec_len: int) -> dict[str, tuple[int, ...]]:
        d, n_heads = self.model.config.d_model, len(self.heads) if self.heads is not None else self.n_heads
        lengths = {"enc": enc_len, "dec": dec_len}
        shapes = {}
        for name, layers in self.layers.items():
            stack, kind = name.split(".")
            t = lengths[stack]
            if kind == "final":
                shapes[name] = (batch, t, d)
            elif kind in ATTENTION:
                shapes[name] = (batch, len(layers), n_heads, t, enc_len if kind.startswith("cross") else t)
            else:
                shapes[name] = (batch, t, len(layers), d)
        return shapes

    @torch.inference_mode()
    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        out: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One teacher-forced pass (``decoder_input_ids``: e.g. ``model._shift_right(labels)``);
        returns {buffer name: tensor} (``out`` if given: views the hooks write straight into)."""
        if self.uses_decoder and decoder_input_ids is None:
            raise ValueError("decoder sites need decoder_input_ids (teacher forcing)")
        device = self.model.get_input_embeddings().weight.device
        dec_len = decoder_input_ids.shape[1] if decoder_input_ids is not None else 0
        if out is None:
            shapes = self.buffer_shapes(input_ids.shape[0], input_ids.shape[1], dec_len)
            out = {name: torch.empty(shape, dtype=self.dtype, device=device) for name, shape in shapes.items()}
        masks = {"enc": attention_mask, "dec": decoder_attention_mask}
        masks = {s: None if m is None else m.to(device) for s, m in masks.items()}
        self._out, self._fired = out, set()
        self._query_valid = {s: None if m is None else m.bool() for s, m in masks.items()}
        try:
            try:
                encoded = self.stacks["enc"](input_ids=input_ids.to(device), attention_mask=masks["enc"])
            except StopForward:
                encoded = None
            if self.uses_decoder:
                try:
                    self.stacks["dec"](
                        input_ids=decoder_input_ids.to(device), attention_mask=masks["dec"],
                        encoder_hidden_states=encoded.last_hidden_state, encoder_attention_mask=masks["enc"],
                        use_cache=False,
                    )
                except StopForward:
                    pass
        finally:
            self._out, self._query_valid = {}, {}
        missed = [sink.stack for _, sink in self._sinks if id(sink) not in self._fired]
        if missed:
            raise RuntimeError(
                f"{type(self.model).__name__}'s attention did not call the {ATTN_IMPLEMENTATION!r} attention function "
                "(this transformers version computes T5 attention outside its registry): no patterns captured"
            )
        return out

    def __enter__(self) -> Seq2SeqCapturer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and mark, and restore the model's attention implementation."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, _ in self._sinks:
            delattr(module, SINK_ATTR)
        self._sinks.clear()
        if self._previous_attn is not None:
            self.model.set_attn_implementation(self._previous_attn)
            self._previous_attn = None


def _stop(module, args, output):
    raise StopForward


class _Sink:
    """Receives one attention layer's terms, score and probabilities [batch, heads, query, key]."""

    def __init__(
        self, capturer: Seq2SeqCapturer, stack: str, writes: list[tuple[str, str, int]], stats: BiasShareStats | None
    ):
        self.capturer, self.stack, self.writes, self.stats = capturer, stack, writes, stats

    def __call__(self, terms: ScoreTerms, score: torch.Tensor, probs: torch.Tensor) -> None:
        cap = self.capturer
        cap._fired.add(id(self))
        values = {"pattern": probs, "content": terms.content, "bias": terms.bias, "score": score}
        for name, term, slot in self.writes:
            value = values[term] if cap.heads is None else values[term][:, cap.heads]
            cap._out[name][:, slot].copy_(value, non_blocking=True)  # the bias [1, ...] broadcasts over the batch
        if self.stats is not None:
            self.stats.update(terms, cap._query_valid.get(self.stack))
