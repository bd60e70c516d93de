"""Session stores for the statistics routes (built once; tests that write copy them first)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.stats.stores import build_store, tiny


@pytest.fixture(scope="session")
def tiny_llama(smollm2):
    return tiny("llama", smollm2.tokenizer)


@pytest.fixture(scope="session")
def pack_store(tmp_path_factory, tiny_llama) -> Path:
    """float16, packed 16-token sequences, 32-row shards, every residual layer, final and attention."""
    return build_store(tmp_path_factory.mktemp("pack"), tiny_llama)


@pytest.fixture(scope="session")
def doc_store(tmp_path_factory, tiny_llama) -> Path:
    """Document mode with 16-row shards: sequences run across shard boundaries."""
    return build_store(tmp_path_factory.mktemp("doc"), tiny_llama, mode="document", seq_len=24, shard_tokens=16)


@pytest.fixture
def copy_store(tmp_path):
    def copy(store: Path) -> Path:
        out = tmp_path / "store"
        shutil.copytree(store, out)
        return out

    return copy
