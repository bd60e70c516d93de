"""Input-target pairs (``corpus.target_field``): the corpus of an encoder-decoder model's decoder store.

One pair per record of a jsonl, parquet or arrow file: ``text_field`` is the encoder's input,
``target_field`` what the decoder is teacher-forced on (docs/seq2seq.md). The store's token axis
is each pair's decoder inputs, ``decoder_start_token_id`` then the target's tokens as the
tokenizer encodes them (its EOS included), so ``final`` at row i predicts the token at row i + 1
as in a decoder-only store. Both are cut to ``seq_len`` tokens. The encoder's input ids are
staged beside the decoder rows, one list per pair (``part-NNNNN.inputs.parquet``), for the worker
that computes the pair to read with its shard's rows.

A record without either field, or with an empty (or whitespace-only) target, is a one-line
CorpusError naming the file and the record. A record whose input is blank is skipped, as a blank
document is, without taking an id.

**Inputs alone** (no ``target_field``): every document of any document-mode corpus is an input,
and its decoder row is the start token alone: the store holds the decoder's state at its first
step, the one that predicts the target's first token.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from embwalk.corpus.config import CorpusConfig
from embwalk.corpus.documents import Part, part_texts
from embwalk.corpus.readers import RECORD_READERS
from embwalk.corpus.sequences import BATCH_DOCS
from embwalk.errors import CorpusError

INPUTS_SUFFIX = ".inputs.parquet"
INPUT_ROW_GROUP = 4096  # pairs per row group: what a worker reads at least of a part's inputs


def part_pairs(part: Part, cfg: CorpusConfig) -> Iterator[tuple[str, str, str | None]]:
    """``(source, input, target)`` of every pair of a part whose input is not blank, in order;
    the target is None for inputs alone (no ``cfg.target_field``)."""
    if cfg.target_field is None:
        for source, text in part_texts(part, cfg):
            yield source, text, None
        return
    read = RECORD_READERS.get(part.format or "")
    if read is None:
        raise CorpusError(f"corpus.target_field needs jsonl, parquet or arrow records, not {part.format or 'builtin'} "
                          f"texts: {part.label}")
    for where, (text, target) in read(Path(part.path), cfg, (cfg.text_field, cfg.target_field)):
        source = f"{part.label}:{where}"
        if not target.strip():
            at = where.replace("line", "line ").replace("row", "row ")  # line7 -> line 7, as the readers' errors say
            raise CorpusError(f"empty target (field {cfg.target_field!r}) at {at} of corpus file: {part.label}")
        if text and not text.isspace():
            yield source, text, target


def tokenize_pairs(part: Part, cfg: CorpusConfig, tokenizer, decoder_start: int
                   ) -> tuple[np.ndarray, np.ndarray, pa.Table]:
    """A part's decoder rows (token ids, flat), each pair's decoder length, and its encoder inputs
    (a table with one ``input_ids`` list per pair). No part holds more than ``max_documents`` pairs."""
    kwargs = dict(truncation=True, return_attention_mask=False, return_token_type_ids=False, verbose=False)
    pairs = itertools.islice(part_pairs(part, cfg), cfg.max_documents)
    decoder, inputs = [], []
    n_stored = 0
    while batch := list(itertools.islice(pairs, BATCH_DOCS)):
        sources, texts, targets = zip(*batch, strict=True)
        inputs += tokenizer(list(texts), max_length=cfg.seq_len, **kwargs)["input_ids"]
        # the decoder's inputs: its start token, then the target's tokens (the start token takes one of seq_len)
        if cfg.target_field is None:  # inputs alone
            decoder += [[decoder_start] for _ in batch]
        else:
            decoder += [[decoder_start, *ids] for ids in tokenizer(list(targets), max_length=cfg.seq_len - 1,
                                                                   **kwargs)["input_ids"]]
        n_stored += sum(map(len, decoder[-len(batch):]))
        if cfg.max_tokens is not None and n_stored >= cfg.max_tokens:
            break  # the corpus-wide cut is in this batch (StagedCorpus.from_counts applies it)
    lengths = np.fromiter(map(len, decoder), dtype=np.int64, count=len(decoder))
    flat = np.fromiter(itertools.chain.from_iterable(decoder), dtype=np.int32, count=int(lengths.sum()))
    table = pa.table({"input_ids": pa.array(inputs, type=pa.list_(pa.int32()))})
    return flat, lengths, table


def decoder_start_id(hf_config) -> int:
    """The token a T5-family decoder starts from (``decoder_start_token_id``, T5's pad)."""
    start = getattr(hf_config, "decoder_start_token_id", None)
    if start is None:
        raise CorpusError(f"the model's config has no decoder_start_token_id ({hf_config.model_type}): "
                          "corpus.target_field needs an encoder-decoder model")
    return int(start)
