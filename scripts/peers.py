"""What users write today, for the benchmarks: each writes the same residual
layers (embeddings + every block's output) to disk as float16, one .npy per batch
(and, for the attention case, every layer's attention probabilities likewise).

nnsight and TransformerLens are not embwalk dependencies: they are installed
by ``VENV=.venv-bench EXTRA="nnsight==0.8.1 transformer-lens==4.3.0" bash scripts/setup.sh``.
A peer whose package is missing is skipped.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from embwalk.models.families import trunk


def _save(i: int, layers: list[torch.Tensor], out_dir: Path) -> None:
    np.save(out_dir / f"batch{i}.npy", torch.stack(layers, dim=2).half().cpu().numpy())


def hf_loop(loaded, inputs, out_dir: Path) -> float:
    """transformers' output_hidden_states (its last entry is after the final norm)."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i, x in enumerate(inputs):
            out = loaded.trunk(input_ids=x.to(loaded.device), use_cache=False, output_hidden_states=True)
            _save(i, list(out.hidden_states), out_dir)
    return time.perf_counter() - start


def hf_eager_attention_method(loaded) -> Callable:
    """transformers' eager attention with ``output_attentions=True`` (SDPA cannot return
    probabilities), saving the hidden states and the attention probabilities."""
    eager = copy.deepcopy(loaded.model)  # the model embwalk uses keeps its SDPA attention
    eager.set_attn_implementation("eager")
    body = trunk(eager)

    def run(inputs, out_dir: Path) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i, x in enumerate(inputs):
                out = body(
                    input_ids=x.to(loaded.device), use_cache=False, output_hidden_states=True, output_attentions=True
                )
                _save(i, list(out.hidden_states), out_dir)
                np.save(out_dir / f"attn{i}.npy", torch.stack(out.attentions, dim=1).half().cpu().numpy())
        return time.perf_counter() - start

    return run


def nnsight_method(loaded) -> Callable | None:
    try:
        from nnsight import NNsight
    except ImportError:
        return None
    traced = NNsight(loaded.trunk)
    blocks = loaded.family.blocks

    def run(inputs, out_dir: Path) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i, x in enumerate(inputs):
                saved = []
                with traced.trace(x.to(loaded.device)):
                    layers = traced
                    for part in blocks.split("."):
                        layers = getattr(layers, part)
                    saved.append(layers[0].input.save())  # the embeddings entering block 0
                    for layer in layers:
                        saved.append(layer.output.save())
                _save(i, [s[0] if isinstance(s, tuple) else s for s in saved], out_dir)
        return time.perf_counter() - start

    return run


def transformer_lens_method(loaded, hub_name: str) -> Callable | None:
    try:
        from transformer_lens import TransformerBridge
    except ImportError:
        return None
    # TransformerLens switches the model it wraps to eager attention: give it a copy.
    bridge = TransformerBridge.boot_transformers(
        hub_name, hf_model=copy.deepcopy(loaded.model), tokenizer=loaded.tokenizer, device=str(loaded.device)
    )
    n = loaded.n_layers
    names = ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n)]
    wanted = set(names)

    def run(inputs, out_dir: Path) -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for i, x in enumerate(inputs):
                _, cache = bridge.run_with_cache(x.to(loaded.device), names_filter=lambda name: name in wanted)
                _save(i, [cache[name] for name in names], out_dir)
        return time.perf_counter() - start

    return run
