"""Compressed JSON lines (.jsonl.gz, .jsonl.zst) and Arrow (datasets' save_to_disk, .arrow files):
the same documents as the same content in a plain .jsonl file, and every user error in one line."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pytest

from embwalk.corpus import CorpusConfig, read_documents, readers, tokenize_corpus
from embwalk.corpus.documents import corpus_parts, part_texts
from tests.corpus.helpers import corpus_error, sources, texts

zstandard = pytest.importorskip("zstandard")

RECORDS = [{"text": "alpha", "id": 1}, {"text": "   "}, {"text": "beta \u00e9"}, {"text": "gamma\nwith a newline"}]
RAW_LINES = ["", '{"text": "delta \\u00e9"}']  # a blank line is skipped but keeps its number


def jsonl_bytes(records=RECORDS, raw_lines=RAW_LINES) -> bytes:
    lines = [json.dumps(r) for r in records] + list(raw_lines)
    return ("\n".join(lines) + "\n").encode("utf-8")


def compress(data: bytes, suffix: str) -> bytes:
    return gzip.compress(data) if suffix.endswith(".gz") else zstandard.ZstdCompressor().compress(data)


def docs_of(path, **options):
    return [(d.doc_id, d.text, d.source) for d in read_documents(CorpusConfig(path=str(path), **options))]


def same_as_jsonl(docs, plain, where=lambda s: s):
    """``docs`` equal the plain .jsonl's documents, ids and sources (file names aside)."""
    want = docs_of(plain)
    assert [(i, t) for i, t, _ in docs] == [(i, t) for i, t, _ in want]
    assert [s.rsplit(":", 1)[1] for _, _, s in docs] == [where(s.rsplit(":", 1)[1]) for _, _, s in want]


def as_row(where: str) -> str:
    return f"row{int(where.removeprefix('line')) - 1}"


# --- compressed JSON lines ----------------------------------------------------------------

