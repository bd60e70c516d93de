"""tokenize_corpus and vocabulary_strings against the real BERT and SmolLM2 tokenizers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from embwalk.corpus import (
    CorpusConfig,
    Document,
    TokenizedCorpus,
    tokenize_corpus,
    vocabulary_strings,
)
from embwalk.errors import CorpusError
from tests.corpus.helpers import check_message

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Packing joins documents with a separator token.",
    "Short.",
    "A somewhat longer document, so that it spans more than one sequence when the "
    "sequence length is small: it keeps going, and going, with commas, numbers 12345 "
    "and some unicode: café, naïve, 東京.",
    "Last one!",
]


def make_docs(texts=TEXTS, first_id=0):
    return [Document(first_id + i, t, f"test:{i}") for i, t in enumerate(texts)]


def separator(tokenizer):
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def check_layout(tc: TokenizedCorpus):
    """Invariants every TokenizedCorpus keeps, whatever the mode."""
    n = tc.n_tokens
    assert tc.token_ids.dtype == np.int32 and tc.token_ids.shape == (n,)
    assert tc.doc_ids.dtype == np.int64 and tc.doc_ids.shape == (n,)
    assert tc.positions.dtype == np.int32 and tc.positions.shape == (n,)
    assert tc.doc_positions.dtype == np.int32 and tc.doc_positions.shape == (n,)
    # doc_positions restart at 0 exactly where doc_ids change and count up by one otherwise
    new_doc = np.concatenate([[True], tc.doc_ids[1:] != tc.doc_ids[:-1]])
    assert np.all(tc.doc_positions[new_doc] == 0)
    assert np.all(np.diff(tc.doc_positions)[~new_doc[1:]] == 1)
    assert tc.seq_offsets.dtype == np.int64
    assert tc.seq_offsets[0] == 0 and tc.seq_offsets[-1] == n
    assert np.all(np.diff(tc.seq_offsets) > 0)  # no empty sequences
    seq_ids = tc.seq_ids()
    assert seq_ids.dtype == np.int64 and seq_ids.shape == (n,)
    for i in range(tc.n_sequences):
        rows = slice(tc.seq_offsets[i], tc.seq_offsets[i + 1])
        assert np.array_equal(tc.positions[rows], np.arange(rows.stop - rows.start))
        assert np.all(seq_ids[rows] == i)
        assert np.array_equal(tc.sequence(i), tc.token_ids[rows])


def test_pack_mode(tokenizer):
    seq_len = 8
    cfg = CorpusConfig(mode="pack", seq_len=seq_len)
    tc = tokenize_corpus(make_docs(first_id=10), tokenizer, cfg)
    check_layout(tc)
    sep = separator(tokenizer)
    expected_ids, expected_docs, expected_doc_pos = [], [], []
    for i, text in enumerate(TEXTS):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [sep]
        expected_ids += ids
        expected_docs += [10 + i] * len(ids)
        expected_doc_pos += list(range(len(ids)))  # the separator takes its document's next position
    assert tc.token_ids.tolist() == expected_ids
    assert tc.doc_ids.tolist() == expected_docs
    assert tc.doc_positions.tolist() == expected_doc_pos
    # the long document runs over several sequences: doc_pos keeps counting where pos restarts
    long_doc = tc.doc_ids == 13
    assert len(set(tc.seq_ids()[long_doc].tolist())) > 2
    assert tc.doc_positions[long_doc].max() >= 2 * seq_len
    assert np.any(tc.doc_positions != tc.positions)
    lengths = np.diff(tc.seq_offsets)
    assert np.all(lengths[:-1] == seq_len) and 0 < lengths[-1] <= seq_len
    assert tc.n_sequences == -(-len(expected_ids) // seq_len)
    assert tc.n_documents == len(TEXTS)
    assert np.array_equal(tc.positions, np.arange(tc.n_tokens) % seq_len)


def test_bert_packs_with_sep_and_smollm_with_eos(bert_tokenizer, smollm_tokenizer):
    for tok, sep in [(bert_tokenizer, "[SEP]"), (smollm_tokenizer, "<|im_end|>")]:
        tc = tokenize_corpus(make_docs(["hello world"]), tok, CorpusConfig(seq_len=16))
        words = tok("hello world", add_special_tokens=False)["input_ids"]
        assert tc.token_ids.tolist() == words + [tok.convert_tokens_to_ids(sep)]


def test_document_mode(tokenizer):
    seq_len = 12
    cfg = CorpusConfig(mode="document", seq_len=seq_len)
    tc = tokenize_corpus(make_docs(), tokenizer, cfg)
    check_layout(tc)
    assert tc.n_sequences == len(TEXTS) == tc.n_documents
    for i, text in enumerate(TEXTS):
        expected = tokenizer(text, truncation=True, max_length=seq_len)["input_ids"]
        assert tc.sequence(i).tolist() == expected
        assert np.all(tc.doc_ids[tc.seq_offsets[i] : tc.seq_offsets[i + 1]] == i)
        assert tc.doc_positions[tc.seq_offsets[i] : tc.seq_offsets[i + 1]].tolist() == list(range(len(expected)))
    assert np.diff(tc.seq_offsets).max() == seq_len  # the long document was truncated
    assert np.array_equal(tc.doc_positions, tc.positions)  # one document per sequence


def test_document_mode_keeps_bert_special_tokens(bert_tokenizer):
    tc = tokenize_corpus(make_docs(), bert_tokenizer, CorpusConfig(mode="document", seq_len=64))
    for i in range(tc.n_sequences):
        seq = tc.sequence(i)
        assert seq[0] == bert_tokenizer.cls_token_id and seq[-1] == bert_tokenizer.sep_token_id


@pytest.mark.parametrize("mode", ["pack", "document"])
@pytest.mark.parametrize("max_tokens", [1, 7, 8, 9, 23])
def test_max_tokens_is_exact(bert_tokenizer, mode, max_tokens):
    full = tokenize_corpus(make_docs(), bert_tokenizer, CorpusConfig(mode=mode, seq_len=8))
    cfg = CorpusConfig(mode=mode, seq_len=8, max_tokens=max_tokens)
    tc = tokenize_corpus(make_docs(), bert_tokenizer, cfg)
    check_layout(tc)
    assert tc.n_tokens == max_tokens
    assert np.array_equal(tc.token_ids, full.token_ids[:max_tokens])
    assert np.array_equal(tc.doc_ids, full.doc_ids[:max_tokens])
    assert np.array_equal(tc.positions, full.positions[:max_tokens])
    assert np.array_equal(tc.doc_positions, full.doc_positions[:max_tokens])
    assert tc.n_documents == len(set(tc.doc_ids.tolist()))


def test_max_tokens_stops_reading_an_endless_corpus(smollm_tokenizer):
    endless = (Document(i, f"document number {i}", "gen") for i in itertools.count())
    tc = tokenize_corpus(endless, smollm_tokenizer, CorpusConfig(max_tokens=1000, seq_len=64))
    assert tc.n_tokens == 1000 and tc.n_sequences == 16


def test_documents_without_tokens_are_left_out(bert_tokenizer):
    # BERT's normaliser deletes a zero-width space: the document has no tokens at all.
    docs = make_docs(["hello", "\u200b", "world"])
    tc = tokenize_corpus(docs, bert_tokenizer, CorpusConfig(seq_len=16))
    assert bert_tokenizer.convert_ids_to_tokens(tc.token_ids.tolist()) == [
        "hello",
        "[SEP]",
        "world",
        "[SEP]",
    ]
    assert tc.doc_ids.tolist() == [0, 0, 2, 2] and tc.n_documents == 2
    assert tc.doc_positions.tolist() == [0, 1, 0, 1]


def test_no_tokens_at_all_is_an_error(bert_tokenizer, tmp_path):
    cfg = CorpusConfig(path=str(tmp_path / "x.txt"))
    with pytest.raises(CorpusError) as excinfo:
        tokenize_corpus(make_docs(["\u200b"]), bert_tokenizer, cfg)
    check_message(excinfo.value, "no tokens", str(tmp_path / "x.txt"))


def test_tokenizer_without_separator_cannot_pack():
    class NoSeparator:
        name_or_path = "stub-tokenizer"
        eos_token_id = None
        sep_token_id = None

    with pytest.raises(CorpusError) as excinfo:
        tokenize_corpus(make_docs(), NoSeparator(), CorpusConfig())
    check_message(excinfo.value, "stub-tokenizer", "mode=document")


def test_deterministic(tokenizer):
    docs = make_docs(TEXTS * 50)
    for mode in ("pack", "document"):
        cfg = CorpusConfig(mode=mode, seq_len=32)
        a, b = tokenize_corpus(docs, tokenizer, cfg), tokenize_corpus(iter(docs), tokenizer, cfg)
        for field in ("token_ids", "doc_ids", "positions", "doc_positions", "seq_offsets"):
            assert np.array_equal(getattr(a, field), getattr(b, field))


def test_long_documents_do_not_warn(bert_tokenizer, capfd, caplog):
    long_doc = make_docs(["word " * 2000])  # far beyond BERT's 512-token maximum
    tokenize_corpus(long_doc, bert_tokenizer, CorpusConfig(seq_len=128))
    assert "longer than" not in capfd.readouterr().err
    assert "longer than" not in caplog.text


def test_sequence_index_out_of_range(bert_tokenizer):
    tc = tokenize_corpus(make_docs(), bert_tokenizer, CorpusConfig(mode="document"))
    assert np.array_equal(tc.sequence(-1), tc.sequence(tc.n_sequences - 1))
    with pytest.raises(IndexError):
        tc.sequence(tc.n_sequences)


def test_vocabulary_strings_match_decode(tokenizer):
    strings = vocabulary_strings(tokenizer)
    assert len(strings) == len(tokenizer)
    assert strings == [tokenizer.decode([i]) for i in range(len(tokenizer))]


def test_vocabulary_strings_without_a_fast_backend():
    class SlowTokenizer:
        def __len__(self):
            return 3

        def decode(self, ids):
            return "<" + ",".join(map(str, ids)) + ">"

    assert vocabulary_strings(SlowTokenizer()) == ["<0>", "<1>", "<2>"]


@pytest.mark.parametrize("max_tokens", [None, 30])
def test_doc_positions_do_not_depend_on_tokenizer_batches(smollm_tokenizer, monkeypatch, max_tokens):
    from embwalk.corpus import sequences

    cfg = CorpusConfig(mode="pack", seq_len=8, max_tokens=max_tokens)
    whole = tokenize_corpus(make_docs(TEXTS * 3), smollm_tokenizer, cfg)
    monkeypatch.setattr(sequences, "BATCH_DOCS", 2)  # two documents per tokenizer call
    batched = tokenize_corpus(make_docs(TEXTS * 3), smollm_tokenizer, cfg)
    check_layout(batched)
    assert np.array_equal(batched.doc_positions, whole.doc_positions)
    assert np.array_equal(batched.token_ids, whole.token_ids)
