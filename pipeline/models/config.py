"""The model stage's options (the Hydra ``model`` group): which weights, in what dtype, where."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"  # bundled name, local directory, .gguf file or hub id
    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    revision: str | None = None
    cache_dir: str | None = None  # GGUF conversion cache; default $EMBWALK_CACHE or ~/.cache/embwalk
    device_map: str | None = None  # e.g. "auto": spread a model too large for one GPU over several (accelerate)
