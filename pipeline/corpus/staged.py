"""The corpus tokenized part by part into the store's staging area, and read back by rows.

Tokenizing is a work unit per part (pipeline/corpus/documents.py: a file, or a
range of the built-in corpus), run in parallel wherever the executor has CPUs.
Each part writes its token rows here; the plan is then made from the parts'
counts alone, and an extraction worker reads only the rows of its own shard.
No process ever holds the corpus.

    STORE/staging/tokens/identity.json               what the parts are tokenized with
    STORE/staging/tokens/part-NNNNN.parquet          token_id, doc (number within the part), doc_pos
    STORE/staging/tokens/part-NNNNN.lengths.parquet  each document's stored length (0: nothing stored)
    STORE/staging/tokens/part-NNNNN.counts.parquet   how often each token id occurs in it
    STORE/staging/tokens/part-NNNNN.inputs.parquet   input-target pairs only: each pair's encoder input ids
    STORE/staging/tokens/part-NNNNN.json             the part's counts, written last: it is done

``staging/`` is never read as the token table (``tokens/`` holds that, per
committed shard). Row order, document ids and sequences equal what
``tokenize_corpus`` gives on the whole corpus in one process (tests check it):
documents are numbered part after part, and the corpus-wide cuts
(``max_documents``, ``max_tokens``) are applied to the parts' counts.
"""

from __future__ import annotations

import io
import itertools
import json
import zlib
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embwalk.corpus.config import CorpusConfig
from embwalk.corpus.documents import Document, Part, part_texts
from embwalk.corpus.pairs import INPUT_ROW_GROUP, INPUTS_SUFFIX, tokenize_pairs
from embwalk.corpus.sequences import _doc_positions, _name, encoded_batches
from embwalk.errors import CorpusError, StoreError

STAGING_DIR = "staging/tokens"  # under the store root (pipeline/store/layout.py: STAGING_DIR)
ROW_GROUP = 65_536  # rows per Parquet row group: what a worker reads at least to get a few rows


def part_file(index: int, suffix: str) -> str:
    return f"{STAGING_DIR}/part-{index:05d}{suffix}"


@dataclass(frozen=True)
class PartCounts:
    """What the plan needs of a tokenized part."""

    index: int
    n_docs: int  # non-blank documents read (each takes a document id)
    n_tokens: int  # tokens stored (separators included in pack mode)
    n_nonempty: int  # documents with at least one stored token
    crc: int  # CRC-32 of its token ids: the corpus's identity is made of these

    @classmethod
    def from_json(cls, raw: bytes) -> PartCounts:
        return cls(**json.loads(raw))


def tokenize_part(part: Part, cfg: CorpusConfig, tokenizer) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A part's token rows (token_id, doc, doc_pos) and its documents' stored lengths.

    Stops early where the corpus-wide cuts would, at the latest: no part
    contributes more than ``max_documents`` documents or ``max_tokens`` tokens.
    """
    texts = part_texts(part, cfg)
    docs = (Document(i, text, source) for i, (source, text) in enumerate(itertools.islice(texts, cfg.max_documents)))
    tokens, lengths = [], []
    for _, flat, batch_lengths in encoded_batches(docs, tokenizer, cfg):
        tokens.append(flat)
        lengths.append(batch_lengths)
    token_ids = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
    doc_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    return _token_rows(token_ids, doc_lengths), doc_lengths


def _token_rows(token_ids: np.ndarray, doc_lengths: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "token_id": token_ids,
        "doc": np.repeat(np.arange(len(doc_lengths), dtype=np.int64), doc_lengths),
        "doc_pos": _doc_positions(doc_lengths[doc_lengths > 0], len(token_ids)),
    }


def stage_part(fs, part: Part, cfg: CorpusConfig, tokenizer, decoder_start: int | None = None) -> PartCounts:
    """Tokenize a part into the staging area (or find it done); returns its counts.
    Its counts file is written last, so a part cut off half-way is redone whole.
    ``decoder_start``: a decoder store's corpus (input-target pairs, ``cfg.target_field``, or inputs
    alone), the decoder's start token."""
    done = part_file(part.index, ".json")
    if fs.is_file(done):
        return PartCounts.from_json(fs.read_bytes(done))
    if decoder_start is None:
        rows, lengths = tokenize_part(part, cfg, tokenizer)
    else:  # the decoder rows, and beside them each pair's encoder inputs
        flat, lengths, inputs = tokenize_pairs(part, cfg, tokenizer, decoder_start)
        rows = _token_rows(flat, lengths)
        fs.write_atomic(part_file(part.index, INPUTS_SUFFIX), _parquet(inputs, INPUT_ROW_GROUP))
    fs.write_atomic(part_file(part.index, ".parquet"), _parquet(pa.table(rows), ROW_GROUP))
    fs.write_atomic(part_file(part.index, ".lengths.parquet"), _parquet(pa.table({"length": lengths}), None))
    ids, n = np.unique(rows["token_id"], return_counts=True)
    fs.write_atomic(part_file(part.index, ".counts.parquet"), _parquet(pa.table({"token_id": ids, "count": n}), None))
    counts = PartCounts(part.index, len(lengths), len(rows["token_id"]), int(np.count_nonzero(lengths)),
                        zlib.crc32(rows["token_id"].tobytes()))
    fs.write_atomic(done, json.dumps(asdict(counts)).encode())
    return counts


