"""Token sequences: the corpus tokenized and cut into the rows the model will see.

Everything is flat arrays over the token axis, in the order the store's token
table uses, so planning can count tokens exactly and shards can slice rows.
Padding is never stored: it is the batcher's job.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from embwalk.corpus.config import CorpusConfig
from embwalk.corpus.documents import Document
from embwalk.errors import CorpusError

# Documents per tokenizer call: big enough for the Rust tokenizer's batch parallelism,
# bounded in characters so a corpus of huge files does not tokenize far past max_tokens.
BATCH_DOCS = 1024
BATCH_CHARS = 4_000_000


@dataclass
class TokenizedCorpus:
    """The stored tokens, one entry per token in row order."""

    token_ids: np.ndarray  # int32 [n_tokens]
    doc_ids: np.ndarray  # int64 [n_tokens]
    positions: np.ndarray  # int32 [n_tokens], position within its sequence, from 0
    doc_positions: np.ndarray  # int32 [n_tokens], position within its document, from 0
    seq_offsets: np.ndarray  # int64 [n_seq + 1]; sequence i is rows offsets[i]:offsets[i+1]
    n_documents: int  # documents with at least one stored token

    @property
    def n_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def n_sequences(self) -> int:
        return int(self.seq_offsets.shape[0]) - 1

    def seq_ids(self) -> np.ndarray:
        """int64 [n_tokens]: the sequence each token belongs to."""
        return np.repeat(np.arange(self.n_sequences, dtype=np.int64), np.diff(self.seq_offsets))

    def sequence(self, i: int) -> np.ndarray:
        """Token ids of sequence ``i``."""
        if not -self.n_sequences <= i < self.n_sequences:
            raise IndexError(f"sequence {i} out of range (n_sequences={self.n_sequences})")
        i %= self.n_sequences
        return self.token_ids[self.seq_offsets[i] : self.seq_offsets[i + 1]]


@dataclass
class ShardTokens:
    """The rows a shard's sequences span, [row0, row0 + n): all a worker needs of the corpus."""

    row0: int
    seq0: int  # the first of the shard's sequences
    token_ids: np.ndarray  # int32 [n]
    doc_ids: np.ndarray  # int64 [n]
    positions: np.ndarray  # int32 [n], within the sequence
    doc_positions: np.ndarray  # int32 [n], within the document
    seq_offsets: np.ndarray  # int64 [n_seqs + 1], corpus rows: sequence seq0 + i is rows [i]:[i + 1]
    # int32 [n] in a shuffled window (pipeline/corpus/shuffle.py): the position in the unshuffled
    # sequence of the token fed at each row; None when the tokens are fed in corpus order
    source_positions: np.ndarray | None = None
    # more token-table columns over the window's rows ([n] or [n, k] arrays; a generation
    # window's prompt_id, sample, step and each step's record: pipeline/generation/)
    columns: dict[str, np.ndarray] | None = None
    # input-target pairs (a decoder store, pipeline/corpus/pairs.py): the encoder input ids of each
    # of the window's sequences, in order; None for a corpus of texts
    inputs: list[np.ndarray] | None = None

    @classmethod
    def of(cls, corpus: TokenizedCorpus, seqs: tuple[int, int]) -> ShardTokens:
        """A window of an in-memory corpus."""
        offsets = np.asarray(corpus.seq_offsets[seqs[0] : seqs[1] + 1], dtype=np.int64)
        a, b = int(offsets[0]), int(offsets[-1])
        return cls(a, seqs[0], corpus.token_ids[a:b], corpus.doc_ids[a:b], corpus.positions[a:b],
                   corpus.doc_positions[a:b], offsets)

    @classmethod
    def from_rows(cls, rows: dict[str, np.ndarray], row0: int, seq0: int, mode: str, seq_len: int) -> ShardTokens:
        """From staged rows (token_id, doc_id, doc_pos) that start at sequence ``seq0``'s first row:
        pack mode cuts every ``seq_len`` rows, document mode where the document changes."""
        n = len(rows["token_id"])
        if mode == "pack":
            local = np.arange(n, dtype=np.int64)
            starts = local[:: seq_len]
            positions = (local % seq_len).astype(np.int32)
        else:
            starts = np.concatenate([[0], np.flatnonzero(np.diff(rows["doc_id"])) + 1]).astype(np.int64)
            positions = rows["doc_pos"]
        offsets = row0 + np.append(starts, n)
        return cls(row0, seq0, rows["token_id"], rows["doc_id"], positions, rows["doc_pos"], offsets)

    def rows(self, start: int, stop: int) -> slice:
        """Corpus rows [start, stop) as a slice of this window's arrays."""
        return slice(start - self.row0, stop - self.row0)

    def sequence_rows(self, seq: int) -> tuple[int, int]:
        i = seq - self.seq0
        return int(self.seq_offsets[i]), int(self.seq_offsets[i + 1])


