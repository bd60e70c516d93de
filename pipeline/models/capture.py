"""Capture every requested site in one forward pass.

One forward hook per block writes that block's output straight into a
preallocated buffer (``resid`` [batch, seq, layer, d_model], cast to the store
dtype on the way), so there is one copy per layer and no per-site hook chain.
Optional sites (resid_mid, attn_out, mlp_out) add a hook only where asked.
Attention probabilities come from the registered SDPA-plus-probabilities
function (sdpa_patterns.py), only for the requested layers and heads. When nothing
after block k is needed, the hook of block k stops the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from embwalk.models import sdpa_patterns
from embwalk.models.families import PATTERN_KINDS, SCORE_TERMS, TAP_KINDS
from embwalk.models.loading import LoadedModel
from embwalk.models.position_bias import ScoreTerms
from embwalk.models.sites import Site
from embwalk.store.layout import CROSS_KINDS, SEQUENCE_ARRAYS  # per-sequence kind -> its buffer and array


class StopForward(Exception):
    """Raised by the last needed block's hook: the rest of the model is not run."""


@dataclass(frozen=True)
class CaptureLayout:
    """Which layers each captured array holds, in storage order."""

    residual: tuple[int, ...] = ()  # residual indices: 0 = embeddings, i = output of block i-1
    final: bool = False
    taps: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (kind, block indices)
    pattern_layers: tuple[int, ...] = ()
    cross_pattern_layers: tuple[int, ...] = ()  # a T5 decoder's cross-attention, [query: decoder, key: encoder]
    score_terms: tuple[tuple[str, tuple[int, ...]], ...] = ()  # (kind, block indices): attn_score etc. (T5)
    heads: tuple[int, ...] | None = None  # attention heads to keep; None = all

    @classmethod
    def from_sites(cls, sites: list[Site], heads: list[int] | None = None) -> CaptureLayout:
        def layers(kind: str) -> tuple[int, ...]:
            return tuple(sorted({s.layer for s in sites if s.kind == kind}))

        residual = sorted({s.residual_index for s in sites if s.residual_index is not None})
        return cls(
            residual=tuple(residual),
            final=any(s.kind == "final" for s in sites),
            taps=tuple((k, layers(k)) for k in TAP_KINDS if layers(k)),
            pattern_layers=layers("attn_pattern"),
            cross_pattern_layers=layers("cross_pattern"),
            score_terms=tuple((k, layers(k)) for k in SCORE_TERMS if layers(k)),
            heads=tuple(heads) if heads is not None else None,
        )

    def kinds(self) -> list[str]:
        """The optional site kinds (beyond the residual stream) the layout captures."""
        return [kind for kind, _ in self.taps] + list(self.per_sequence())

    def patterns(self) -> dict[str, tuple[int, ...]]:
        """Pattern kind -> its layers (attn_pattern lands in the buffer and array ``pattern``)."""
        return {"attn_pattern": self.pattern_layers, "cross_pattern": self.cross_pattern_layers}

    def per_sequence(self) -> dict[str, tuple[int, ...]]:
        """Every per-sequence kind captured (patterns, score terms) -> its layers (SEQUENCE_ARRAYS: its array)."""
        kinds = {**self.patterns(), **dict(self.score_terms)}
        return {kind: layers for kind, layers in kinds.items() if layers}

    def last_block(self, n_layers: int) -> int:
        """The last block whose computation some site needs."""
        if self.final:
            return n_layers - 1
        needed = [r - 1 for r in self.residual] + [b for blocks in self.per_sequence().values() for b in blocks]
        needed += [b for _, blocks in self.taps for b in blocks]
        return max(needed, default=0)

    def array_layers(self) -> dict[str, tuple[int, ...]]:
        """Per-token arrays and the layers along their layer axis."""
        arrays = {"resid": self.residual} if self.residual else {}
        arrays.update(dict(self.taps))
        return arrays


