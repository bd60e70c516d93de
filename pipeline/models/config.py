"""The model stage's options (the Hydra ``model`` group): which weights, in what dtype, where."""

from __future__ import annotations

from dataclasses import dataclass

from embwalk.errors import ModelError


@dataclass
class ModelConfig:
    """Which model: a bundled name, a directory, a .gguf file or a hub id; its dtype and device."""

    name: str | None = "smollm2-135m"  # bundled name, local directory, .gguf file or hub id (None: required)
    dtype: str = "float32"  # float32 | float16 | bfloat16
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    revision: str | None = None
    cache_dir: str | None = None  # GGUF conversion cache; default $EMBWALK_CACHE or ~/.cache/embwalk
    device_map: str | None = None  # e.g. "auto": spread a model too large for one GPU over several (accelerate)
    # Encoder-decoder models: the stack a store holds, "dec" for a decoder store (loads the whole
    # model); None: the family's default (T5: the encoder alone). Set by the extraction job from its
    # capture sites (ExtractConfig.validate), so workers and the statistics load what was stored.
    stack: str | None = None

    def validate(self) -> None:
        if not self.name:  # model=hub
            raise ModelError("missing required option: model.name (bundled name, directory, .gguf file or hub id)")
        if self.stack not in (None, "enc", "dec"):
            raise ModelError(f"model.stack must be enc, dec or unset, got {self.stack!r}")
