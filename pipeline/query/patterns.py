"""Stored attention: one sequence's ``[layer, head, query, key]`` from a per-sequence array
(``pattern[seq, layer, head, query, key]``, a T5 store's cross_pattern and score terms)."""

from __future__ import annotations

import numpy as np

from embwalk.errors import SiteError, StoreError
from embwalk.query.vector_sites import pattern_index, sequence_spec
from embwalk.store.layout import CROSS_KINDS
from embwalk.store.reader import Store


def sequence_pattern(
    store: Store, committed: list[int], seq: int,
    layers: list[int | str] | None = None, heads: list[int] | None = None,
    kind: str = "attn_pattern", length: int | None = None, keys: int | None = None,
) -> tuple[np.ndarray, list[int], list[int]]:
    """``[layer, head, query, key]`` of site kind ``kind`` cropped to the sequence, with the block
    and head numbers.

    Probabilities (attn_pattern) are cropped where their rows stop summing to 1; the other kinds
    to ``length`` queries (the caller counts the sequence's rows), with keys ``length`` too, or for
    the cross-attention's (keys: the encoder's inputs) ``keys`` (the token table's input_len; in a
    store written before it, up to the last key any stored value of the sequence is nonzero at).
    The pattern of a sequence is stored by the shard holding its first token,
    so that shard's commit (in ``committed``, the caller's snapshot) is what makes it readable.
    """
    manifest = store.manifest
    blocks, positions = pattern_index(manifest, layers, kind)
    spec = sequence_spec(manifest, kind)
    stored_heads = list(spec["heads"])
    head_list = stored_heads if heads is None else [int(h) for h in heads]
    missing = [h for h in head_list if h not in stored_heads]
    if missing:
        raise SiteError(f"attention head {missing[0]} is not in this store; it has heads {stored_heads}")
    seq = int(seq)
    if not 0 <= seq < manifest["n_sequences"]:
        raise StoreError(f"sequence {seq} is outside this store (sequences 0..{manifest['n_sequences'] - 1})")
    owner = next(s for s in manifest["shards"] if s["pattern_seqs"][0] <= seq < s["pattern_seqs"][1])
    if owner["index"] not in committed:
        raise StoreError(f"sequence {seq} belongs to shard {owner['index']}, which is not committed (yet)")
    array = store.open_array(spec["path"])
    data = array.get_orthogonal_selection((seq, positions, [stored_heads.index(h) for h in head_list]))
    if data.size == 0:
        return data, blocks, head_list
    if kind == "attn_pattern":
        # Padding queries past the sequence's end are stored as zeros; every real query row sums to 1.
        length = int(np.count_nonzero(data[0, 0].astype(np.float32).sum(axis=-1) > 0.5))
    elif length is None:
        raise ValueError(f"the sequence's length is needed to crop {kind}")
    if kind not in CROSS_KINDS:
        keys = length
    elif keys is None:  # every layer and head of the sequence: the crop does not depend on the selection
        seen = np.flatnonzero(np.asarray(array[seq]).any(axis=(0, 1, 2)))
        keys = int(seen[-1]) + 1 if len(seen) else 0
    return data[:, :, :length, :keys], blocks, head_list
