"""The generation's forward pass: a batch of prompts decoded one token at a time with the
KV cache, every capture site written as each token goes through (never a second pass).

The shard runner (pipeline/extraction/runner.py) calls it where an extraction runs one
forward pass, with the same capture buffers [batch, T, ...]: the prefill writes the
prompt's rows, step t writes row P + t (the token chosen at step t, fed back in), so the
vectors of every stored token are those the model computed while generating. The token
fed last is run once more than ``generate`` would, for its own vectors.

A batch holds continuations of one length (every prompt has P tokens): no padding, so
nothing padded is ever computed, stored or mixed into a value.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from embwalk.corpus.sequences import ShardTokens
from embwalk.generation.config import DecodeConfig
from embwalk.generation.decode import Decoder
from embwalk.generation.plan import GenerationPlan
from embwalk.models.capture import Capturer
from embwalk.models.loading import LoadedModel

# Token-table columns each step fills (null on prompt rows), with their numpy dtypes.
STEP_DTYPES = {"prob": np.float32, "rank": np.int32, "entropy": np.float32, "sample_prob": np.float32,
               "path_logprob": np.float64}


class GenerationForward:
    """``ShardRunner``'s forward for generation: fills the capture buffers and the window's rows."""

    def __init__(self, loaded: LoadedModel, decode: DecodeConfig, plan: GenerationPlan):
        self.loaded, self.plan = loaded, plan
        self.decoder = Decoder(decode)
        self.top = decode.top_candidates
        accepts = inspect.signature(loaded.model.forward).parameters
        self.keep_last = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}  # no [B, P, V] prefill logits
        self.cache_arg = "cache" if "cache" in accepts else "past_key_values"  # renamed in transformers 5.2x

    @torch.inference_mode()
    def __call__(self, capturer: Capturer, ids: torch.Tensor, mask: torch.Tensor | None,
                 out: dict[str, torch.Tensor] | None, batch: list[int], starts: list[int],
                 win: ShardTokens) -> dict[str, torch.Tensor]:
        p, n = self.plan.prompt_len, self.plan.new_tokens
        got = out if out is not None else capturer.scratch(len(batch), p + n)
        if "pattern" in got:
            got["pattern"].zero_()  # rows see only their past: the keys after it stay 0, as in an extraction
        model, device = self.loaded.model, self.loaded.device
        history = ids[:, :p].to(device)
        generators = self.decoder.generators(batch, device)
        with capturer.writing_to(_rows(got, 0, p)):
            res = model(input_ids=history, use_cache=True, **self.keep_last)
        records = []
        for t in range(n):
            step = self.decoder.step(res.logits[:, -1], history, generators)
            records.append(step.records)
            history = torch.cat([history, step.tokens[:, None]], dim=1)
            with capturer.writing_to(_rows(got, p + t, p + t + 1)):
                res = model(input_ids=step.tokens[:, None], use_cache=True, **self.keep_last,
                            **{self.cache_arg: _cache(res)})
        self._fill(win, starts, history[:, p:].cpu().numpy(), records)
        return got

    def _fill(self, win: ShardTokens, starts: list[int], new: np.ndarray, records: list[dict]) -> None:
        """The generated tokens and each step's record, into the window's rows."""
        cols = win.columns
        if "prob" not in cols:  # masked (null in the token table) until a step fills the row
            size = len(win.token_ids)
            for name, dtype in STEP_DTYPES.items():
                cols[name] = np.ma.masked_all(size, dtype)
            cols["top_ids"] = np.ma.masked_all((size, self.top), np.int32)
            cols["top_probs"] = np.ma.masked_all((size, self.top), np.float32)
        stacked = {k: np.stack([r[k] for r in records], axis=1) for k in records[0]}  # [B, N, ...]
        stacked["path_logprob"] = np.cumsum(stacked.pop("logprob").astype(np.float64), axis=1)
        p, t = self.plan.prompt_len, self.plan.seq_len
        for j, start in enumerate(starts):
            rows = win.rows(start + p, start + t)
            win.token_ids[rows] = new[j]
            for name, values in stacked.items():
                cols[name][rows] = values[j]


def _cache(output) -> object:
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def _rows(bufs: dict[str, torch.Tensor], a: int, b: int) -> dict[str, torch.Tensor]:
    """The capture buffers' views for positions [a, b): per-token arrays [batch, b - a, ...];
    the pattern's rows a..b-1 over keys 0..b-1 (what those queries see)."""
    return {name: (v[:, :, :, a:b, :b] if name == "pattern" else v[:, a:b]) for name, v in bufs.items()}
