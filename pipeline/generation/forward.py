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
from embwalk.store.layout import GENERATION_COLUMNS

# Token-table columns each step fills (null on prompt rows); their types are the store format's.
STEP_COLUMNS = ("prob", "rank", "entropy", "sample_prob", "path_logprob", "top_ids", "top_probs")


def _numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a step column, or of a list column's items (store.layout.GENERATION_COLUMNS)."""
    kind = GENERATION_COLUMNS.field(name).type
    return np.dtype((kind.value_type if hasattr(kind, "value_type") else kind).to_pandas_dtype())


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
        if self.decoder.cfg.strategy == "beam":
            self._beam(capturer, ids, got, batch, starts, win)
            return got
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
                res = self._feed(step.tokens[:, None], _cache(res), last=t == n - 1)
        self._fill(win, starts, history[:, p:].cpu().numpy(), records)
        return got

    def _beam(self, capturer: Capturer, ids: torch.Tensor, got: dict[str, torch.Tensor], batch: list[int],
              starts: list[int], win: ShardTokens) -> None:
        """Beam search over the batch's prompts, as ``generate(num_beams=K)`` searches: each step
        ranks every beam's continuations by the beam's score plus the processed log-probabilities,
        keeps the best K, and reorders the KV cache, the beams' captured rows and their records
        by the beam each came from. Continuation ``sample`` k of a prompt is its k-th best beam."""
        cfg, p, n = self.decoder.cfg, self.plan.prompt_len, self.plan.new_tokens
        k, samples = int(cfg.num_beams), self.plan.samples
        model, device = self.loaded.model, self.loaded.device
        prompts = sorted({g // samples for g in batch})  # a prompt's continuations may share the batch
        first = [next(j for j, g in enumerate(batch) if g // samples == q) for q in prompts]
        history = ids[first, :p].to(device).repeat_interleave(k, dim=0)  # [prompts * K, P]
        work = {name: torch.zeros(shape, dtype=capturer.dtype, device=device)
                for name, shape in capturer.buffer_shapes(len(history), p + n).items()}
        with capturer.writing_to(_rows(work, 0, p)):
            res = model(input_ids=history, use_cache=True, **self.keep_last)
        scores = torch.full((len(prompts), k), -1e9, device=device)
        scores[:, 0] = 0.0  # the K copies of a prompt start as one beam
        base = torch.arange(len(prompts), device=device)[:, None] * k
        records: dict[str, torch.Tensor] = {}
        for t in range(n):
            logits = res.logits[:, -1].float()
            logp = torch.log_softmax(logits, dim=-1)
            processed = self.decoder.processors(history, logp.clone())  # as generate: processors on log-probs
            vocab = logp.shape[-1]
            scores, best = (scores[..., None] + processed.view(len(prompts), k, vocab)).view(len(prompts), -1).topk(k)
            parent = (base + best // vocab).view(-1)
            tokens = (best % vocab).view(-1)
            step = self.decoder.describe(logits[parent], logp[parent], processed[parent], tokens)
            records = {name: torch.cat([v[parent], step[name][:, None]], 1) if records else step[name][:, None]
                       for name, v in (records or step).items()}
            history = torch.cat([history[parent], tokens[:, None]], dim=1)
            for buf in work.values():
                buf.copy_(buf[parent])
            cache = _cache(res)
            cache.reorder_cache(parent)
            with capturer.writing_to(_rows(work, p + t, p + t + 1)):
                res = self._feed(tokens[:, None], cache, last=t == n - 1)
        rows = [prompts.index(g // samples) * k + g % samples for g in batch]  # beams come best first
        for name, buf in got.items():
            buf.copy_(work[name][rows])
        steps = [{name: v[rows, t].cpu().numpy() for name, v in records.items()} for t in range(n)]
        self._fill(win, starts, history[rows, p:].cpu().numpy(), steps)

    def _feed(self, tokens: torch.Tensor, cache, last: bool):
        """One decoding step with the KV cache. The last one runs for its token's vectors only: the
        transformer body alone, no LM head for logits nobody reads."""
        if last:
            return self.loaded.trunk(input_ids=tokens, use_cache=True, **{self.cache_arg: cache})
        return self.loaded.model(input_ids=tokens, use_cache=True, **self.keep_last, **{self.cache_arg: cache})

    def _fill(self, win: ShardTokens, starts: list[int], new: np.ndarray, records: list[dict]) -> None:
        """The generated tokens and each step's record, into the window's rows."""
        cols = win.columns
        if "prob" not in cols:  # masked (null in the token table) until a step fills the row
            size = len(win.token_ids)
            for name in STEP_COLUMNS:
                shape = (size, self.top) if name.startswith("top_") else size
                cols[name] = np.ma.masked_all(shape, _numpy_dtype(name))
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
