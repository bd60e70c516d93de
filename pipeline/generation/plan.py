"""Which continuations a generation store holds, and where each one's rows are.

Prompts are the corpus's sequences: packed ones of ``P`` = corpus.seq_len tokens (a shorter
last one is left out), or in document mode one per document (a line, a paragraph, a file,
a jsonl record: corpus.txt_unit) with the tokenizer's special tokens, cut to corpus.seq_len.
Continuation g is prompt q = g // S, sample g % S (S = decode.samples), and its
``T_q = P_q + N`` rows (N = decode.max_new_tokens) hold the prompt then what was generated.
The prompts tile the corpus rows from 0, so continuation g starts at store row
``S * (a_q + q * N) + (g % S) * T_q`` (a_q: the prompt's first corpus row): arithmetic a
worker does on its own prompts.

Pack mode: every continuation has T rows, so the store is cut like a packed corpus of
T-token sequences (``pack_shards``): shards own whole continuations. Document mode: the
store is cut like a document-mode corpus (``plan_staged`` over the continuations' bounds,
streamed part by part): a continuation may straddle two shards, and then both generate it,
each alone in a batch of its own (pipeline/extraction/runner.py), so both compute the same
tokens and values and each stores its rows.

An encoder-decoder model's decoder store (inputs alone, docs/seq2seq.md): the corpus's rows are
each input's decoder row, its start token alone (P_q = 1), and the inputs themselves, staged beside
them, are the encoder's prompts: each continuation's window carries its prompt's (``inputs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embwalk.corpus.sequences import ShardTokens
from embwalk.errors import EmbwalkError
from embwalk.generation.config import DecodeConfig
from embwalk.plan import Plan, Shard, pack_shards, plan_staged, shard_tokens_for


@dataclass(frozen=True)
class GenerationPlan:
    new_tokens: int  # N
    samples: int  # S
    n_prompts: int
    max_prompt_len: int  # corpus.seq_len: every prompt's length in pack mode, the longest allowed otherwise
    mode: str  # the corpus's: pack | document
    # document mode: per shard, the corpus rows [a, b) of the prompts it continues (the plan's size)
    spans: tuple[tuple[int, int], ...] = ()
    # a decoder store: prompts are encoder inputs (of up to max_prompt_len tokens), decoder rows start alone
    encoder_inputs: bool = False

    @classmethod
    def for_corpus(cls, corpus, decode: DecodeConfig, fs, shard_tokens: int,
                   chunk_tokens: int) -> tuple[GenerationPlan, Plan]:
        """The continuations of a staged corpus's prompts and the store's shards.

        ``corpus``: a StagedCorpus (pipeline/corpus/staged.py); ``fs`` its store, from which a
        document-mode corpus's sequence bounds are streamed."""
        n_new, samples = int(decode.max_new_tokens), int(decode.samples)
        if corpus.mode == "pack":
            n = corpus.n_tokens // corpus.seq_len
        else:
            n = corpus.n_sequences
        if decode.max_prompts is not None:
            n = min(n, int(decode.max_prompts))
        if n < 1:
            raise EmbwalkError(f"the corpus holds {corpus.n_tokens} tokens: not one prompt of "
                               f"corpus.seq_len={corpus.seq_len} tokens")
        gen = cls(n_new, samples, n, corpus.seq_len, corpus.mode, encoder_inputs=corpus.pairs)
        if corpus.mode == "pack":
            t = gen.max_seq_len
            n_rows = n * samples * t
            size = shard_tokens_for(shard_tokens, chunk_tokens, t, "pack")
            return gen, Plan(n_rows, n * samples, size, pack_shards(n_rows, size, t))
        continuations = _Continuations(corpus, gen, fs)
        size = shard_tokens_for(shard_tokens, chunk_tokens, gen.max_seq_len, "document")
        plan = plan_staged(continuations, fs, size)
        spans = continuations.prompt_spans(fs, [gen.prompts(s) for s in plan.shards])
        return cls(n_new, samples, n, corpus.seq_len, corpus.mode, spans, corpus.pairs), plan

    @property
    def prompt_len(self) -> int | None:
        """P of every prompt in pack mode; None in document mode (each prompt its own)."""
        return self.max_prompt_len if self.mode == "pack" else None

    @property
    def max_seq_len(self) -> int:
        """The store's seq_len: the rows of the longest continuation; for encoder inputs, which the
        cross-attention's keys are, the longer of an input and a decoder row (start token + N)."""
        if self.encoder_inputs:
            return max(self.max_prompt_len, 1 + self.new_tokens)
        return self.max_prompt_len + self.new_tokens

    @property
    def n_sequences(self) -> int:
        return self.n_prompts * self.samples

    def prompts(self, shard: Shard) -> tuple[int, int]:
        """The prompts [first, stop) of a shard's continuations."""
        g0, g1 = shard.seqs
        return g0 // self.samples, (g1 - 1) // self.samples + 1

    def corpus_rows(self, shard: Shard) -> tuple[int, int]:
        """The corpus rows a shard reads: its prompts."""
        if self.mode != "pack":
            return self.spans[shard.index]
        p0, p1 = self.prompts(shard)
        return p0 * self.max_prompt_len, p1 * self.max_prompt_len

    def window(self, prompts: ShardTokens, shard: Shard) -> ShardTokens:
        """The shard's continuations as the runner fills them: each one's prompt, then N rows for
        the tokens it will generate (token id -1 until then; they continue the document of the
        prompt's last token), with the per-row columns ``prompt_id``, ``sample``, ``step`` (0 for
        the first generated token, null on the prompt) and ``generated``.

        ``prompts``: the corpus rows ``corpus_rows(shard)`` cut into sequences (prompt ``seq0`` first)."""
        g0, g1 = shard.seqs
        seqs = np.arange(g0, g1, dtype=np.int64)
        prompt_id, sample = seqs // self.samples, seqs % self.samples
        local = prompt_id - prompts.seq0
        a = prompts.seq_offsets[local]  # each continuation's prompt: corpus rows [a, a + P)
        p = prompts.seq_offsets[local + 1] - a
        t = p + self.new_tokens
        starts = self.samples * (a + prompt_id * self.new_tokens) + sample * t
        offsets = np.append(starts, starts[-1] + t[-1]).astype(np.int64)
        pos = np.arange(int(t.sum()), dtype=np.int64) - np.repeat(offsets[:-1] - offsets[0], t)  # within each
        in_prompt = pos < np.repeat(p, t)
        source = np.repeat(a - prompts.row0, t) + np.minimum(pos, np.repeat(p - 1, t))  # the prompt row, or its last
        token_ids = np.where(in_prompt, prompts.token_ids[source], -1).astype(np.int32)
        step = (pos - np.repeat(p, t)).astype(np.int32)
        doc_pos = prompts.doc_positions[source] + np.maximum(step + 1, 0)
        win = ShardTokens(int(offsets[0]), g0, token_ids, prompts.doc_ids[source].astype(np.int64),
                          pos.astype(np.int32), doc_pos.astype(np.int32), offsets)
        win.columns = {  # null (masked) where a column does not apply: the prompt rows' step
            "prompt_id": np.repeat(prompt_id, t),
            "sample": np.repeat(sample.astype(np.int32), t),
            "step": np.ma.masked_less(step, 0),
            "generated": step >= 0,
        }
        if prompts.inputs is not None:  # a decoder store: each continuation's encoder input, its prompt's
            win.inputs = [prompts.inputs[q] for q in local.tolist()]
        return win

    def describe(self) -> dict:
        return {"prompt_len": self.prompt_len, "max_prompt_len": self.max_prompt_len, "new_tokens": self.new_tokens,
                "samples": self.samples, "n_prompts": self.n_prompts, "seq_len": self.max_seq_len,
                "prompts": "packed" if self.mode == "pack" else
                "one encoder input per document" if self.encoder_inputs else "one per document"}


