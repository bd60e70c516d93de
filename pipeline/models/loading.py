"""Load a model and tokenizer from a bundled name, a directory, a GGUF file or the hub.

Weights load from safetensors only (``use_safetensors=True``): no pickle of
anything a user hands us. GGUF files are dequantized by transformers once and
cached as safetensors, because dequantizing takes ~35 s and reloading the cache
under 1 s. ``trust_remote_code`` stays off unless the config turns it on.

Where the files are is ``embwalk.models.sources``. A model that came from files
is fingerprinted from those files (``embwalk.models.fingerprint``: the GGUF file
itself for a GGUF model, not its cache), so a worker that loads it and a job
driver that only described it with ``embwalk.models.spec.load_spec`` agree on
its fingerprint.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from embwalk.errors import ModelError, first_line
from embwalk.models.config import ModelConfig
from embwalk.models.families import Family, family_for, trunk
from embwalk.models.sources import (
    gguf_cache_path,
    gguf_cache_ready,
    locate_model,
    resolve_dtype,
    source_fingerprint,
)
from embwalk.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: torch.nn.Module  # the full transformers model (with LM head where it has one)
    tokenizer: object
    family: Family
    model_id: str  # what the user asked for, resolved (bundled description, path or hub id)
    weights_fingerprint: str
    device: torch.device
    dtype: torch.dtype

    @property
    def config(self):
        return self.model.config

    @property
    def trunk(self) -> torch.nn.Module:
        return trunk(self.model)

    @property
    def n_layers(self) -> int:
        return len(self.trunk.get_submodule(self.family.blocks))

    @property
    def d_model(self) -> int:
        return self.config.hidden_size

    @property
    def n_heads(self) -> int | None:
        """Attention heads per layer; None for an attention-free model (Mamba)."""
        return self.config.num_attention_heads if self.family.attention else None

    @property
    def max_positions(self) -> int | None:
        cfg = self.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def describe(self) -> dict:
        """What a store's manifest records of the model (the same as its spec's)."""
        return self.spec().describe()

    def spec(self) -> ModelSpec:
        """What the job driver needs of this model, without the model (same ``describe()``)."""
        return ModelSpec(
            model_id=self.model_id,
            family=self.family,
            tokenizer=self.tokenizer,
            hf_config=self.config,
            weights_fingerprint=self.weights_fingerprint,
            dtype=self.dtype,
        )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {name!r} asked for, but no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ModelError(f"unknown device {name!r}") from exc


def load_model(cfg: ModelConfig) -> LoadedModel:
    dtype, device = resolve_dtype(cfg.dtype), resolve_device(cfg.device)
    located = locate_model(cfg)
    source = str(gguf_cache(located.gguf, cfg)) if located.gguf else located.source
    try:
        hf_config = AutoConfig.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {cfg.name!r}: {first_line(exc)}") from exc
    family = family_for(hf_config, cfg.stack)
    # Decoders load with their LM head (the unembedding the walk statistics need); encoders as
    # the bare body (e.g. sentence-transformer weights); T5-family checkpoints as their encoder.
    try:
        model = family.auto_class().from_pretrained(
            source,
            revision=cfg.revision,
            dtype=dtype,
            attn_implementation=family.attn_implementation(cfg.attn_implementation),
            trust_remote_code=cfg.trust_remote_code,
            use_safetensors=True,
            **({"device_map": cfg.device_map} if cfg.device_map else {}),
        )
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {cfg.name!r}: {first_line(exc)}") from exc
    if cfg.device_map:
        # Layers sit on several devices; inputs go where the embeddings are, and
        # the capture hooks copy each layer's output from wherever it was computed.
        device = model.get_input_embeddings().weight.device
    else:
        model.to(device)
    model.eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        family=family,
        model_id=located.model_id,
        weights_fingerprint=source_fingerprint(located, cfg),
        device=device,
        dtype=dtype,
    )


def gguf_cache(gguf_path: Path, cfg: ModelConfig) -> Path:
    """Dequantize a GGUF file once into a safetensors directory and return it."""
    target = gguf_cache_path(gguf_path, cfg)
    if gguf_cache_ready(target):
        return target
    log.warning("converting %s to a safetensors cache at %s (once)", gguf_path.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        _convert_gguf(gguf_path, tmp)
        os.replace(tmp, target)  # atomic: a half-converted cache is never visible
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    from safetensors.torch import save_model

    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"cannot read GGUF file {gguf_path}: {first_line(exc)}") from exc
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the cache holds plain dequantized weights
    type(model.config).from_dict(config).save_pretrained(out)
    save_model(model, str(out / "model.safetensors"))  # handles tied embeddings
    tokenizer.save_pretrained(out)


def weights_fingerprint(model: torch.nn.Module, samples: int = 4096) -> str:
    """A cheap, deterministic fingerprint of an in-memory model's weights (not a full hash);
    a model loaded from files is fingerprinted from them instead (``source_fingerprint``).

    sha256 over every parameter's name, shape, dtype and an evenly strided
    sample of its values: any real change of model shows up, and it costs
    milliseconds where hashing a 7B checkpoint would cost a minute.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // samples)
        sample = flat[::step][:samples].to("cpu", torch.float32).contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()
