"""Nearest vocabulary tokens of residual vectors (for labelling trajectories)."""

from __future__ import annotations

import logging

import numpy as np
import torch

from embwalk.errors import EmbwalkError
from embwalk.store.reader import Store

log = logging.getLogger(__name__)


class Vocabulary:
    """The unembedding directions of a model and its tokenizer's strings."""

    def __init__(self, unembed: torch.Tensor, tokens: list[str], final_norm=None):
        w = unembed.detach().float()
        self.directions = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)
        self.tokens = tokens
        self.final_norm = final_norm

    def nearest(self, x: np.ndarray) -> list[str]:
        """For each vector [m, d]: the token whose unembedding vector is nearest in angle to
        final_norm(x). Not the logit lens's top-1, which ranks dot products (row norms and biases
        count there): the two often differ."""
        t = torch.as_tensor(np.asarray(x, np.float32))
        if self.final_norm is not None:
            t = self.final_norm(t)
        ids = (t @ self.directions.T).argmax(-1).tolist()
        return [self.tokens[i] if i < len(self.tokens) else f"<{i}>" for i in ids]


def load_vocabulary(store: Store, loaded=None) -> Vocabulary | None:
    """The store's model's vocabulary, or None (logged) when the model cannot be had or has no
    unembedding: labels are a nicety, the figures are drawn without them."""
    from embwalk.corpus import vocabulary_strings
    from embwalk.stats.job import model_head

    try:
        if loaded is None:
            from dataclasses import replace

            from embwalk.models.config import ModelConfig
            from embwalk.models.loading import load_model

            cfg = ModelConfig(**store.manifest["config"]["model"])
            loaded = load_model(replace(cfg, device="cpu", device_map=None))
        head = model_head(store, loaded)
    except EmbwalkError as exc:
        log.warning("trajectory labels left out: %s", exc)
        return None
    if head.unembed is None:
        return None
    return Vocabulary(head.unembed, vocabulary_strings(loaded.tokenizer), head.final_norm)
