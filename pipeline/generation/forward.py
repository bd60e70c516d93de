"""The generation's forward pass: a batch of prompts decoded one token at a time with the
KV cache, every capture site written as each token goes through (never a second pass).

The shard runner (pipeline/extraction/runner.py) calls it where an extraction runs one
forward pass, with the same capture buffers [batch, T, ...]: the prefill writes the
prompt's rows, step t writes row P + t (the token chosen at step t, fed back in), so the
vectors of every stored token are those the model computed while generating. The token
fed last is run once more than ``generate`` would, for its own vectors.

Prompts of one length (pack mode) run as they are. Prompts of several lengths (document
mode) are left-padded to the longest, as ``generate`` pads them: an attention mask hides
the padding from every real query, position ids count from each prompt's first real token,
and a padded position holds a copy of its row's first token, so the repetition penalty
sees only what the prompt holds. The capture buffers are written in the batch's
coordinates and each row is then shifted left by its padding: what is stored starts at the
prompt's first token, and no padded position is ever stored or read by a real one.

How the model is called is a ``ModelCalls``: ``CausalCalls`` here (a causal LM over its left-padded
prompts), ``EncodedCalls`` for an encoder-decoder model's decoder (pipeline/generation/seq2seq.py);
the decoding loop, the capture and the records are the same for both.
"""

from __future__ import annotations

import inspect
from typing import Protocol

import numpy as np
import torch

from embwalk.corpus.sequences import ShardTokens
from embwalk.generation.config import DecodeConfig
from embwalk.generation.decode import Decoder
from embwalk.generation.plan import GenerationPlan
from embwalk.models.capture import Capturer
from embwalk.models.loading import LoadedModel
from embwalk.store.layout import CROSS_KINDS, GENERATION_COLUMNS, SEQUENCE_ARRAYS

# Token-table columns each step fills (null on prompt rows); their types are the store format's.
STEP_COLUMNS = ("prob", "rank", "entropy", "sample_prob", "path_logprob", "top_ids", "top_probs", "beam")
# Per-sequence capture buffers [batch, layer, head, query, key]: keys over the sequence's own tokens
# (self-attention patterns and score terms), or over an encoder's inputs (a decoder's cross-attention).
_CROSS = frozenset(SEQUENCE_ARRAYS[k] for k in CROSS_KINDS)
_SELF = frozenset(SEQUENCE_ARRAYS.values()) - _CROSS


def _numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype of a step column, or of a list column's items (store.layout.GENERATION_COLUMNS)."""
    kind = GENERATION_COLUMNS.field(name).type
    return np.dtype((kind.value_type if hasattr(kind, "value_type") else kind).to_pandas_dtype())


