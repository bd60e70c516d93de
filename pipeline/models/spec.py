"""Describe a model without building it: what a job driver needs to plan.

``load_spec`` reads the model's config and tokenizer and fingerprints its weight
files (``embwalk.models.fingerprint``); it never builds the model, never reads
its weights into memory and never dequantizes a GGUF file. A GGUF model's config
and tokenizer come from the safetensors cache ``load_model`` keeps when it
exists (milliseconds) and from the GGUF metadata otherwise (a few seconds: the
vocabulary is parsed, no tensor is read). The fingerprint is the one
``load_model`` gives the same model, so a driver's plan and a worker's model
check against each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoTokenizer

from embwalk.errors import ModelError, first_line
from embwalk.models.config import ModelConfig
from embwalk.models.families import Family, family_for
from embwalk.models.sources import (
    gguf_cache_path,
    gguf_cache_ready,
    locate_model,
    resolve_dtype,
    source_fingerprint,
)


@dataclass
class ModelSpec:
    model_id: str  # resolved, as LoadedModel.model_id
    family: Family
    tokenizer: object
    hf_config: object  # the transformers PretrainedConfig
    weights_fingerprint: str
    dtype: torch.dtype  # the dtype the workers load the model in

    @property
    def config(self):
        """The transformers config (as ``LoadedModel.config``)."""
        return self.hf_config

    @property
    def n_layers(self) -> int:
        # n_layer etc. are aliases (attribute_map); a T5 decoder store: the decoder's depth
        return getattr(self.hf_config, self.family.n_layers_attr)

    @property
    def d_model(self) -> int:
        return self.hf_config.hidden_size

    @property
    def n_heads(self) -> int | None:
        """Attention heads per layer; None for an attention-free model (Mamba: its config has none,
        and Mamba2's ``num_heads`` are SSM heads)."""
        return self.hf_config.num_attention_heads if self.family.attention else None

    @property
    def max_positions(self) -> int | None:
        cfg = self.hf_config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size

    def describe(self) -> dict:
        """The same dict ``LoadedModel.describe()`` gives for the loaded model."""
        return {
            "id": self.model_id,
            "weights_fingerprint": self.weights_fingerprint,
            "model_type": self.hf_config.model_type,
            "family": self.family.name,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "vocab_size": self.vocab_size,
            "max_positions": self.max_positions,
            "dtype": str(self.dtype).removeprefix("torch."),
            # a decoder store of an encoder-decoder model (docs/seq2seq.md); encoder stores' describe
            # stays as it was (their stack is the family's default)
            **({"stack": "dec"} if self.family.stack == "dec" else {}),
        }


def load_spec(cfg: ModelConfig) -> ModelSpec:
    """The spec of the model ``cfg`` names (resolved as ``load_model`` resolves it), from its
    config, tokenizer and weight files only."""
    dtype = resolve_dtype(cfg.dtype)
    located = locate_model(cfg)
    source, extra = located.source, {}
    if located.gguf:
        cache = gguf_cache_path(located.gguf, cfg)
        if gguf_cache_ready(cache):
            source = str(cache)  # what load_model will load: same config and tokenizer
        else:
            extra = {"gguf_file": located.gguf.name}  # metadata only: no tensor is read
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code, **extra}
    try:
        hf_config = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load model {cfg.name!r}: {first_line(exc)}") from exc
    family = family_for(hf_config, cfg.stack)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot load the tokenizer of model {cfg.name!r}: {first_line(exc)}") from exc
    return ModelSpec(
        model_id=located.model_id,
        family=family,
        tokenizer=tokenizer,
        hf_config=hf_config,
        weights_fingerprint=source_fingerprint(located, cfg),
        dtype=dtype,
    )