def tokenize_corpus(documents: Iterable[Document], tokenizer, cfg: CorpusConfig) -> TokenizedCorpus:
    """Tokenize documents into sequences as ``cfg.mode`` says.

    pack: each document's tokens (no special tokens) then one separator (eos,
    else sep) that belongs to that document; the stream is cut every
    ``seq_len`` tokens, the last sequence may be shorter.
    document: one sequence per document with the tokenizer's special tokens,
    truncated to ``seq_len``.
    Documents that tokenize to nothing are left out. Stops at exactly
    ``cfg.max_tokens`` tokens, consuming no more documents than needed.
    ``doc_positions`` counts each document's stored tokens from 0 across
    sequence cuts (its separator included); in document mode it equals ``positions``.
    """
    cfg.validate()
    pack = cfg.mode == "pack"
    token_chunks, doc_chunks, length_chunks = [], [], []
    n_stored = 0
    for batch, flat, lengths in encoded_batches(documents, tokenizer, cfg):
        ids = np.fromiter((d.doc_id for d in batch), dtype=np.int64, count=len(batch))
        token_chunks.append(flat)
        doc_chunks.append(np.repeat(ids, lengths))
        length_chunks.append(lengths[lengths > 0])
        n_stored += flat.shape[0]
    if n_stored == 0:
        name = _name(tokenizer)
        raise CorpusError(f"corpus produced no tokens with tokenizer {name}: {cfg.label}")

    n = n_stored if cfg.max_tokens is None else min(n_stored, cfg.max_tokens)
    token_ids = np.concatenate(token_chunks)[:n]
    doc_ids = np.concatenate(doc_chunks)[:n]
    if pack:
        offsets = np.append(np.arange(0, n, cfg.seq_len, dtype=np.int64), n)
    else:
        ends = np.cumsum(np.concatenate(length_chunks))
        offsets = np.concatenate([[0], ends[ends < n], [n]]).astype(np.int64)
    starts = np.repeat(offsets[:-1], np.diff(offsets))
    positions = (np.arange(n, dtype=np.int64) - starts).astype(np.int32)
    doc_positions = _doc_positions(np.concatenate(length_chunks), n)
    n_documents = int(np.count_nonzero(np.diff(doc_ids))) + 1
    return TokenizedCorpus(
        token_ids=token_ids,
        doc_ids=doc_ids,
        positions=positions,
        doc_positions=doc_positions,
        seq_offsets=offsets,
        n_documents=n_documents,
    )


def encoded_batches(
    documents: Iterable[Document], tokenizer, cfg: CorpusConfig
) -> Iterator[tuple[list[Document], np.ndarray, np.ndarray]]:
    """``(documents, token ids, stored length of each)`` batch by batch, stopping after the
    batch that reaches ``cfg.max_tokens``: the one tokenizing loop of the whole corpus in one
    process (``tokenize_corpus``) and of a part (pipeline/corpus/staged.py), so both agree."""
    encode = encoder(tokenizer, cfg)
    n_stored = 0
    for batch in _batches(documents):
        flat, lengths = encode([d.text for d in batch])
        yield batch, flat, lengths
        n_stored += flat.shape[0]
        if cfg.max_tokens is not None and n_stored >= cfg.max_tokens:
            return


