"""Plan: cut a tokenized corpus into shards before any model work.

A shard owns a fixed range of token rows (``shard_tokens`` long, the last one
shorter) and therefore whole Zarr shards of every per-token array: no two
writers ever touch the same file. It runs every sequence that overlaps its rows
and keeps only its rows, so a sequence that straddles a boundary (document mode
only; in packing mode ``shard_tokens`` is a multiple of ``seq_len``) is computed
twice and stored once. Attention patterns are per sequence: a sequence's
pattern belongs to the shard holding its first token.

Planning is pure arithmetic on the corpus, so a rerun plans the same shards.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from embwalk.corpus import TokenizedCorpus
from embwalk.errors import EmbwalkError


@dataclass(frozen=True)
class Shard:
    index: int
    rows: tuple[int, int]  # token rows this shard owns, [start, stop)
    seqs: tuple[int, int]  # sequences it runs (those overlapping its rows)
    pattern_seqs: tuple[int, int]  # sequences whose attention it stores (first token in rows)
    seq_rows: tuple[int, int]  # the rows those sequences span: what a worker reads of the corpus

    @property
    def n_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Plan:
    n_tokens: int
    n_sequences: int
    shard_tokens: int
    shards: tuple[Shard, ...]


def shard_tokens_for(requested: int, chunk_tokens: int, seq_len: int, mode: str) -> int:
    """Round the shard size up to whole Zarr chunks, and in packing mode to whole
    sequences too, so no sequence straddles two shards."""
    if requested < 1 or chunk_tokens < 1:
        raise EmbwalkError(f"store.shard_tokens ({requested}) and store.chunk_tokens ({chunk_tokens}) must be positive")
    unit = math.lcm(chunk_tokens, seq_len) if mode == "pack" else chunk_tokens
    return -(-requested // unit) * unit


def make_plan(corpus: TokenizedCorpus, shard_tokens: int) -> Plan:
    offsets = np.asarray(corpus.seq_offsets, dtype=np.int64)
    n_tokens, n_seq = int(offsets[-1]), len(offsets) - 1
    starts, ends = offsets[:-1], offsets[1:]
    shards = []
    for index, start in enumerate(range(0, n_tokens, shard_tokens)):
        stop = min(start + shard_tokens, n_tokens)
        first = int(np.searchsorted(ends, start, side="right"))  # first seq ending after start
        last = int(np.searchsorted(starts, stop, side="left"))  # seqs starting before stop
        p_first = int(np.searchsorted(starts, start, side="left"))
        seq_rows = (int(starts[first]), int(ends[last - 1]))
        shards.append(Shard(index, (start, stop), (first, last), (p_first, last), seq_rows))
    return Plan(n_tokens, n_seq, shard_tokens, tuple(shards))


def pack_shards(n_tokens: int, shard_tokens: int, seq_len: int) -> tuple[Shard, ...]:
    """The shards of a packed corpus, by arithmetic: ``shard_tokens`` is a multiple of
    ``seq_len``, so shards cut at sequence bounds and own their sequences whole. This is
    why a store's manifest need not list them (pipeline/store/commits.py derives them)."""
    shards = []
    for k, start in enumerate(range(0, n_tokens, shard_tokens)):
        rows = (start, min(start + shard_tokens, n_tokens))
        seqs = (rows[0] // seq_len, -(-rows[1] // seq_len))
        shards.append(Shard(k, rows, seqs, seqs, rows))
    return tuple(shards)


def plan_staged(corpus, fs, shard_tokens: int) -> Plan:
    """The same plan as ``make_plan`` from a staged corpus (pipeline/corpus/staged.py), without
    its rows: arithmetic in pack mode; in document mode the sequences' bounds are streamed
    part by part, so memory is the plan plus one part's documents."""
    n, n_shards = corpus.n_tokens, -(-corpus.n_tokens // shard_tokens)
    if corpus.mode == "pack":
        return Plan(n, corpus.n_sequences, shard_tokens, pack_shards(n, shard_tokens, corpus.seq_len))
    rows = [(k * shard_tokens, min((k + 1) * shard_tokens, n)) for k in range(n_shards)]
    # The sequence holding each shard's first and last row, found part by part (sequences never span parts).
    first_rows = np.array([r[0] for r in rows], dtype=np.int64)
    last_rows = np.array([r[1] - 1 for r in rows], dtype=np.int64)
    first_seq, last_seq = np.zeros(n_shards, np.int64), np.zeros(n_shards, np.int64)
    first_start, last_end = np.zeros(n_shards, np.int64), np.zeros(n_shards, np.int64)
    seq0 = 0
    for starts, ends in corpus.sequence_bounds(fs):
        if len(starts):
            for wanted, seq, bound, pick in ((first_rows, first_seq, first_start, starts),
                                             (last_rows, last_seq, last_end, ends)):
                inside = (wanted >= starts[0]) & (wanted < ends[-1])
                local = np.searchsorted(ends, wanted[inside], side="right")
                seq[inside], bound[inside] = seq0 + local, pick[local]
        seq0 += len(starts)
    shards = []
    for k, r in enumerate(rows):
        p_first = int(first_seq[k]) + (1 if first_start[k] < r[0] else 0)
        seqs = (int(first_seq[k]), int(last_seq[k]) + 1)
        shards.append(Shard(k, r, seqs, (p_first, seqs[1]), (int(first_start[k]), int(last_end[k]))))
    return Plan(n, seq0, shard_tokens, tuple(shards))