class Capturer:
    """Hooks a loaded model once; ``run`` fills buffers for one batch."""

    def __init__(self, loaded: LoadedModel, layout: CaptureLayout, dtype: torch.dtype, run_to_end: bool = False):
        """``run_to_end``: never stop the forward pass early (generation needs the logits)."""
        self.loaded, self.layout, self.dtype = loaded, layout, dtype
        self.trunk = loaded.trunk
        family, n_layers = loaded.family, loaded.n_layers
        family.check_kinds(layout.kinds(), loaded.config, layout.taps)  # one line for a site the family lacks
        self.blocks = self.trunk.get_submodule(family.blocks)
        self.n_heads = loaded.n_heads
        self._out: dict[str, torch.Tensor] = {}
        self._handles: list = []
        self._scratch: dict[str, torch.Tensor] = {}
        self._previous_attn: str | None = None

        slots = {r: s for s, r in enumerate(layout.residual)}
        stop_after = None if layout.final or run_to_end else layout.last_block(n_layers)
        final_is_last_block = layout.final and family.final_norm is None
        if 0 in slots:
            self._handles.append(
                self.blocks[0].register_forward_pre_hook(self._block_input_hook(slots[0]), with_kwargs=True)
            )
        for b, block in enumerate(self.blocks):
            slot = slots.get(b + 1)
            also_final = final_is_last_block and b == n_layers - 1
            if slot is not None or also_final or b == stop_after:
                hook = self._block_output_hook(slot, also_final, stop=b == stop_after)
                self._handles.append(block.register_forward_hook(hook))
        if layout.final and family.final_norm is not None:
            norm = self.trunk.get_submodule(family.final_norm)
            self._handles.append(norm.register_forward_hook(self._tap_hook("final", None, "output")))
        for kind, blocks in layout.taps:
            path, where = family.tap(kind, loaded.config)
            for slot, b in enumerate(blocks):
                module = self.blocks[b].get_submodule(path)
                hook = self._tap_hook(kind, slot, where)
                if where == "input":
                    self._handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
                else:
                    self._handles.append(module.register_forward_hook(hook))
        if layout.per_sequence():
            self._install_attention_sinks()

    # -- hooks ---------------------------------------------------------------------------

    def _write(self, name: str, slot: int | None, hidden: torch.Tensor) -> None:
        dest = self._out[name]
        dest = dest if slot is None else dest[:, :, slot]
        if hidden.dim() == 2 and dest.dim() == 3:  # a router's logits come flat: [batch * seq, experts]
            hidden = hidden.view(dest.shape)
        dest.copy_(hidden, non_blocking=True)

    def _block_input_hook(self, slot: int):
        def hook(module, args, kwargs):
            self._write("resid", slot, args[0] if args else kwargs["hidden_states"])

        return hook

    def _block_output_hook(self, slot: int | None, also_final: bool, stop: bool):
        def hook(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            if slot is not None:
                self._write("resid", slot, hidden)
            if also_final:
                self._write("final", None, hidden)
            if stop:
                raise StopForward

        return hook

    def _tap_hook(self, name: str, slot: int | None, where: str):
        if where == "input":
            def pre_hook(module, args, kwargs):
                self._write(name, slot, args[0] if args else next(iter(kwargs.values())))

            return pre_hook

        def hook(module, args, output):
            self._write(name, slot, output[0] if isinstance(output, tuple) else output)

        return hook

    def _install_attention_sinks(self) -> None:
        """Mark each captured layer's attention module with the sinks its attention function feeds:
        ``embwalk_pattern_sink`` (probabilities) and ``embwalk_terms_sink`` (score terms)."""
        family = self.loaded.family
        terms: dict[tuple[int, str | None], dict[str, int]] = {}  # (block, module path) -> {array: slot}
        for kind, layers in self.layout.per_sequence().items():
            path = family.attention_module(kind)
            for slot, b in enumerate(layers):
                if kind in PATTERN_KINDS:
                    self._mark(b, path, "embwalk_pattern_sink",
                               _PatternSink(self, SEQUENCE_ARRAYS[kind], slot, self.layout.heads))
                else:
                    terms.setdefault((b, path), {})[SEQUENCE_ARRAYS[kind]] = slot
        for (b, path), slots in terms.items():
            self._mark(b, path, "embwalk_terms_sink", _TermsSink(self, slots, self.layout.heads))
        model = self.loaded.model
        self._previous_attn = model.config._attn_implementation
        model.set_attn_implementation(sdpa_patterns.register())

    def _mark(self, block: int, path: str | None, attr: str, sink) -> None:
        # The attention function gets the module that calls it. A family that names its attention
        # modules gets only that one marked (a T5 decoder block holds two: the self-attention must
        # not catch the cross-attention's call); otherwise every submodule of the block is, which
        # finds it whatever the family calls it.
        for module in [self.blocks[block].get_submodule(path)] if path else self.blocks[block].modules():
            setattr(module, attr, sink)

    # -- running -------------------------------------------------------------------------

    def buffer_shapes(self, batch: int, seq: int, keys: int | None = None) -> dict[str, tuple[int, ...]]:
        """``keys``: the cross-attention's key length (the encoder's inputs; default ``seq``)."""
        d, family, config = self.loaded.d_model, self.loaded.family, self.loaded.config
        shapes = {name: (batch, seq, len(layers), family.site_width(name, config, d))
                  for name, layers in self.layout.array_layers().items()}
        if self.layout.final:
            shapes["final"] = (batch, seq, d)
        n_heads = len(self.layout.heads) if self.layout.heads is not None else self.n_heads
        for kind, layers in self.layout.per_sequence().items():
            key_len = keys if kind in CROSS_KINDS and keys is not None else seq
            shapes[SEQUENCE_ARRAYS[kind]] = (batch, len(layers), n_heads, seq, key_len)
        return shapes

    def scratch(self, batch: int, seq: int, keys: int | None = None) -> dict[str, torch.Tensor]:
        """Reusable buffers on the model's device, grown only when a batch is larger."""
        out = {}
        for name, shape in self.buffer_shapes(batch, seq, keys).items():
            buf = self._scratch.get(name)
            if buf is None or buf.numel() < math.prod(shape):
                buf = torch.empty(math.prod(shape), dtype=self.dtype, device=self.loaded.device)
                self._scratch[name] = buf
            out[name] = buf[: math.prod(shape)].view(shape)
        return out

    @torch.inference_mode()
    def run(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        out: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """One forward pass; returns {array name: [batch, seq, ...]} (``out`` if given).

        ``out`` lets the caller pass views of its own host buffers so that the
        hooks write straight into them (no padding, CPU): one copy in all.
        """
        batch, seq = input_ids.shape
        self._out = out if out is not None else self.scratch(batch, seq)
        kwargs = {"use_cache": False} if self.loaded.family.causal else {}
        try:
            self.trunk(
                input_ids=input_ids.to(self.loaded.device),
                attention_mask=None if attention_mask is None else attention_mask.to(self.loaded.device),
                **kwargs,
            )
        except StopForward:
            pass
        return self._out

    @contextmanager
    def writing_to(self, out: dict[str, torch.Tensor]) -> Iterator[None]:
        """Hooks write into ``out`` during any forward the caller runs (a decoding step of the
        whole model, with its KV cache: pipeline/generation/forward.py)."""
        self._out = out
        try:
            yield
        finally:
            self._out = {}

    def __enter__(self) -> Capturer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook: until then, any forward of the model writes into the buffers."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for block in self.blocks:
            for module in block.modules():
                for attr in ("embwalk_pattern_sink", "embwalk_terms_sink"):
                    if hasattr(module, attr):
                        delattr(module, attr)
        if self._previous_attn is not None:
            self.loaded.model.set_attn_implementation(self._previous_attn)
            self._previous_attn = None


class _PatternSink:
    """Receives one layer's probabilities [batch, heads, query, key] for the buffer ``name``."""

    def __init__(self, capturer: Capturer, name: str, slot: int, heads: tuple[int, ...] | None):
        self.capturer, self.name, self.slot = capturer, name, slot
        self.heads = list(heads) if heads is not None else None

    def __call__(self, probs: torch.Tensor) -> None:
        dest = self.capturer._out[self.name][:, self.slot]
        # A decoding step of a sliding-window layer (Gemma) attends over its cache's window only:
        # the most recent keys, so they are the last columns; the earlier ones stay 0, unseen.
        dest[..., dest.shape[-1] - probs.shape[-1] :].copy_(probs, non_blocking=True)




class _TermsSink:
    """Receives one attention call's score terms (position_bias.ScoreTerms) and copies the ones
    asked for into their buffers (``slots``: array name -> slot on its layer axis): ``content``
    (q·k times the module's scaling), ``position_bias`` and ``score`` (their sum, pre-softmax), each
    0 where the query does not see the key, so the arrays hold finite numbers and read as patterns do."""

    def __init__(self, capturer: Capturer, slots: dict[str, int], heads: tuple[int, ...] | None):
        self.capturer, self.slots = capturer, slots
        self.heads = list(heads) if heads is not None else None

    def __call__(self, terms: ScoreTerms) -> None:
        for name, slot in self.slots.items():
            if name == "content":
                value = terms.content
            elif name == "position_bias":
                value = terms.bias.expand_as(terms.content)
            else:  # score, cross_score
                value = terms.content + terms.bias
            if self.heads is not None:
                value = value[:, self.heads]
            if terms.visible is not None:
                value = value.masked_fill(~terms.visible, 0.0)
            self.capturer._out[name][:, slot].copy_(value, non_blocking=True)
