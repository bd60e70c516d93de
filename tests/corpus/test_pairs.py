"""Input-target pairs (corpus.target_field): read from jsonl, parquet and arrow records, staged as
decoder rows with each pair's encoder inputs beside them, bad records refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embwalk.corpus.config import CorpusConfig
from embwalk.corpus.documents import corpus_parts
from embwalk.corpus.pairs import part_pairs
from embwalk.corpus.staged import stage_corpus
from embwalk.errors import CorpusError
from embwalk.store.fs import open_fs
from tests.corpus.helpers import check_message
from tests.models.t5_checkpoints import t5_tokenizer

PAIRS = [("the cat sat", "a dog"), ("red", "the old blue vector moves"), ("one", "two words")]
START = 0  # T5's decoder_start_token_id (its pad)


def write(path, pairs, fmt):
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({"src": a, "tgt": b}) + "\n" for a, b in pairs))
    else:
        table = pa.table({"src": [a for a, _ in pairs], "tgt": [b for _, b in pairs]})
        if fmt == "parquet":
            pq.write_table(table, path)
        else:
            with pa.ipc.new_stream(str(path), table.schema) as writer:
                writer.write_table(table)
    return path


def pairs_config(path, **options) -> CorpusConfig:
    return CorpusConfig(path=str(path), mode="document", seq_len=8, text_field="src", target_field="tgt", **options)


def pairs_of(cfg):
    return [(a, b) for part in corpus_parts(cfg) for _, a, b in part_pairs(part, cfg)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow"])
def test_pairs_are_read_from_records_and_staged_with_their_inputs(tmp_path, fmt):
    cfg = pairs_config(write(tmp_path / f"pairs.{fmt}", PAIRS, fmt))
    assert pairs_of(cfg) == PAIRS
    tok, fs = t5_tokenizer(), open_fs(str(tmp_path / "store"))
    staged, _ = stage_corpus(fs, cfg, tok, decoder_start=START)
    assert staged.pairs and staged.n_documents == len(PAIRS)
    rows = staged.read_rows(fs, 0, staged.n_tokens)
    want = [[START, *tok(b, truncation=True, max_length=7)["input_ids"]] for _, b in PAIRS]
    assert rows["token_id"].tolist() == [t for ids in want for t in ids]  # decoder start, target, EOS
    assert np.diff(rows["doc_id"]).sum() == len(PAIRS) - 1
    inputs = staged.read_inputs(fs, 1, 3)  # only the pairs asked for
    assert [x.tolist() for x in inputs] == [tok(a, truncation=True, max_length=8)["input_ids"] for a, _ in PAIRS[1:]]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "arrow"])
def test_an_empty_target_names_its_file_and_record(tmp_path, fmt):
    path = write(tmp_path / f"pairs.{fmt}", [*PAIRS, ("a cat", " ")], fmt)
    with pytest.raises(CorpusError) as err:
        pairs_of(pairs_config(path))
    where = "line 4" if fmt == "jsonl" else "row 3"
    check_message(err.value, "empty target", "'tgt'", where, str(path))


def test_a_missing_field_names_its_record(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"src": "a", "tgt": "b"}) + "\n" + json.dumps({"src": "a"}) + "\n")
    with pytest.raises(CorpusError) as err:
        pairs_of(pairs_config(path))
    check_message(err.value, "line 2", "no 'tgt' field", str(path))
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"src": ["a"]}), parquet)
    with pytest.raises(CorpusError) as err:
        pairs_of(pairs_config(parquet))
    check_message(err.value, "no column 'tgt'", str(parquet))
    pq.write_table(pa.table({"src": ["a", "b"], "tgt": ["x", None]}), parquet)
    with pytest.raises(CorpusError) as err:
        pairs_of(pairs_config(parquet))
    check_message(err.value, "'tgt' is null at row 1", str(parquet))


@pytest.mark.parametrize("options, what", [
    ({"mode": "pack"}, "corpus.mode=document"),
    ({"target_field": "src"}, "other than corpus.text_field"),
    ({"format": "txt"}, "jsonl, parquet or arrow"),
])
def test_target_field_options_are_checked(tmp_path, options, what):
    base = dict(path=str(tmp_path / "p.jsonl"), mode="document", text_field="src", target_field="tgt")
    with pytest.raises(CorpusError, match=what):
        CorpusConfig(**{**base, **options})


def test_a_corpus_of_texts_keeps_its_identity():
    assert "target_field" not in CorpusConfig().token_options()
    assert CorpusConfig(path="p.jsonl", mode="document", target_field="t").token_options()["target_field"] == "t"
