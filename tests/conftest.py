"""Shared fixtures: tiny random-initialised models of every family, and the real bundled ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T

from embwalk.models.families import family_for
from embwalk.models.loading import LoadedModel, weights_fingerprint

_T5 = dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
           relative_attention_num_buckets=8, relative_attention_max_distance=16)

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
    # Gemma 2: sliding / full / sliding layers with a window shorter than the test sequences, a
    # query_pre_attn_scalar that is not head_dim, and weights large enough (initializer_range)
    # that both soft-caps bend the scores and logits: tests that ignored them would fail.
    "gemma2": lambda: T.Gemma2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=4, query_pre_attn_scalar=32, attn_logit_softcapping=1.0,
        final_logit_softcapping=2.0, initializer_range=0.2,
    ),
    "gemma3_text": lambda: T.Gemma3TextConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        sliding_window=4, sliding_window_pattern=2, query_pre_attn_scalar=32,
    ),
    "phi3": lambda: T.Phi3Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    ),
    "qwen2_moe": lambda: T.Qwen2MoeConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=32,
    ),
    "mixtral": lambda: T.MixtralConfig(
        vocab_size=128, hidden_size=32, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        num_local_experts=4, num_experts_per_tok=2,
    ),
    # T5 family, loaded as the encoder alone (AutoModelForTextEncoding); the relative position bias
    # saturates past 16 tokens (tests/models/test_t5_encoder.py scales it up to matter more)
    "t5": lambda: T.T5Config(**_T5),
    "t5_v1_1": lambda: T.T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, **_T5),
    "mt5": lambda: T.MT5Config(**_T5),
    "umt5": lambda: T.UMT5Config(**_T5),
    "mamba": lambda: T.MambaConfig(
        vocab_size=128, hidden_size=32, state_size=4, num_hidden_layers=2, expand=2, conv_kernel=4,
    ),
    "mamba2": lambda: T.Mamba2Config(
        vocab_size=128, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4,
        num_heads=8, head_dim=8, n_groups=1, chunk_size=8,
    ),
}


def tiny_loaded(name: str, tokenizer=None) -> LoadedModel:
    """A tiny random-initialised model of a family; with a tokenizer, its vocabulary fits it."""
    torch.manual_seed(0)
    config = TINY_CONFIGS[name]()
    if tokenizer is not None:
        config.vocab_size = len(tokenizer)
    family = family_for(config)
    auto = family.auto_class()  # T5: the encoder alone, as load_model loads it
    attn = family.attn_implementation("sdpa")  # eager where transformers has no SDPA (Gemma 2, Mamba)
    model = auto.from_config(config, attn_implementation=attn).eval().requires_grad_(False)
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
