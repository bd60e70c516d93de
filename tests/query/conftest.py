"""Small real stores for the query tests: tiny random models with real tokenizers.

``packed``: Llama-style model, SmolLM2's tokenizer, pack mode, float16, many
small shards (so selections and datasets cross shard boundaries), every
residual site, resid_mid and attention. ``documents``: BERT-style model,
MiniLM's tokenizer, one document per sequence (sequences of different lengths,
some straddling shards), zstd-compressed, so reads go through Zarr rather
than raw bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr

from embwalk.corpus import CorpusConfig
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.store.config import StoreConfig
from tests.conftest import tiny_loaded

TEXTS = [
    "The cat sat on the mat while the dog slept by the door.",
    "Transformers move each token through a sequence of residual updates.",
    "A short one.",
    "Interpretability researchers study how vectors walk through embedding space, layer by layer.",
    "Zarr stores chunked arrays; Parquet stores tables.",
    "The the the the: a repeated word is a good test of token search.",
    "Every corpus token must appear exactly once in the token table.",
    "Padding is never stored, and neither are half-written shards.",
    "Attention mixes context into each position, weighted by similarity.",
    "Sparse autoencoders read millions of vectors in shuffled batches.",
    "DuckDB runs SQL over Parquet files without loading them first.",
    "The end.",
]


def write_corpus(path: Path) -> Path:
    path.write_text("\n".join(TEXTS) + "\n")
    return path


def packed_config(tmp: Path, corpus: Path, store: str = "packed") -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", mode="pack", seq_len=16),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "resid_mid", "final", "attn_pattern"]),
        store=StoreConfig(path=str(tmp / store), dtype="float16", shard_tokens=32, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=4, progress=False),
    )


@pytest.fixture(scope="session")
def packed(tmp_path_factory, smollm2) -> Path:
    tmp = tmp_path_factory.mktemp("packed")
    cfg = packed_config(tmp, write_corpus(tmp / "corpus.txt"))
    extract_local(cfg, tiny_loaded("llama", smollm2.tokenizer))
    return Path(cfg.store.path)


@pytest.fixture(scope="session")
def documents(tmp_path_factory, minilm) -> Path:
    tmp = tmp_path_factory.mktemp("documents")
    cfg = ExtractConfig(
        corpus=CorpusConfig(path=str(write_corpus(tmp / "corpus.txt")), txt_unit="line", mode="document", seq_len=24),
        capture=CaptureConfig(sites=["resid_post.1", "final", "attn_pattern.0", "attn_pattern.2"], heads=[1, 3]),
        store=StoreConfig(path=str(tmp / "store"), dtype="float32", shard_tokens=24, chunk_tokens=8, compressor="zstd"),
        cluster=ClusterConfig(batch_size=4, progress=False),
    )
    extract_local(cfg, tiny_loaded("bert", minilm.tokenizer))
    return Path(cfg.store.path)


def reference_tokens(path: Path) -> pa.Table:
    """The token table as pyarrow reads it: the files of committed shards, in shard order."""
    committed = sorted(int(p.stem.split("-")[1]) for p in (path / "tokens").glob("shard-*.parquet"))
    tables = [pq.read_table(path / "tokens" / f"shard-{i:05d}.parquet") for i in committed]
    return pa.concat_tables(tables)


def reference_vectors(path: Path, array: str, rows: np.ndarray, index: int | None) -> np.ndarray:
    """Vectors as zarr reads them, row by row (slow and obviously right)."""
    arr = zarr.open_array(path / "activations.zarr" / array, mode="r")
    d = arr.shape[-1]
    out = np.empty((len(rows), d), dtype=arr.dtype)
    for i, r in enumerate(rows):
        out[i] = arr[int(r)] if index is None else arr[int(r), index]
    return out
