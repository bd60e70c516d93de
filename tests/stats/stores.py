"""Small stores built by the real extraction from tiny random models, for the statistics routes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from embwalk.corpus import CorpusConfig
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.models.loading import weights_fingerprint
from embwalk.store.config import StoreConfig
from tests.conftest import tiny_loaded

SENTENCES = [
    "The cat sat on the mat while the dog slept by the door.",
    "Transformers move each token through a sequence of residual updates.",
    "A short one.",
    "Interpretability researchers study how vectors walk through embedding space, layer by layer.",
    "Zarr stores chunked arrays; Parquet stores tables.",
    "The cat sat on the mat, and the dog slept by the door again.",
    "Padding is never stored.",
]
ALL_SITES = ["resid_pre.0", "resid_post", "final", "attn_pattern"]


def corpus_file(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "corpus.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def peaked(loaded):
    """The tiny model with a scaled-up unembedding: a random 32-d head gives near-uniform
    next-token distributions over 49k tokens, whose KL and log-probabilities are then
    differences of nearly equal numbers; a peaked head makes them well-conditioned."""
    with torch.no_grad():
        loaded.model.get_output_embeddings().weight.mul_(40.0)
    return dataclasses.replace(loaded, weights_fingerprint=weights_fingerprint(loaded.model))


def tiny(name: str, tokenizer):
    loaded = tiny_loaded(name, tokenizer)
    return peaked(loaded) if loaded.family.causal else loaded


def build_store(root: Path, loaded, *, mode: str = "pack", seq_len: int = 16, shard_tokens: int = 32,
                dtype: str = "float16", sites: list[str] | None = None, model_name: str | None = None,
                stats: dict | None = None, store_arrays: bool = True) -> Path:
    cfg = ExtractConfig(
        corpus=CorpusConfig(path=str(corpus_file(root)), txt_unit="line", mode=mode, seq_len=seq_len),
        capture=CaptureConfig(sites=sites or ALL_SITES, stats=stats, store_arrays=store_arrays),
        store=StoreConfig(path=str(root / "store"), dtype=dtype, shard_tokens=shard_tokens, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=3, progress=False),
    )
    if model_name:
        cfg.model.name = model_name
        cfg.model.device = "cpu"
    extract_local(cfg, loaded)
    return root / "store"
