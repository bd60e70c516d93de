"""The shuffled-input control: each sequence's tokens fed to the model in a seeded random order.

Researchers compare a statistic on real text with the same statistic on the same tokens
without their order. The rule (docs/controls.md), applied to a shard's window of rows on
the worker, so the driver does no per-token work:

- tokens move only within their document's span inside a sequence: document ids, the
  sequence cuts and document boundaries stay where they are, so next-token targets never
  cross documents and a packed sequence keeps its documents in order;
- the tokenizer's special tokens (BOS/CLS, EOS/SEP as the packing separator, PAD, ...:
  ``all_special_ids`` less the unknown-word token, which stands for a piece of text) keep
  their positions, so a BOS at position 0 stays the position-0 sink and a separator stays
  the last token of its document;
- the order is a sort by a 64-bit hash (splitmix64) of ``(shuffle_seed, the token's global
  row in the unshuffled corpus)``: it depends on the seed and the corpus alone, never on the
  shard, the batch, the worker or their numbers (a document-mode sequence that two shards
  compute is shuffled the same in both). Our own hash, not numpy's Generator, whose streams
  may change between numpy versions.

The token table of a shuffled store holds the ids as fed, at their fed positions, plus
``source_pos``: each token's position in the unshuffled sequence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from embwalk.corpus.sequences import ShardTokens

# Names the algorithm in the manifest and the store's identity: a store is never resumed by
# a run that would shuffle differently. Change it whenever the permutation changes.
SHUFFLE_RULE = "doc-span-in-sequence/special-tokens-fixed/splitmix64-of-seed-and-row/v1"
SOURCE_POS = "source_pos"  # the token table's extra column in a shuffled store

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class TokenShuffle:
    """How a shuffled store's sequences are permuted: small and fixed whatever the corpus,
    so it travels to the workers with the job."""

    seed: int
    fixed_ids: tuple[int, ...]  # token ids that keep their positions (sorted)

    @classmethod
    def for_tokenizer(cls, seed: int, tokenizer) -> TokenShuffle:
        """The shuffle of ``seed`` with ``tokenizer``'s special tokens (less UNK) held in place."""
        special = set(getattr(tokenizer, "all_special_ids", None) or ())
        for attr in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id", "pad_token_id"):
            value = getattr(tokenizer, attr, None)
            if value is not None:  # the packing separator (pipeline/corpus/sequences.py) in particular
                special.add(int(value))
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and unk not in _markers(tokenizer):
            special.discard(int(unk))
        return cls(int(seed), tuple(sorted(int(i) for i in special)))

    @classmethod
    def from_manifest(cls, manifest: dict) -> TokenShuffle | None:
        """The shuffle a store was written with (None: not a shuffled store)."""
        described = manifest.get("shuffle")
        if not described:
            return None
        return cls(int(described["seed"]), tuple(int(i) for i in described["fixed_token_ids"]))

    def describe(self) -> dict:
        """What the manifest records (``manifest["shuffle"]``, and the store's identity)."""
        return {"seed": self.seed, "rule": SHUFFLE_RULE, "fixed_token_ids": list(self.fixed_ids),
                "source_column": SOURCE_POS}

    def identity(self) -> dict:
        """The store identity's keys for it (pipeline/extraction/job.py), named so that a refused
        resume's message leads with the seed ("corpus.shuffle_seed: store has null, job has 3")."""
        return {"corpus.shuffle_seed": self.seed,
                "corpus.shuffled_by": {"rule": SHUFFLE_RULE, "fixed_token_ids": list(self.fixed_ids)}}

    def sources(self, win: ShardTokens) -> np.ndarray:
        """int64 [n]: for each row of the window, the window row whose token it is fed
        (the identity where nothing moves). The window holds whole sequences."""
        n = len(win.token_ids)
        seq = np.repeat(np.arange(len(win.seq_offsets) - 1), np.diff(win.seq_offsets))
        # a group is one document's span inside one sequence: tokens never leave it
        starts = np.ones(n, dtype=bool)
        starts[1:] = (seq[1:] != seq[:-1]) | (win.doc_ids[1:] != win.doc_ids[:-1])
        group = np.cumsum(starts)
        slots = np.flatnonzero(~np.isin(win.token_ids, np.asarray(self.fixed_ids, dtype=np.int64)))
        # slots are in (group, row) order; the same slots sorted by (group, hash) say where each
        # slot's token comes from: a uniform permutation of each group's movable tokens
        keys = shuffle_keys(self.seed, win.row0 + slots)
        source = np.arange(n, dtype=np.int64)
        source[slots] = slots[np.lexsort((keys, group[slots]))]
        return source

    def apply(self, win: ShardTokens) -> ShardTokens:
        """The window as fed: token ids permuted, ``source_positions`` set; doc ids, positions,
        document positions and sequence offsets stay (they describe the fed positions)."""
        source = self.sources(win)
        return dataclasses.replace(
            win, token_ids=win.token_ids[source], source_positions=win.positions[source].astype(np.int32)
        )


def shuffle_keys(seed: int, rows: np.ndarray) -> np.ndarray:
    """uint64 sort keys of global ``rows`` under ``seed``: splitmix64's outputs at ``rows + 1``
    of the stream seeded with the mixed seed."""
    base = _mix64(np.array([seed], dtype=np.uint64))  # arrays, not scalars: uint64 arithmetic wraps silently
    return _mix64(base + (np.asarray(rows, dtype=np.int64).astype(np.uint64) + np.uint64(1)) * _GAMMA)


def _mix64(x: np.ndarray) -> np.ndarray:
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _markers(tokenizer) -> set[int]:
    """The ids that mark structure (a tokenizer whose UNK is also its EOS keeps it fixed)."""
    ids = (getattr(tokenizer, a, None) for a in ("bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                                                    "pad_token_id"))
    return {int(i) for i in ids if i is not None}