SUFFIXES = [".jsonl.gz", ".jsonl.zst", ".ndjson.gz", ".ndjson.zst"]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_compressed_jsonl_equals_plain(tmp_path, suffix):
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(jsonl_bytes())
    f = tmp_path / f"b{suffix}"
    f.write_bytes(compress(jsonl_bytes(), suffix))
    docs = docs_of(f)
    same_as_jsonl(docs, plain)
    assert [s for _, _, s in docs] == [f"{f}:line1", f"{f}:line3", f"{f}:line4", f"{f}:line6"]
    assert [p.format for p in corpus_parts(CorpusConfig(path=str(f)))] == ["jsonl"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_bom_crlf_and_custom_field(tmp_path, suffix):
    f = tmp_path / f"b{suffix}"
    f.write_bytes(compress(b'\xef\xbb\xbf{"body": "one"}\r\n\r\n{"body": "two"}', suffix))
    assert texts(f, text_field="body") == ["one", "two"]
    assert sources(f, text_field="body") == [f"{f}:line1", f"{f}:line3"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_jsonl_streams_many_chunks_and_members(tmp_path, suffix):
    # Several gzip members / zstd frames one after another, each larger than a read chunk.
    rng = np.random.default_rng(0)
    words = [f"w{int(n)}" for n in rng.integers(0, 10**6, 60_000)]
    records = [{"text": " ".join(words[i:i + 20])} for i in range(0, len(words), 20)]
    data = jsonl_bytes(records, [])
    half = data.index(b"\n", len(data) // 2) + 1
    f = tmp_path / f"big{suffix}"
    f.write_bytes(compress(data[:half], suffix) + compress(data[half:], suffix))
    assert len(data) > 4 * readers._CHUNK and f.stat().st_size > 2 * readers._CHUNK
    assert texts(f) == [r["text"] for r in records]


def test_compressed_is_recognised_by_its_bytes_with_an_explicit_format(tmp_path):
    f = tmp_path / "export.json.gz"  # not an extension auto reads
    f.write_bytes(gzip.compress(jsonl_bytes()))
    corpus_error(f, "unknown corpus format")
    assert texts(f, format="jsonl") == ["alpha", "beta \u00e9", "gamma\nwith a newline", "delta \u00e9"]


def test_directory_and_glob_read_compressed_files(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(b'{"text": "a"}\n'))
    (tmp_path / "b.jsonl").write_bytes(b'{"text": "b"}\n')
    (tmp_path / "c.ndjson.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "c"}\n'))
    (tmp_path / "d.txt.gz").write_bytes(gzip.compress(b"not read"))
    assert texts(tmp_path) == ["a", "b", "c"]
    assert texts(f"{tmp_path}/*.zst") == ["c"]
    assert [p.label for p in corpus_parts(CorpusConfig(path=str(tmp_path)))] == [
        f"{tmp_path}/a.jsonl.gz", f"{tmp_path}/b.jsonl", f"{tmp_path}/c.ndjson.zst"]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_invalid_utf8_names_file_and_line(tmp_path, suffix):
    f = tmp_path / f"b{suffix}"
    f.write_bytes(compress(b'{"text": "ok"}\n\n{"text": "bad \xff here"}\n', suffix))
    corpus_error(f, "invalid UTF-8", "line 3", "byte offset 30", "decompressed")
    assert texts(f, invalid_utf8="replace") == ["ok", "bad \ufffd here"]


def test_plain_invalid_utf8_names_the_line_too(tmp_path):
    f = tmp_path / "b.jsonl"
    f.write_bytes(b'{"text": "ok"}\n\n{"text": "bad \xff here"}\n')
    corpus_error(f, "invalid UTF-8", "line 3", "byte offset 30")
    f = tmp_path / "a.txt"
    f.write_bytes(b"one\ntwo \xff\n")
    corpus_error(f, "line 2", "byte offset 8", txt_unit="file")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_lone_surrogate_and_parse_errors_name_the_line(tmp_path, suffix):
    f = tmp_path / f"b{suffix}"
    f.write_bytes(compress(b'{"text": "ok"}\n{"text": "a \\ud800 b"}\n{broken\n', suffix))
    corpus_error(f, "line 2", "UTF-8")
    corpus_error(f, "invalid JSON", "line 3", invalid_utf8="replace")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_binary_and_utf16_content(tmp_path, suffix):
    f = tmp_path / f"b{suffix}"
    f.write_bytes(compress(b'{"text": "a"}\n\x00\x01\x02', suffix))
    corpus_error(f, "binary", "offset 14")
    f.write_bytes(compress('{"text": "hi"}\n'.encode("utf-16"), suffix))
    corpus_error(f, "binary")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_compressed_empty(tmp_path, suffix):
    f = tmp_path / f"b{suffix}"
    f.write_bytes(b"")
    corpus_error(f, "empty")
    f.write_bytes(compress(b"", suffix))
    corpus_error(f, "empty", "decompressed")


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_compressed_file_is_one_line_error(tmp_path, suffix):
    data = jsonl_bytes([{"text": f"document number {i} " * 5} for i in range(5000)], [])
    whole = compress(data, suffix)
    f = tmp_path / f"b{suffix}"
    for cut in (len(whole) // 2, len(whole) - 3, 12):
        f.write_bytes(whole[:cut])
        corpus_error(f, "decompress", suffix.rsplit(".", 1)[1].replace("gz", "gzip").replace("zst", "zstd"))
    f.write_bytes(whole[:len(whole) // 2])
    assert len(texts(f, max_documents=2)) == 2  # streamed: the cut is never reached


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_corrupt_compressed_file_is_one_line_error(tmp_path, suffix):
    whole = compress(jsonl_bytes(), suffix)
    f = tmp_path / f"b{suffix}"
    f.write_bytes(whole[:6] + b"\xaa" * 64 + whole[6:])
    corpus_error(f, "decompress")
    f.write_bytes(whole + b"trailing garbage that is not a compressed stream")
    corpus_error(f, "decompress")


def test_zstd_without_zstandard_is_one_line_error(tmp_path, monkeypatch):
    f = tmp_path / "b.jsonl.zst"
    f.write_bytes(zstandard.ZstdCompressor().compress(jsonl_bytes()))
    monkeypatch.setattr(readers, "_zstandard_or_none", lambda: None)
    corpus_error(f, "zstandard", "pip install")


# --- Arrow: datasets' save_to_disk, and plain .arrow files ---------------------------------


@pytest.fixture(scope="module")
def hf():
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    return datasets


def save_dataset(hf, path, texts_, num_shards=1, **columns):
    hf.Dataset.from_dict({"text": texts_, "n": list(range(len(texts_))), **columns}).save_to_disk(
        str(path), num_shards=num_shards)
    return path


def plain_texts():
    return [r["text"] for r in RECORDS] + ["delta \u00e9"]  # the blank line is not a document


def test_save_to_disk_equals_plain(tmp_path, hf):
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(jsonl_bytes(RECORDS + [{"text": "delta \u00e9"}], []))
    ds = save_dataset(hf, tmp_path / "ds", plain_texts())
    docs = docs_of(ds)
    same_as_jsonl(docs, plain, as_row)
    assert docs[0][2] == f"{(ds / 'data-00000-of-00001.arrow').as_posix()}:row0"
    assert docs_of(ds, format="arrow") == docs


def test_save_to_disk_shards_read_in_order(tmp_path, hf):
    ds = save_dataset(hf, tmp_path / "ds", plain_texts(), num_shards=3)
    shards = [ds / f"data-0000{i}-of-00003.arrow" for i in range(3)]
    rows = [pa.ipc.open_stream(pa.memory_map(str(f))).read_all().num_rows for f in shards]
    assert sum(rows) == 5 and all(rows)
    where = [f"{f.as_posix()}:row{r}" for f, n in zip(shards, rows, strict=True) for r in range(n)]
    kept = [(source, text) for source, text in zip(where, plain_texts(), strict=True) if text.strip()]
    want = [(i, text, source) for i, (source, text) in enumerate(kept)]
    assert docs_of(ds) == want
    assert [t for _, t, _ in want] == ["alpha", "beta \u00e9", "gamma\nwith a newline", "delta \u00e9"]
    assert docs_of(f"{ds}/*.arrow") == want  # the same files, sorted by name


def test_save_to_disk_reads_what_load_from_disk_gives(tmp_path, hf):
    shuffled = hf.Dataset.from_dict({"text": [f"t{i}" for i in range(30)]}).shuffle(seed=1)
    shuffled = shuffled.filter(lambda row: row["text"] != "t3")
    shuffled.save_to_disk(str(tmp_path / "ds"), num_shards=3)
    assert texts(tmp_path / "ds") == list(hf.load_from_disk(str(tmp_path / "ds"))["text"])


def test_save_to_disk_parts_are_its_data_files_in_its_order(tmp_path, hf):
    ds = save_dataset(hf, tmp_path / "ds", [f"doc {i}" for i in range(9)], num_shards=3)
    state = json.loads((ds / "state.json").read_text())
    state["_data_files"].reverse()  # the dataset's order, not the names', decides
    (ds / "state.json").write_text(json.dumps(state))
    names = [entry["filename"] for entry in state["_data_files"]]
    cfg = CorpusConfig(path=str(ds))
    parts = corpus_parts(cfg)
    assert [(p.index, p.path, p.format) for p in parts] == [(i, str(ds / n), "arrow") for i, n in enumerate(names)]
    per_part = [[text for _, text in part_texts(p, cfg)] for p in parts]
    assert per_part == [["doc 6", "doc 7", "doc 8"], ["doc 3", "doc 4", "doc 5"], ["doc 0", "doc 1", "doc 2"]]
    assert texts(ds) == [t for part in per_part for t in part]
    assert sources(ds)[0] == f"{(ds / names[0]).as_posix()}:row0"


def test_save_to_disk_ignores_cache_files_and_metadata(tmp_path, hf):
    ds = save_dataset(hf, tmp_path / "ds", ["a", "b"])
    write_stream(ds / "cache-0123abcd.arrow", pa.table({"text": ["from a cache file"]}))  # what .map() leaves
    assert texts(ds) == ["a", "b"]
    assert len(corpus_parts(CorpusConfig(path=str(ds)))) == 1


def test_dataset_dict_reads_splits_in_its_order(tmp_path, hf):
    train = hf.Dataset.from_dict({"text": ["t0", "t1", "t2"]})
    test = hf.Dataset.from_dict({"text": ["s0"]})
    dd = tmp_path / "dd"
    hf.DatasetDict({"train": train, "test": test}).save_to_disk(str(dd), num_shards={"train": 2, "test": 1})
    assert json.loads((dd / "dataset_dict.json").read_text())["splits"] == ["train", "test"]
    assert texts(dd) == ["t0", "t1", "t2", "s0"]  # train first, as listed (not by name)
    parts = corpus_parts(CorpusConfig(path=str(dd)))
    assert [p.path for p in parts] == [str(dd / "train" / "data-00000-of-00002.arrow"),
                                       str(dd / "train" / "data-00001-of-00002.arrow"),
                                       str(dd / "test" / "data-00000-of-00001.arrow")]
    assert sources(dd)[-1] == f"{(dd / 'test' / 'data-00000-of-00001.arrow').as_posix()}:row0"
    assert texts(dd / "test") == ["s0"]  # one split on its own


def test_datasets_inside_a_directory_keep_their_order(tmp_path, hf):
    root = tmp_path / "data"
    root.mkdir()
    ds = save_dataset(hf, root / "m_ds", [f"d{i}" for i in range(4)], num_shards=2)
    state = json.loads((ds / "state.json").read_text())
    state["_data_files"].reverse()
    (ds / "state.json").write_text(json.dumps(state))
    (root / "a.jsonl").write_bytes(b'{"text": "a"}\n')
    (root / "m_ds.jsonl").write_bytes(b'{"text": "m.jsonl"}\n')  # "m_ds.jsonl" < "m_ds/" would be wrong
    (root / "z.txt").write_bytes(b"z")
    want = ["a", "m.jsonl", "d2", "d3", "d0", "d1", "z"]
    assert texts(root) == want
    assert texts(f"{root}/**") == want
    assert texts(f"{root}/*") == want


def test_plain_directory_of_arrow_files_and_ipc_file_format(tmp_path):
    root = tmp_path / "arrows"
    root.mkdir()
    for name, values in [("b.arrow", ["b0", "b1"]), ("a.arrow", ["a0"])]:
        table = pa.table({"text": values})
        with pa.OSFile(str(root / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            w.write_table(table)
    table = pa.table({"text": ["c0", "c1", "c2"]})
    with pa.OSFile(str(root / "c.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table, max_chunksize=2)  # an IPC file, two record batches
    assert texts(root) == ["a0", "b0", "b1", "c0", "c1", "c2"]
    assert sources(root / "c.arrow") == [f"{root / 'c.arrow'}:row{i}" for i in range(3)]
    assert [p.format for p in corpus_parts(CorpusConfig(path=str(root)))] == ["arrow"] * 3


def write_stream(path, table):
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return path


def test_arrow_binary_large_string_and_dictionary_columns(tmp_path):
    f = write_stream(tmp_path / "b.arrow", pa.table({"body": pa.array([b"caf\xc3\xa9", b"bad \xff"], pa.binary())}))
    assert texts(f, text_field="body", invalid_utf8="replace") == ["café", "bad \ufffd"]
    corpus_error(f, "row 1", "byte 4", "arrow", text_field="body")
    f = write_stream(tmp_path / "l.arrow", pa.table({"text": pa.array(["x", "y"], pa.large_string())}))
    assert texts(f) == ["x", "y"]
    f = write_stream(tmp_path / "d.arrow", pa.table({"text": pa.array(["p", "q", "p"]).dictionary_encode()}))
    assert texts(f) == ["p", "q", "p"]


def test_arrow_missing_text_column_names_column_and_file(tmp_path, hf):
    ds = save_dataset(hf, tmp_path / "ds", ["a", "b"], num_shards=2)
    message = corpus_error(ds, "no column 'content'", "text, n", str(ds / "data-00000-of-00002.arrow"),
                           text_field="content")
    assert "arrow" in message


def test_arrow_errors(tmp_path):
    f = write_stream(tmp_path / "n.arrow", pa.table({"text": [1, 2]}))
    corpus_error(f, "'text'", "not string")
    f = write_stream(tmp_path / "x.arrow", pa.table({"text": ["x", None]}))
    corpus_error(f, "'text'", "null", "row 1")
    f = write_stream(tmp_path / "two.arrow", pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"])], ["text", "text"]))
    corpus_error(f, "more than one column 'text'")
    f = tmp_path / "g.arrow"
    f.write_bytes(b"this is not an arrow file at all " * 4)
    corpus_error(f, "Arrow IPC")
    f.write_bytes(b"")
    corpus_error(f, "empty")
    data = write_stream(tmp_path / "t.arrow", pa.table({"text": [f"row {i}" for i in range(1000)]})).read_bytes()
    f.write_bytes(data[:len(data) - 100])
    corpus_error(f, "cannot read arrow file")


def test_dataset_directory_errors(tmp_path, hf):
    ds = save_dataset(hf, tmp_path / "ds", ["a", "b"], num_shards=2)
    corpus_error(ds, "dataset directory", "format", format="jsonl")
    (ds / "data-00001-of-00002.arrow").unlink()
    corpus_error(ds, "data-00001-of-00002.arrow", "missing")
    (ds / "state.json").write_text('{"_data_files": [{"filename": "../escape.arrow"}]}')
    corpus_error(ds, "_data_files")
    (ds / "state.json").write_text("{not json")
    corpus_error(ds, "state.json")
    dd = tmp_path / "dd"
    hf.DatasetDict({"train": hf.Dataset.from_dict({"text": ["t"]})}).save_to_disk(str(dd))
    (dd / "dataset_dict.json").write_text('{"splits": ["train", "validation"]}')
    corpus_error(dd, "'validation'")


# --- tokenizing them -----------------------------------------------------------------------


def test_tokenize_corpus_on_the_new_formats(tmp_path, hf, smollm2):
    records = [{"text": f"Document {i}: the quick brown fox jumps over the lazy dog."} for i in range(12)]
    plain = tmp_path / "plain.jsonl"
    plain.write_bytes(jsonl_bytes(records, []))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    save_dataset(hf, tmp_path / "ds", [r["text"] for r in records], num_shards=3)
    for mode in ("pack", "document"):
        want_cfg = CorpusConfig(path=str(plain), mode=mode, seq_len=16)
        want = tokenize_corpus(read_documents(want_cfg), smollm2.tokenizer, want_cfg)
        for name in ("b.jsonl.gz", "b.jsonl.zst", "ds"):
            cfg = CorpusConfig(path=str(tmp_path / name), mode=mode, seq_len=16)
            got = tokenize_corpus(read_documents(cfg), smollm2.tokenizer, cfg)
            for array in ("token_ids", "doc_ids", "positions", "doc_positions", "seq_offsets"):
                np.testing.assert_array_equal(getattr(got, array), getattr(want, array), err_msg=f"{name} {array}")
            assert got.n_documents == want.n_documents == 12
