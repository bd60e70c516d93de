"""Shared fixtures: tiny random-initialised models of every family, and the real bundled ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from embwalk.models.families import family_for
from embwalk.models.loading import LoadedModel, weights_fingerprint

TINY_CONFIGS = {
    "llama": lambda: T.LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    ),
    "mistral": lambda: T.MistralConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=1, max_position_embeddings=64,
        sliding_window=None,
    ),
    "qwen2": lambda: T.Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    ),
    "gpt2": lambda: T.GPT2Config(
        vocab_size=128, n_embd=32, n_layer=3, n_head=4, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    ),
    "gpt_neox": lambda: T.GPTNeoXConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64,
    ),
    "gpt_neox_sequential": lambda: T.GPTNeoXConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=64, use_parallel_residual=False,
    ),
    "bert": lambda: T.BertConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=64,
    ),
}


def tiny_loaded(name: str, tokenizer=None) -> LoadedModel:
    """A tiny random-initialised model of a family; with a tokenizer, its vocabulary fits it."""
    torch.manual_seed(0)
    config = TINY_CONFIGS[name]()
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
    family = family_for(config)
    auto = T.AutoModelForCausalLM if family.causal else T.AutoModel
    model = auto.from_config(config, attn_implementation="sdpa").eval().requires_grad_(False)
    return LoadedModel(
        model=model, tokenizer=tokenizer, family=family, model_id=f"tiny-{name}",
        weights_fingerprint=weights_fingerprint(model), device=torch.device("cpu"),
        dtype=torch.float32,
    )


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny(request) -> LoadedModel:
    return tiny_loaded(request.param)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real SmolLM2-135M (converted from its GGUF once, then cached as safetensors)."""
    from embwalk.models.config import ModelConfig
    from embwalk.models.loading import load_model

    return load_model(ModelConfig(name="smollm2-135m", device="cpu"))


@pytest.fixture(scope="session")
def minilm() -> LoadedModel:
    """The real all-MiniLM-L6-v2 BERT encoder."""
    from embwalk.models.config import ModelConfig
    from embwalk.models.loading import load_model

    return load_model(ModelConfig(name="all-minilm-l6-v2", device="cpu"))



def assert_same_contents(a: dict, b: dict) -> None:
    """Two stores' contents as tests gather them: Arrow tables, arrays, other values."""
    assert a.keys() == b.keys()
    for key in a:
        if hasattr(a[key], "equals"):  # an Arrow table
            assert a[key].equals(b[key]), key
        elif isinstance(a[key], np.ndarray):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            assert a[key] == b[key], key
