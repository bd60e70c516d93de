"""``extract(cfg)``: an extraction job on the executor ``cfg.cluster.kind`` names (local.py, ray.py)."""

from __future__ import annotations

from embwalk.errors import EmbwalkError
from embwalk.extraction.config import ExtractConfig


def extract(cfg: ExtractConfig, loaded=None) -> dict:
    """Run (or resume) the extraction job ``cfg`` here or on Ray; returns the store's manifest
    (with ``run_seconds`` and ``run_tokens``). ``loaded``: an in-memory model (tests)."""
    if cfg.cluster.kind == "local":
        from embwalk.executors.local import extract_local as execute
    elif cfg.cluster.kind == "ray":
        from embwalk.executors.ray import extract_ray as execute  # Ray is imported only when used
    else:
        raise EmbwalkError(f"unknown cluster.kind {cfg.cluster.kind!r}; choose local or ray")
    return execute(cfg, loaded)
