"""Which continuations a generation store holds, and where each one's rows are.

Prompts are the corpus's packed sequences, ``P`` = corpus.seq_len tokens each (a shorter
last one is left out). Continuation g is prompt g // S, sample g % S (S = decode.samples),
and its ``T = P + N`` rows (N = decode.max_new_tokens) hold the prompt then what was
generated. Every continuation has T rows, so the store is cut like a packed corpus of
T-token sequences (``pack_shards``): readers and the statistics see a pack-mode store.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embwalk.corpus.sequences import ShardTokens
from embwalk.errors import EmbwalkError
from embwalk.generation.config import DecodeConfig
from embwalk.plan import Plan, Shard, pack_shards, shard_tokens_for


@dataclass(frozen=True)
class GenerationPlan:
    prompt_len: int  # P
    new_tokens: int  # N
    samples: int  # S
    n_prompts: int

    @classmethod
    def for_corpus(cls, corpus, decode: DecodeConfig) -> GenerationPlan:
        """``corpus``: a staged (or in-memory) packed corpus with ``n_tokens``, ``mode``, ``seq_len``."""
        if corpus.mode != "pack":
            raise EmbwalkError("embwalk generate takes its prompts from a packed corpus (corpus.mode=pack, "
                               "corpus.seq_len = the prompt length); one prompt per document is not supported yet")
        n = corpus.n_tokens // corpus.seq_len
        if decode.max_prompts is not None:
            n = min(n, int(decode.max_prompts))
        if n < 1:
            raise EmbwalkError(f"the corpus holds {corpus.n_tokens} tokens: not one prompt of "
                               f"corpus.seq_len={corpus.seq_len} tokens")
        return cls(corpus.seq_len, int(decode.max_new_tokens), int(decode.samples), n)

    @property
    def seq_len(self) -> int:
        """T: the rows of one continuation."""
        return self.prompt_len + self.new_tokens

    @property
    def n_sequences(self) -> int:
        return self.n_prompts * self.samples

    def plan(self, shard_tokens: int, chunk_tokens: int) -> Plan:
        """Shards of whole continuations (``shard_tokens`` rounded up to whole ones and whole chunks)."""
        n_rows = self.n_sequences * self.seq_len
        size = shard_tokens_for(shard_tokens, chunk_tokens, self.seq_len, "pack")
        return Plan(n_rows, self.n_sequences, size, pack_shards(n_rows, size, self.seq_len))

    def prompts(self, shard: Shard) -> tuple[int, int]:
        """The prompts [first, stop) of a shard's continuations."""
        g0, g1 = shard.seqs
        return g0 // self.samples, (g1 - 1) // self.samples + 1

    def corpus_rows(self, shard: Shard) -> tuple[int, int]:
        """The corpus rows a shard reads: its prompts."""
        p0, p1 = self.prompts(shard)
        return p0 * self.prompt_len, p1 * self.prompt_len

    def window(self, prompts: ShardTokens, shard: Shard) -> ShardTokens:
        """The shard's rows as the runner fills them: each continuation's prompt, then N rows for
        the tokens it will generate (token id -1 until then; they continue the document of the
        prompt's last token), with the per-row columns ``prompt_id``, ``sample``, ``step`` (0 for
        the first generated token, null on the prompt) and ``generated``."""
        g0, g1 = shard.seqs
        seqs = np.arange(g0, g1, dtype=np.int64)
        prompt_id = seqs // self.samples
        p, t = self.prompt_len, self.seq_len
        local = (prompt_id - prompt_id[0])[:, None] * p + np.arange(p)[None, :]  # [g, P] rows of `prompts`
        token_ids = np.full((len(seqs), t), -1, np.int32)
        token_ids[:, :p] = prompts.token_ids[local]
        doc_ids = np.empty((len(seqs), t), np.int64)
        doc_ids[:, :p] = prompts.doc_ids[local]
        doc_ids[:, p:] = doc_ids[:, p - 1 : p]
        doc_pos = np.empty((len(seqs), t), np.int32)
        doc_pos[:, :p] = prompts.doc_positions[local]
        doc_pos[:, p:] = doc_pos[:, p - 1 : p] + np.arange(1, self.new_tokens + 1, dtype=np.int32)
        step = np.tile(np.arange(t, dtype=np.int32) - p, len(seqs))
        row0 = g0 * t
        win = ShardTokens(
            row0, g0, token_ids.ravel(), doc_ids.ravel(), np.tile(np.arange(t, dtype=np.int32), len(seqs)),
            doc_pos.ravel(), row0 + np.arange(len(seqs) + 1, dtype=np.int64) * t,
        )
        win.columns = {  # null (masked) where a column does not apply: the prompt rows' step
            "prompt_id": np.repeat(prompt_id, t),
            "sample": np.repeat((seqs % self.samples).astype(np.int32), t),
            "step": np.ma.masked_less(step, 0),
            "generated": step >= 0,
        }
        return win

    def describe(self) -> dict:
        return {"prompt_len": self.prompt_len, "new_tokens": self.new_tokens, "samples": self.samples,
                "n_prompts": self.n_prompts, "seq_len": self.seq_len}