def stage_corpus(fs, cfg: CorpusConfig, tokenizer, mapper=None, progress: bool = False,
                 decoder_start: int | None = None):
    """Tokenize the corpus part by part into the staging area; returns the StagedCorpus and the
    counts of the parts it uses.

    ``mapper`` (pipeline/executors/units.py) runs the parts not yet done where the
    executor has CPUs; results are taken in part order and scheduling stops once the
    corpus-wide cuts are reached. Parts done by an earlier, interrupted run are kept.
    ``decoder_start``: the decoder's start token of a decoder store's corpus (pairs, or inputs alone).
    """
    from tqdm.auto import tqdm

    from embwalk.corpus.documents import corpus_parts

    parts = corpus_parts(cfg)
    identity = staging_identity(cfg, tokenizer)
    if cfg.target_field is not None and decoder_start is None:
        raise CorpusError("corpus.target_field needs the decoder's start token (an encoder-decoder model)")
    if decoder_start is not None:
        identity["decoder_start_token_id"] = decoder_start
    check_staging_identity(fs, identity)
    done = {p.index: PartCounts.from_json(fs.read_bytes(part_file(p.index, ".json")))
            for p in parts if fs.is_file(part_file(p.index, ".json"))}
    todo = (p for p in parts if p.index not in done)
    # the start token travels only with pairs: a corpus of texts stages parts exactly as before
    shared = (fs.location, cfg, tokenizer) + (() if decoder_start is None else (decoder_start,))
    results = mapper(stage_part_at, todo, shared) if mapper else (stage_part_at(p, *shared) for p in todo)
    counts: list[PartCounts] = []
    n_tokens = n_docs = 0
    with tqdm(total=len(parts), unit="part", desc="tokenize", disable=not progress) as bar:
        try:
            for part in parts:
                c = done.get(part.index) or next(results)
                counts.append(c)
                n_tokens, n_docs = n_tokens + c.n_tokens, n_docs + c.n_docs
                bar.update(1)
                bar.set_postfix_str(f"{n_docs} documents, {n_tokens} tokens, "
                                    f"{n_tokens / max(bar.format_dict['elapsed'], 1e-9):.0f} tokens/s")
                if (cfg.max_tokens is not None and n_tokens >= cfg.max_tokens) or (
                        cfg.max_documents is not None and n_docs >= cfg.max_documents):
                    break  # the cut is in this part: later parts are not needed
        finally:
            results.close()  # cancels what is still queued
    return StagedCorpus.from_counts(fs, counts, cfg, _name(tokenizer), decoder_start is not None), counts


def stage_part_at(part: Part, location: str, cfg: CorpusConfig, tokenizer,
                  decoder_start: int | None = None) -> PartCounts:
    """``stage_part`` for a worker that gets the store's location (a process pool's, Ray's)."""
    from embwalk.store.fs import open_fs

    pairs = () if decoder_start is None else (decoder_start,)
    return stage_part(open_fs(location), part, cfg, tokenizer, *pairs)