class _Continuations:
    """A document-mode corpus seen as its continuations, for ``plan_staged``: their bounds
    on the store's rows, streamed part by part from the prompts' (memory: one part's)."""

    mode = "document"

    def __init__(self, corpus, gen: GenerationPlan, fs):
        self.corpus, self.gen = corpus, gen
        # The prompts end where the corpus does (its sequences tile its rows) unless
        # decode.max_prompts cuts them: only then is a pass over the bounds needed to find where.
        last = corpus.n_tokens
        if gen.n_prompts < corpus.n_sequences:
            for _, _, ends in self._prompt_bounds(fs):
                last = int(ends[-1]) if len(ends) else last
        self.n_tokens = gen.samples * (last + gen.n_prompts * gen.new_tokens)

    def _prompt_bounds(self, fs):
        """(first prompt, corpus starts, corpus ends) of each part's prompts, up to n_prompts."""
        q0 = 0
        for starts, ends in self.corpus.sequence_bounds(fs):
            keep = max(0, min(len(starts), self.gen.n_prompts - q0))
            if keep:
                yield q0, starts[:keep], ends[:keep]
            q0 += keep

    def sequence_bounds(self, fs):
        s, n = self.gen.samples, self.gen.new_tokens
        for q0, a, b in self._prompt_bounds(fs):
            t = (b - a) + n
            q = q0 + np.arange(len(a), dtype=np.int64)
            starts = (s * (a + q * n))[:, None] + np.arange(s)[None, :] * t[:, None]  # [prompts, S]
            yield starts.ravel(), (starts + t[:, None]).ravel()

    def prompt_spans(self, fs, prompts: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
        """The corpus rows [start of the first, end of the last) of each (first, stop) prompt range."""
        first = np.array([p[0] for p in prompts], np.int64)
        last = np.array([p[1] - 1 for p in prompts], np.int64)
        lo, hi = np.zeros(len(prompts), np.int64), np.zeros(len(prompts), np.int64)
        for q0, a, b in self._prompt_bounds(fs):
            for wanted, out, bound in ((first, lo, a), (last, hi, b)):
                inside = (wanted >= q0) & (wanted < q0 + len(a))
                out[inside] = bound[wanted[inside] - q0]
        return tuple(zip(lo.tolist(), hi.tolist(), strict=True))