class ModelCalls(Protocol):
    """How one batch's model is called while it generates (the KV cache is the model's own)."""

    keys: int | None  # the cross-attention's key length (an encoder's inputs); None: no cross-attention

    def prefill(self, ids: torch.Tensor):
        """The prompts ``ids`` [B, W] through the model, with the cache; returns its output (logits)."""

    def feed(self, tokens: torch.Tensor, cache, t: int, last: bool):
        """The tokens chosen at step ``t`` [B, 1] through the model with the cache; ``last``: for their
        vectors only (no LM head: nobody reads those logits)."""

    def beams(self, rows: list[int], k: int) -> ModelCalls:
        """The calls of rows ``rows`` of the batch, each repeated ``k`` times in a row (a prompt's beams)."""


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
        n = self.plan.new_tokens
        lengths = [win.sequence_rows(g)[1] - a for g, a in zip(batch, starts, strict=True)]
        pad = _Padding([t - n for t in lengths], self.loaded.device, self.loaded.family.attention)
        calls = self._calls(pad, batch, win)
        got = _buffers(capturer, out, len(batch), pad.width + n, calls.keys)
        prompts = pad.left(ids)
        if self.decoder.cfg.strategy == "beam":
            self._beam(capturer, prompts, pad, calls, got, batch, starts, win)
        else:
            self._sample(capturer, prompts, pad, calls, got, batch, starts, win)
        pad.align(got)
        return got

    def _calls(self, pad: _Padding, batch: list[int], win: ShardTokens) -> ModelCalls:
        """How this batch's model is called: a causal LM over its prompts, left-padded by ``pad``."""
        return CausalCalls(self.loaded, pad, self.keep_last, self.cache_arg)

    def _sample(self, capturer: Capturer, history: torch.Tensor, pad: _Padding, calls: ModelCalls,
                got: dict[str, torch.Tensor], batch: list[int], starts: list[int], win: ShardTokens) -> None:
        """Greedy decoding or sampling, one token per continuation and step."""
        n, w = self.plan.new_tokens, pad.width
        generators = self.decoder.generators(batch, self.loaded.device)
        with capturer.writing_to(_rows(got, 0, w)):
            res = calls.prefill(history)
        records = []
        for t in range(n):
            step = self.decoder.step(res.logits[:, -1], history, generators)
            records.append(step.records)
            history = torch.cat([history, step.tokens[:, None]], dim=1)
            with capturer.writing_to(_rows(got, w + t, w + t + 1)):
                res = calls.feed(step.tokens[:, None], _cache(res), t, last=t == n - 1)
        self._fill(win, starts, pad.lengths + n, history[:, w:].cpu().numpy(), records)

    def _beam(self, capturer: Capturer, ids: torch.Tensor, pad: _Padding, calls: ModelCalls,
              got: dict[str, torch.Tensor], batch: list[int], starts: list[int], win: ShardTokens) -> None:
        """Beam search over the batch's prompts, as ``generate(num_beams=K)`` searches: each step
        ranks every beam's continuations by the beam's score plus the processed log-probabilities,
        keeps the best K, and reorders the KV cache, the beams' captured rows and their records
        by the beam each came from. Continuation ``sample`` k of a prompt is its k-th best beam."""
        cfg, w, n = self.decoder.cfg, pad.width, self.plan.new_tokens
        k, samples = int(cfg.num_beams), self.plan.samples
        device = self.loaded.device
        prompts = sorted({g // samples for g in batch})  # a prompt's continuations may share the batch
        first = [next(j for j, g in enumerate(batch) if g // samples == q) for q in prompts]
        history = ids[first].repeat_interleave(k, dim=0)  # [prompts * K, W]
        beams = calls.beams(first, k)  # the beams of a prompt share its padding (and input), whatever their parents
        work = {name: torch.zeros(shape, dtype=capturer.dtype, device=device)
                for name, shape in capturer.buffer_shapes(len(history), w + n, calls.keys).items()}
        with capturer.writing_to(_rows(work, 0, w)):
            res = beams.prefill(history)
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
            step["beam"] = torch.arange(k, device=device).repeat(len(prompts))  # topk ranks: slot = rank
            records = {name: torch.cat([v[parent], step[name][:, None]], 1) if records else step[name][:, None]
                       for name, v in (records or step).items()}
            history = torch.cat([history[parent], tokens[:, None]], dim=1)
            for buf in work.values():
                buf.copy_(buf[parent])
            cache = _cache(res)
            cache.reorder_cache(parent)
            with capturer.writing_to(_rows(work, w + t, w + t + 1)):
                res = beams.feed(tokens[:, None], cache, t, last=t == n - 1)
        rows = [prompts.index(g // samples) * k + g % samples for g in batch]  # beams come best first
        for name, buf in got.items():
            buf.copy_(work[name][rows])
        steps = [{name: v[rows, t].cpu().numpy() for name, v in records.items()} for t in range(n)]
        self._fill(win, starts, pad.lengths + n, history[rows, w:].cpu().numpy(), steps)

    def _fill(self, win: ShardTokens, starts: list[int], lengths: list[int], new: np.ndarray,
              records: list[dict]) -> None:
        """The generated tokens and each step's record, into the window's rows."""
        cols = win.columns
        if "prob" not in cols:  # masked (null in the token table) until a step fills the row
            size = len(win.token_ids)
            for name in STEP_COLUMNS:
                shape = (size, self.top) if name.startswith("top_") else size
                cols[name] = np.ma.masked_all(shape, _numpy_dtype(name))
        stacked = {k: np.stack([r[k] for r in records], axis=1) for k in records[0]}  # [B, N, ...]
        stacked["path_logprob"] = np.cumsum(stacked.pop("logprob").astype(np.float64), axis=1)
        n = self.plan.new_tokens
        for j, start in enumerate(starts):
            stop = start + int(lengths[j])
            rows = win.rows(stop - n, stop)
            win.token_ids[rows] = new[j]
            for name, values in stacked.items():
                cols[name][rows] = values[j]


class CausalCalls:
    """A causal LM's calls: its prompts left-padded (``_Padding``: the mask and position ids)."""

    keys = None

    def __init__(self, loaded: LoadedModel, pad: _Padding, keep_last: dict, cache_arg: str):
        self.loaded, self.pad, self.keep_last, self.cache_arg = loaded, pad, keep_last, cache_arg

    def prefill(self, ids: torch.Tensor):
        return self.loaded.model(input_ids=ids, use_cache=True, **self.keep_last, **self.pad.prefill())

    def feed(self, tokens: torch.Tensor, cache, t: int, last: bool):
        kwargs = {self.cache_arg: cache, **self.pad.step(t)}
        if last:  # the transformer body alone
            return self.loaded.trunk(input_ids=tokens, use_cache=True, **kwargs)
        return self.loaded.model(input_ids=tokens, use_cache=True, **self.keep_last, **kwargs)

    def beams(self, rows: list[int], k: int) -> CausalCalls:
        return CausalCalls(self.loaded, self.pad.rows(rows).repeat(k), self.keep_last, self.cache_arg)


def _buffers(capturer: Capturer, out: dict[str, torch.Tensor] | None, batch: int, rows: int,
             keys: int | None) -> dict[str, torch.Tensor]:
    """A batch's capture buffers: the per-token views ``out`` the runner hands over (its shard buffers)
    where it does, scratch for the rest; the per-sequence ones zeroed, as an extraction leaves what
    a query does not see (later keys, an input's padding)."""
    got = capturer.scratch(batch, rows, keys)
    if out is not None:
        got.update({name: v for name, v in out.items() if name not in _SELF | _CROSS})
    for name in got.keys() & (_SELF | _CROSS):
        got[name].zero_()
    return got


def _cache(output) -> object:
    return output.cache if getattr(output, "cache", None) is not None else output.past_key_values


def _rows(bufs: dict[str, torch.Tensor], a: int, b: int) -> dict[str, torch.Tensor]:
    """The capture buffers' views for positions [a, b): per-token arrays [batch, b - a, ...]; the
    per-sequence ones' query rows a..b-1, over keys 0..b-1 (what those queries see) or, for a
    cross-attention, over every encoder input."""
    def view(name: str, v: torch.Tensor) -> torch.Tensor:
        if name in _SELF:
            return v[:, :, :, a:b, :b]
        return v[:, :, :, a:b] if name in _CROSS else v[:, a:b]

    return {name: view(name, v) for name, v in bufs.items()}


class _Padding:
    """Left padding of a batch of prompts of ``lengths`` tokens to the longest (``width``): the
    model's attention mask and position ids, prefill and step by step (nothing when every
    prompt has the same length), and the shift that aligns each row's captures to its start."""

    def __init__(self, lengths: list[int] | torch.Tensor, device: torch.device, attention: bool = True):
        """``attention``: False for an attention-free model (Mamba): no positions, and only the prefill
        takes the mask (it zeroes the padded inputs, so the recurrent state starts at the first real
        token; a step's mask would not fit its one new position, which is never padding)."""
        self.attention = attention
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.width = int(self.lengths.max())
        self.pad = self.width - self.lengths
        self.padded = bool(self.pad.any())
        self.device = device
        self.mask = (torch.arange(self.width)[None, :] >= self.pad[:, None]).long().to(device)

    def rows(self, index: list[int]) -> _Padding:
        return _Padding(self.lengths[index], self.device, self.attention)

    def repeat(self, k: int) -> _Padding:
        """Each row ``k`` times in a row (a prompt's beams)."""
        return _Padding(self.lengths.repeat_interleave(k), self.device, self.attention)

    def left(self, ids: torch.Tensor) -> torch.Tensor:
        """The prompts of right-padded ``ids`` [B, >= width], left-padded with each row's first token."""
        if not self.padded:
            return ids[:, : self.width].to(self.device)
        cols = (torch.arange(self.width)[None, :] - self.pad[:, None]).clamp(min=0)  # a pad reads the first token
        return ids.gather(1, cols).to(self.device)

    def prefill(self) -> dict:
        if not self.padded:
            return {}
        if not self.attention:
            return {"attention_mask": self.mask}
        return {"attention_mask": self.mask, "position_ids": (self.mask.cumsum(-1) - 1).clamp(min=0)}

    def step(self, t: int) -> dict:
        """The model's arguments when the token chosen at step ``t`` is fed."""
        if not self.padded or not self.attention:
            return {}
        ones = torch.ones(len(self.lengths), t + 1, dtype=torch.long, device=self.device)
        return {"attention_mask": torch.cat([self.mask, ones], dim=1),
                "position_ids": (self.lengths + t).to(self.device)[:, None]}

    def align(self, bufs: dict[str, torch.Tensor]) -> None:
        """Shift each row's captures left by its padding, in place: row j's first stored position is
        its prompt's first token (and in the pattern, its first key)."""
        if not self.padded:
            return
        for j, p in enumerate(self.pad.tolist()):
            if not p:
                continue
            for name, buf in bufs.items():
                if name in _SELF:
                    buf[j, :, :, :-p, :-p] = buf[j, :, :, p:, p:].clone()
                elif name in _CROSS:
                    buf[j, :, :, :-p] = buf[j, :, :, p:].clone()
                else:
                    buf[j, :-p] = buf[j, p:].clone()