def check_staging_identity(fs, identity: dict) -> None:
    """Staged parts belong to one tokenization: a rerun with other corpus options or another
    tokenizer is refused (as a store of another job is), never mixed with them."""
    rel = f"{STAGING_DIR}/identity.json"
    if fs.is_file(rel):
        old = json.loads(fs.read_bytes(rel))
        if old != identity:
            differ = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
            raise StoreError(
                f"store {fs.location} holds a tokenization of another corpus or tokenizer ({', '.join(differ)} "
                "differ); use another store path or delete this one"
            )
        return
    fs.write_atomic(rel, json.dumps(identity, sort_keys=True).encode())


@dataclass(frozen=True)
class StagedPart:
    index: int
    row0: int  # its first row on the corpus's token axis
    n_rows: int  # rows of it the corpus keeps (after the corpus-wide cuts)
    doc0: int  # document id of its first document


@dataclass(frozen=True)
class StagedCorpus:
    """The tokenized corpus as the plan and the workers see it: where each part's rows go.
    Its size grows with the number of parts, never with the number of tokens."""

    mode: str
    seq_len: int
    n_tokens: int
    n_documents: int  # documents with at least one stored token
    parts: tuple[StagedPart, ...]
    checksum: str  # decides the token rows: part CRCs and counts, and the cuts
    pairs: bool = False  # input-target pairs: each part's encoder inputs are staged beside its rows

    @classmethod
    def from_counts(cls, fs, counts: list[PartCounts], cfg: CorpusConfig, tokenizer_name: str,
                    pairs: bool | None = None) -> StagedCorpus:
        """Apply the corpus-wide cuts to the parts' counts, in part order (only the part a
        cut falls in is read: its documents' lengths)."""
        parts, row, doc, n_documents = [], 0, 0, 0
        for c in counts:
            n_docs, n_rows = c.n_docs, c.n_tokens
            cut_docs = cfg.max_documents is not None and doc + n_docs > cfg.max_documents
            cut_rows = cfg.max_tokens is not None and row + n_rows > cfg.max_tokens
            if cut_docs or cut_rows:
                lengths = _lengths(fs, c.index)
                if cut_docs:
                    n_docs = cfg.max_documents - doc
                    n_rows = int(lengths[:n_docs].sum())
                if cfg.max_tokens is not None and row + n_rows > cfg.max_tokens:
                    n_rows = cfg.max_tokens - row
                starts = np.cumsum(lengths) - lengths
                n_documents += int(np.count_nonzero((lengths[:n_docs] > 0) & (starts[:n_docs] < n_rows)))
            else:
                n_documents += c.n_nonempty
            parts.append(StagedPart(c.index, row, n_rows, doc))
            row, doc = row + n_rows, doc + n_docs
            if (cfg.max_tokens is not None and row >= cfg.max_tokens) or (
                    cfg.max_documents is not None and doc >= cfg.max_documents):
                break
        if doc == 0:
            raise CorpusError(f"corpus has no documents (all empty or whitespace-only): {cfg.label}")
        if row == 0:
            raise CorpusError(f"corpus produced no tokens with tokenizer {tokenizer_name}: {cfg.label}")
        used = [(c.index, c.n_tokens, c.crc, p.n_rows) for c, p in zip(counts, parts, strict=False)]
        checksum = f"{zlib.crc32(json.dumps(used).encode()):08x}"
        pairs = cfg.target_field is not None if pairs is None else pairs
        return cls(cfg.mode, cfg.seq_len, row, n_documents, tuple(parts), checksum, pairs)

    @property
    def n_sequences(self) -> int:
        if self.mode == "pack":
            return -(-self.n_tokens // self.seq_len)
        return self.n_documents  # one sequence per document with stored tokens

    def sequence_bounds(self, fs):
        """Per part, the (start, end) rows of its sequences (document mode: one per document
        with stored tokens), streamed part by part: memory is one part's documents."""
        for part in self.parts:
            lengths = _lengths(fs, part.index)
            lengths = lengths[lengths > 0]
            ends = np.cumsum(lengths)
            starts, ends = ends - lengths, np.minimum(ends, part.n_rows)
            keep = starts < part.n_rows
            yield part.row0 + starts[keep], part.row0 + ends[keep]

    def read_rows(self, fs, start: int, stop: int) -> dict[str, np.ndarray]:
        """token_id, doc_id (corpus-wide) and doc_pos of rows [start, stop), read from the
        staged parts: only the row groups that hold them."""
        out: dict[str, list[np.ndarray]] = {"token_id": [], "doc_id": [], "doc_pos": []}
        for part in self.parts:
            lo, hi = max(start, part.row0), min(stop, part.row0 + part.n_rows)
            if lo >= hi:
                continue
            table = _read_range(fs, part_file(part.index, ".parquet"), lo - part.row0, hi - part.row0)
            out["token_id"].append(table.column("token_id").to_numpy().astype(np.int32))
            out["doc_id"].append(table.column("doc").to_numpy() + part.doc0)
            out["doc_pos"].append(table.column("doc_pos").to_numpy().astype(np.int32))
        empty = {"token_id": np.int32, "doc_id": np.int64, "doc_pos": np.int32}
        return {k: np.concatenate(v) if v else np.zeros(0, empty[k]) for k, v in out.items()}

    def read_inputs(self, fs, doc_start: int, doc_stop: int) -> list[np.ndarray]:
        """The encoder input ids (int32) of pairs (documents) [doc_start, doc_stop), read from the
        staged parts: only the row groups that hold them (pairs: every document is a sequence)."""
        out: list[np.ndarray] = []
        for part, after in zip(self.parts, self.parts[1:] + (None,), strict=True):
            lo = max(doc_start, part.doc0)
            hi = doc_stop if after is None else min(doc_stop, after.doc0)
            if lo >= hi:
                continue
            table = _read_range(fs, part_file(part.index, INPUTS_SUFFIX), lo - part.doc0, hi - part.doc0)
            column = table.column("input_ids").combine_chunks()
            values, offsets = column.values.to_numpy().astype(np.int32), column.offsets.to_numpy()
            out += [values[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
        if len(out) != doc_stop - doc_start:
            raise StoreError(f"staged encoder inputs of pairs {doc_start}..{doc_stop} are missing from {fs.location}")
        return out

    def token_counts(self, fs, counts: list[PartCounts]) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, counts) over the corpus's rows (for the statistics' top types), from
        each part's counts; only a part cut short is read, to count its kept rows."""
        whole = {c.index: c.n_tokens for c in counts}

        def of(part: StagedPart) -> tuple[np.ndarray, np.ndarray]:
            if part.n_rows == whole[part.index]:
                table = pq.read_table(io.BytesIO(fs.read_bytes(part_file(part.index, ".counts.parquet"))))
                return table.column("token_id").to_numpy(), table.column("count").to_numpy()
            rows = _read_range(fs, part_file(part.index, ".parquet"), 0, part.n_rows)
            return np.unique(rows.column("token_id").to_numpy(), return_counts=True)

        return merge_token_counts(of(p) for p in self.parts if p.n_rows)


def merge_token_counts(pieces) -> tuple[np.ndarray, np.ndarray]:
    """Sum (token ids, counts) pairs, piece by piece: memory is the vocabulary, not the corpus."""
    ids, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for piece_ids, piece_counts in pieces:
        keys, inverse = np.unique(np.concatenate([ids, np.asarray(piece_ids, np.int64)]), return_inverse=True)
        counts = np.bincount(inverse, weights=np.concatenate([counts, piece_counts]), minlength=len(keys))
        ids, counts = keys, counts.astype(np.int64)
    return ids, counts


def staging_identity(cfg: CorpusConfig, tokenizer) -> dict:
    # the cuts too (a part stops tokenizing at them); not the shuffle: it reorders rows a worker
    # reads, never what is staged, and leaving it out keeps earlier stagings valid
    options = cfg.token_options()
    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode() if hasattr(tokenizer, "get_vocab") else b""
    return {"corpus": options, "tokenizer": _name(tokenizer), "tokenizer.vocab_crc": zlib.crc32(vocab),
            "tokenizer.special": [tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)]}


def _parquet(table: pa.Table, row_group: int | None) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=row_group, compression="zstd")
    return buf.getvalue()


def _lengths(fs, index: int) -> np.ndarray:
    return pq.read_table(io.BytesIO(fs.read_bytes(part_file(index, ".lengths.parquet")))).column(0).to_numpy()


def _read_range(fs, rel: str, lo: int, hi: int) -> pa.Table:
    with fs.open_read(rel) as f:
        pf = pq.ParquetFile(f)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        first = int(np.searchsorted(bounds, lo, side="right")) - 1
        last = int(np.searchsorted(bounds, hi, side="left"))
        table = pf.read_row_groups(list(range(first, last)))
    return table.slice(lo - int(bounds[first]), hi - lo)
