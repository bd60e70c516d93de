"""read_documents on small files: formats, units, order, ids, and every user error."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embwalk.corpus import CorpusConfig, Document, read_documents
from tests.corpus.helpers import corpus_error, sources, texts


def write_jsonl(path, records, raw_lines=()):
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- txt ---------------------------------------------------------------------------


def test_txt_paragraphs(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first line\nsecond line\n\n\n  \nthird\n\n  indented\nlast", encoding="utf-8")
    docs = list(read_documents(CorpusConfig(path=str(f))))
    assert [d.text for d in docs] == ["first line\nsecond line", "third", "  indented\nlast"]
    assert [d.source for d in docs] == [f"{f}:para1", f"{f}:para2", f"{f}:para3"]
    assert [d.doc_id for d in docs] == [0, 1, 2]


def test_txt_lines_skip_blank_lines_but_keep_line_numbers(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"one\r\n\r\n   \ntwo\nthree")
    assert texts(f, txt_unit="line") == ["one", "two", "three"]
    assert sources(f, txt_unit="line") == [f"{f}:line1", f"{f}:line4", f"{f}:line5"]


def test_txt_whole_file_normalises_newlines_and_drops_bom(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfHello\r\n\r\nworld\n")
    assert texts(f, txt_unit="file") == ["Hello\n\nworld\n"]
    assert sources(f, txt_unit="file") == [str(f)]
    assert texts(f, txt_unit="line") == ["Hello", "world"]


def test_explicit_format_reads_any_extension(tmp_path):
    f = tmp_path / "notes.md"
    f.write_text("# Title\n\nBody text.\n", encoding="utf-8")
    assert texts(f, format="txt") == ["# Title", "Body text."]


# --- jsonl -------------------------------------------------------------------------


def test_jsonl_text_field_and_line_numbers(tmp_path):
    f = write_jsonl(
        tmp_path / "b.jsonl",
        [{"text": "alpha", "id": 1}, {"text": "   "}, {"text": "beta"}],
        raw_lines=["", '{"text": "gamma \\u00e9"}'],
    )
    docs = list(read_documents(CorpusConfig(path=str(f))))
    assert [d.text for d in docs] == ["alpha", "beta", "gamma é"]
    assert [d.source for d in docs] == [f"{f}:line1", f"{f}:line3", f"{f}:line5"]


def test_jsonl_custom_field(tmp_path):
    f = write_jsonl(tmp_path / "b.ndjson", [{"body": "x y z"}])
    assert texts(f, text_field="body") == ["x y z"]


# --- parquet -----------------------------------------------------------------------


def test_parquet_rows(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": [7, 8, 9], "text": ["one", " ", "three"]}), f)
    docs = list(read_documents(CorpusConfig(path=str(f))))
    assert [(d.text, d.source) for d in docs] == [("one", f"{f}:row0"), ("three", f"{f}:row2")]


def test_parquet_binary_column_is_decoded(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": pa.array([b"caf\xc3\xa9", b"bad \xff"], pa.binary())}), f)
    assert texts(f, text_field="body", invalid_utf8="replace") == ["café", "bad \ufffd"]
    corpus_error(f, "row 1", "byte 4", text_field="body")


# --- order, ids, directories, globs ---------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A directory of mixed files; the expected reading order is by sorted path."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "b.txt").write_text("b1\n\nb2", encoding="utf-8")
    (root / "a.jsonl").write_text('{"text": "a1"}\n{"text": "a2"}\n', encoding="utf-8")
    (root / "sub" / "c.txt").write_text("c1", encoding="utf-8")
    pq.write_table(pa.table({"text": ["p1"]}), root / "sub" / "p.parquet")
    (root / "README.md").write_text("not a corpus file", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / ".git" / "x.txt").write_text("git internals", encoding="utf-8")
    return root


def test_directory_is_read_recursively_in_sorted_order(tree):
    docs = list(read_documents(CorpusConfig(path=str(tree))))
    assert [d.text for d in docs] == ["a1", "a2", "b1", "b2", "c1", "p1"]
    assert [d.doc_id for d in docs] == list(range(6))
    assert docs[0].source == f"{tree}/a.jsonl:line1"
    assert docs[-1].source == f"{tree}/sub/p.parquet:row0"


def test_doc_ids_are_deterministic(tree):
    cfg = CorpusConfig(path=str(tree))
    assert list(read_documents(cfg)) == list(read_documents(cfg))
    assert all(isinstance(d, Document) for d in read_documents(cfg))


def test_glob(tree):
    assert texts(f"{tree}/*.txt") == ["b1", "b2"]
    assert texts(f"{tree}/**/*.txt") == ["b1", "b2", "c1"]
    assert texts(f"{tree}/**") == ["a1", "a2", "b1", "b2", "c1", "p1"]


def test_max_documents_stops_before_later_files(tree):
    (tree / "z.jsonl").write_text("not json\n", encoding="utf-8")  # never reached
    assert texts(tree, max_documents=3) == ["a1", "a2", "b1"]
    corpus_error(tree, "line 1")


def test_invalid_utf8_replace(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"ok \xff\xfe text\n")
    assert texts(f, invalid_utf8="replace") == ["ok \ufffd\ufffd text"]


def test_jsonl_lone_surrogate_is_invalid_utf8(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_text('{"text": "a \\ud800 b"}\n', encoding="utf-8")
    corpus_error(f, "line 1", "UTF-8")
    assert texts(f, invalid_utf8="replace") == ["a \ufffd b"]


# --- errors --------------------------------------------------------------------------


def test_missing_path(tmp_path):
    corpus_error(tmp_path / "nope.txt", "does not exist")


def test_directory_without_corpus_files(tmp_path):
    (tmp_path / "notes.md").write_text("hello", encoding="utf-8")
    corpus_error(tmp_path, "no corpus files", "directory")


def test_glob_matching_nothing(tmp_path):
    corpus_error(f"{tmp_path}/*.jsonl", "no corpus files", "glob")


def test_unknown_extension(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("a,b\n", encoding="utf-8")
    corpus_error(f, "unknown corpus format", "'.csv'")


@pytest.mark.parametrize("name", ["a.txt", "a.jsonl", "a.parquet"])
def test_empty_file(tmp_path, name):
    f = tmp_path / name
    f.write_bytes(b"")
    corpus_error(f, "empty")


def test_empty_file_in_directory_names_that_file(tmp_path):
    (tmp_path / "a.txt").write_text("fine", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"")
    corpus_error(tmp_path, "empty", str(tmp_path / "b.txt"))


def test_corpus_with_no_documents(tmp_path):
    (tmp_path / "a.txt").write_text("  \n\n\t\n", encoding="utf-8")
    write_jsonl(tmp_path / "b.jsonl", [{"text": ""}, {"text": " "}])
    corpus_error(tmp_path, "no documents")


def test_binary_file(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"GIF89a\x00\x01\x02")
    corpus_error(f, "binary", "offset 6")


def test_utf16_text_counts_as_binary(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "hi"}\n', encoding="utf-16")
    corpus_error(f, "binary")


def test_invalid_utf8_names_byte_offset(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"line one\n\nline \xe9 two\n")
    corpus_error(f, "invalid UTF-8", "byte offset 15")
    corpus_error(f, "byte offset 15", txt_unit="file")
    corpus_error(f, "byte offset 15", txt_unit="line")


def test_invalid_utf8_offset_counts_the_bom(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfab\xff")
    corpus_error(f, "byte offset 5", txt_unit="file")
    corpus_error(f, "byte offset 5", txt_unit="line")


def test_jsonl_parse_error_names_line(tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [{"text": "ok"}], raw_lines=["{broken"])
    corpus_error(f, "invalid JSON", "line 2")


def test_jsonl_non_object(tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [{"text": "ok"}, ["text"]])
    corpus_error(f, "line 2", "not a JSON object")


def test_jsonl_missing_field(tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [{"text": "ok"}, {"body": "x"}])
    corpus_error(f, "line 2", "'text'")
    corpus_error(f, "line 1", "'content'", text_field="content")


@pytest.mark.parametrize("value", [3, None, ["a"], {"a": 1}])
def test_jsonl_non_string_text(tmp_path, value):
    f = write_jsonl(tmp_path / "b.jsonl", [{"text": value}])
    corpus_error(f, "'text'", "line 1", "not a string")


def test_parquet_garbage(tmp_path):
    f = tmp_path / "c.parquet"
    f.write_bytes(b"PAR1 this is not really parquet at all")
    corpus_error(f, "parquet")


def test_parquet_missing_column(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), f)
    corpus_error(f, "no column 'text'", "body")


def test_parquet_non_string_column(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), f)
    corpus_error(f, "'text'", "not string")


def test_parquet_null_text(tmp_path):
    f = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["x", None]}), f)
    corpus_error(f, "'text'", "null", "row 1")
