"""One decoding step: choose each sequence's next token, and record how it was chosen.

The logits are processed as transformers' ``generate`` does, with its own classes in its
order (repetition penalty, then temperature, top-k, top-p, min-p for sampling), so greedy
decoding picks what ``generate`` picks. Two distributions are recorded per step:

- the model's, p = softmax(logits): ``prob``, ``rank``, ``entropy``, the top candidates and the
  path log-probability are under p (the decoding walk's own distribution, as the statistics
  read it from ``final``);
- the one the token was drawn from, q = softmax(processed logits): ``sample_prob``.

Sampling draws continuation g's tokens from its own generator, seeded by (seed, g), so a
token never depends on which other continuations share its batch, shard or worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from embwalk.generation.config import DecodeConfig


def logits_processors(cfg: DecodeConfig) -> LogitsProcessorList:
    """What ``generate`` applies before choosing, in its order (GenerationMixin._get_logits_processor)."""
    procs = LogitsProcessorList()
    if cfg.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(cfg.repetition_penalty))
    if cfg.strategy == "sample":
        if cfg.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(cfg.temperature))
        if cfg.top_k:
            procs.append(TopKLogitsWarper(cfg.top_k))
        if cfg.top_p < 1.0:
            procs.append(TopPLogitsWarper(cfg.top_p))
        if cfg.min_p is not None:
            procs.append(MinPLogitsWarper(cfg.min_p))
    return procs


def sequence_seed(seed: int, seq: int) -> int:
    """The seed of continuation ``seq``'s generator (SplitMix64 of the two, below 2**63)."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(seq) + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 1


def draw(q: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One token per row of the distributions ``q`` [B, V], row j by inverting its CDF at a uniform
    number from ``generators[j]``: a token of probability 0 is never drawn (the CDF does not rise
    there). Rather than ``torch.multinomial`` per row, which costs ~10 ms per 49k-token row."""
    u = torch.cat([torch.rand(1, generator=g, device=g.device) for g in generators]).to(q.device)
    cdf = q.cumsum(dim=-1)
    picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return picked.clamp_max(q.shape[-1] - 1)


@dataclass
class Step:
    """One step of a batch: the chosen tokens [B] and their records (numpy, [B] or [B, k])."""

    tokens: torch.Tensor
    records: dict[str, np.ndarray]


class Decoder:
    """Chooses the next token of a batch of sequences, step after step."""

    def __init__(self, cfg: DecodeConfig):
        self.cfg = cfg
        self.processors = logits_processors(cfg)

    def generators(self, seqs: list[int], device: torch.device) -> list[torch.Generator] | None:
        """One generator per continuation (sampling only)."""
        if self.cfg.strategy != "sample":
            return None
        return [torch.Generator(device=device).manual_seed(sequence_seed(self.cfg.seed, s)) for s in seqs]

    def step(self, logits: torch.Tensor, history: torch.Tensor, generators: list[torch.Generator] | None) -> Step:
        """``logits`` [B, V] of each sequence's last position, ``history`` [B, t] its tokens so far."""
        logits = logits.float()
        plain = not len(self.processors)  # greedy or sampling with nothing that changes the logits
        scores = logits if plain else self.processors(history, logits.clone())
        if generators is None:
            chosen = scores.argmax(dim=-1)
        else:
            chosen = draw(torch.softmax(scores, dim=-1), generators)
        logp = torch.log_softmax(logits, dim=-1)
        records = self.describe(logits, logp, logp if plain else torch.log_softmax(scores, dim=-1), chosen)
        return Step(chosen, {k: v.cpu().numpy() for k, v in records.items()})

    def describe(self, logits: torch.Tensor, logp: torch.Tensor, logq: torch.Tensor,
                 chosen: torch.Tensor) -> dict[str, torch.Tensor]:
        """The records of ``chosen`` [B] under the model's log-probabilities ``logp`` (from ``logits``)
        and the log-probabilities ``logq`` it was chosen by (sampling: the warped distribution;
        beam search: the processed log-probabilities its beam's score adds)."""
        pick = chosen[:, None]
        top = logp.topk(min(self.cfg.top_candidates, logp.shape[-1]), dim=-1)
        return {
            "prob": logp.gather(-1, pick)[:, 0].exp(),
            "rank": (logits > logits.gather(-1, pick)).sum(-1),  # 0 = the top token; ties count in its favour
            "entropy": -(logp.exp() * logp).sum(-1),
            "sample_prob": logq.gather(-1, pick)[:, 0].exp(),
            "logprob": logp.gather(-1, pick)[:, 0],
            "top_ids": top.indices,
            "top_probs": top.values.exp(),
        }
