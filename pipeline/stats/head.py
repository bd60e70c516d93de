"""What the statistics need from a model besides its activations: its unembedding and final norm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from embwalk.models.position_bias import LayerScores
from embwalk.models.seq2seq import logit_scale


@dataclass
class ModelHead:
    """What the statistics need from a model besides its activations.

    ``unembed`` W [V, d] and ``bias`` [V] are float32 (converted once here: the
    families would otherwise upcast a bf16 matrix on every call); ``final_norm``
    maps float32 [m, d] to float32 [m, d]; ``n_layers`` counts blocks. ``softcap``: the
    model's final logit soft-capping (Gemma 2: logits = softcap * tanh(z / softcap), z = x W^T
    + b), applied wherever logits are formed (``logits``); ``attention``: False for an
    attention-free model (Mamba), whose attention statistics do not apply; ``scores``: a model
    with a learned position bias (T5 family) recomputes its scores' terms from each layer's
    input (pipeline/models/position_bias.py ``LayerScores``: the bias_share statistic). A T5
    decoder store's ``unembed`` carries the model's output scaling (``from_loaded``).
    """

    n_layers: int
    d_model: int
    causal: bool
    unembed: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    final_norm: Callable[[torch.Tensor], torch.Tensor] | None = None
    softcap: float | None = None
    attention: bool = True
    scores: LayerScores | None = None

    def to(self, device: torch.device | str) -> ModelHead:
        """The same head on ``device`` (the final norm module moves too)."""
        device = torch.device(device)
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        norm = self.final_norm
        if isinstance(norm, Float32Norm):
            norm = Float32Norm(norm.module.to(device))
        return ModelHead(self.n_layers, self.d_model, self.causal, move(self.unembed), move(self.bias), norm,
                         self.softcap, self.attention, move(self.scores))

    @classmethod
    def from_loaded(cls, loaded, device: torch.device | str | None = None) -> ModelHead:
        """From a ``embwalk.models.loading.LoadedModel`` (its LM head and final norm)."""
        device = torch.device(device) if device is not None else loaded.device
        head = loaded.model.get_output_embeddings() if loaded.family.causal else None
        unembed = bias = None
        if head is not None and getattr(head, "weight", None) is not None:
            unembed = head.weight.detach().to(device=device, dtype=torch.float32)
            if loaded.family.stack == "dec":
                # T5's LM head reads final * d_model**-0.5 where transformers rescales (seq2seq.py
                # logit_scale): folded into W once, so every logit formed from ``final`` is the model's
                unembed = unembed * logit_scale(loaded.model)
            if getattr(head, "bias", None) is not None:
                bias = head.bias.detach().to(device=device, dtype=torch.float32)
        norm = None
        if loaded.family.final_norm:
            norm = Float32Norm(loaded.trunk.get_submodule(loaded.family.final_norm))
        softcap = getattr(loaded.config, "final_logit_softcapping", None)
        stack = loaded.family.stack or "enc"  # the stored stack's self-attention (a decoder store: the decoder's)
        scores = LayerScores(loaded.model, stack).to(device) if loaded.family.position_bias else None
        return cls(loaded.n_layers, loaded.d_model, loaded.family.causal, unembed, bias, norm,
                   softcap, loaded.family.attention, scores)


def logits(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None,
           softcap: float | None = None) -> torch.Tensor:
    """The model's logits x W^T + b of rows ``x`` [m, d], soft-capped as its LM head caps them."""
    z = x @ w.T
    if b is not None:
        z = z + b
    return z if softcap is None else z.div_(softcap).tanh_().mul_(softcap)


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