def encoder(tokenizer, cfg: CorpusConfig):
    """``encode(texts) -> (token ids, stored length of each text)`` as ``cfg.mode`` says:
    pack mode appends the separator to each non-empty document; document mode adds the
    tokenizer's special tokens and truncates to ``seq_len``. Int32 ids, int64 lengths."""
    pack = cfg.mode == "pack"
    sep = separator_id(tokenizer) if pack else None
    kwargs = dict(
        add_special_tokens=not pack,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # packing tokenizes whole documents: no "longer than max length" spam
    )
    if not pack:
        kwargs.update(truncation=True, max_length=cfg.seq_len)

    def encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = tokenizer(texts, **kwargs)["input_ids"]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        flat = np.fromiter(itertools.chain.from_iterable(encoded), dtype=np.int32, count=int(lengths.sum()))
        return _append_separators(flat, lengths, sep) if pack else (flat, lengths)

    return encode


def _doc_positions(lengths: np.ndarray, n: int) -> np.ndarray:
    """int32 [n]: each token's position within its document, for documents of ``lengths``
    stored tokens (separator included) laid end to end and cut after ``n`` tokens."""
    doc_starts = np.cumsum(lengths) - lengths
    starts = np.repeat(doc_starts, lengths)[:n]
    return (np.arange(n, dtype=np.int64) - starts).astype(np.int32)


def separator_id(tokenizer) -> int:
    """The token put after each packed document: eos if the tokenizer has one, else sep."""
    for candidate in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if candidate is not None:
            return int(candidate)
    raise CorpusError(
        f"tokenizer has no eos or sep token to separate packed documents"
        f" (use corpus.mode=document): {_name(tokenizer)}"
    )


def vocabulary_strings(tokenizer) -> list[str]:
    """For every id in ``range(len(tokenizer))``, the text ``tokenizer.decode([id])`` gives.

    Fast tokenizers decode the whole vocabulary in one Rust call; the result is
    checked against ``decode`` on a sample of ids and, should a transformers
    version decode differently, the plain per-id ``decode`` is used instead.
    """
    n = len(tokenizer)
    texts = _fast_vocabulary_strings(tokenizer, n)
    sample = range(0, n, max(1, n // 97)) if n else range(0)
    if texts is None or any(texts[i] != tokenizer.decode([i]) for i in sample):
        texts = [tokenizer.decode([i]) for i in range(n)]
    return texts


def _fast_vocabulary_strings(tokenizer, n: int) -> list[str] | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    texts = backend.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    # transformers' decode then cleans up spaces before punctuation, except for BPE models.
    if getattr(tokenizer, "clean_up_tokenization_spaces", False):
        is_bpe = type(backend.model).__name__ == "BPE"
        force = "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"
        if not is_bpe or getattr(tokenizer, force, False):
            texts = [tokenizer.clean_up_tokenization(t) for t in texts]
    return texts


def _append_separators(
    flat: np.ndarray, lengths: np.ndarray, sep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``sep`` after each non-empty document; an empty one gets nothing."""
    new_lengths = np.where(lengths > 0, lengths + 1, 0)
    out = np.empty(int(new_lengths.sum()), dtype=np.int32)
    is_sep = np.zeros(out.shape[0], dtype=bool)
    is_sep[np.cumsum(new_lengths)[lengths > 0] - 1] = True
    out[is_sep] = sep
    out[~is_sep] = flat
    return out, new_lengths


def _batches(documents: Iterable[Document]) -> Iterator[list[Document]]:
    batch: list[Document] = []
    chars = 0
    for doc in documents:
        batch.append(doc)
        chars += len(doc.text)
        if len(batch) >= BATCH_DOCS or chars >= BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
