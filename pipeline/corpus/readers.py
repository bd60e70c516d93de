"""Per-format readers: each turns one file into ``(where, text)`` pairs in file order.

``where`` is the part of a document's source after the file name (``line7``,
``para3``, ``row12``; empty for a whole-file document). Lines and paragraphs
count from 1, as an editor shows them; parquet and Arrow rows count from 0, as
pyarrow and pandas index them. Whitespace-only texts are passed through and
dropped by ``read_documents``, so numbers always refer to the file as the user
sees it.

Lines end at ``\\n`` or ``\\r\\n`` (the ``\\r`` is dropped, as Python's text
mode does) and a leading UTF-8 byte-order mark is ignored.

JSON lines may be gzip- or zstd-compressed (recognised by their magic bytes, not
their name). They are decompressed as a stream, never whole: line numbers and byte
offsets then refer to the decompressed text. Arrow files (a Hugging Face
``save_to_disk`` dataset's ``data-*.arrow``, or any Arrow IPC stream or file) are
read with pyarrow alone, memory-mapped, a record batch at a time.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from embwalk.corpus.config import CorpusConfig
from embwalk.errors import CorpusError, first_line

SNIFF_BYTES = 8192  # NUL bytes here mean binary (or UTF-16) rather than UTF-8 text
_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHUNK = 1 << 16  # compressed bytes decompressed at a time
_SURROGATES = re.compile("[\ud800-\udfff]")  # JSON "\ud800" escapes decode to these

Reader = Callable[[Path, CorpusConfig], Iterator[tuple[str, str]]]


def read_txt(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """Whole file, one line, or one blank-line separated paragraph per document."""
    _check_text_file(path)
    if cfg.txt_unit == "file":
        data = _read_bytes(path)
        skip = len(_BOM) if data.startswith(_BOM) else 0
        yield "", _decode(data[skip:], path, skip, cfg.invalid_utf8).replace("\r\n", "\n")
        return
    paragraph: list[str] = []
    n_paragraphs = 0
    for lineno, offset, raw in _lines(path):
        line = _decode(raw, path, offset, cfg.invalid_utf8, lineno)
        if cfg.txt_unit == "line":
            yield f"line{lineno}", line
        elif line.strip():
            paragraph.append(line)
        elif paragraph:
            n_paragraphs += 1
            yield f"para{n_paragraphs}", "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield f"para{n_paragraphs + 1}", "\n".join(paragraph)


def read_jsonl(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """One JSON object per line; the text is its ``cfg.text_field``. Blank lines are skipped.

    The file may be gzip- or zstd-compressed (see the module docstring)."""
    return _single(_jsonl_records(path, cfg, (cfg.text_field,)))


def _jsonl_records(path: Path, cfg: CorpusConfig, fields: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    compression = _compression(path)
    _check_text_file(path, compression)
    for lineno, offset, raw in _lines(path, compression):
        if not raw.strip():
            continue
        line = _decode(raw, path, offset, cfg.invalid_utf8, lineno, compression)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"invalid JSON on line {lineno} (column {e.colno}: {e.msg}) of corpus file: {path}"
            ) from None
        if not isinstance(record, dict):
            raise CorpusError(f"line {lineno} is not a JSON object in corpus file: {path}")
        values = []
        for field in fields:
            if field not in record:
                raise CorpusError(f"line {lineno} has no {field!r} field in corpus file: {path}")
            text = record[field]
            if not isinstance(text, str):
                kind = type(text).__name__
                raise CorpusError(
                    f"field {field!r} on line {lineno} is {kind}, not a string, in corpus file: {path}"
                )
            values.append(_fix_surrogates(text, path, lineno, cfg.invalid_utf8))
        yield f"line{lineno}", tuple(values)


def read_parquet(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """One row per document; the text is column ``cfg.text_field`` (string or binary)."""
    return _single(_parquet_records(path, cfg, (cfg.text_field,)))


def _parquet_records(path: Path, cfg: CorpusConfig, fields: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    import pyarrow as pa  # late: only parquet corpora pay for the import
    import pyarrow.parquet as pq

    if _size(path) == 0:
        raise CorpusError(f"corpus file is empty: {path}")
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"not a readable parquet file ({first_line(e)}): {path}") from None
    binary = []
    for field in fields:
        if field not in schema.names:
            columns = ", ".join(schema.names)
            raise CorpusError(f"no column {field!r} (columns: {columns}) in parquet file: {path}")
        kind = schema.field(field).type
        is_binary = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_binary):
            raise CorpusError(f"column {field!r} has type {kind}, not string, in parquet file: {path}")
        binary.append(is_binary)
    row = 0
    try:
        for batch in pf.iter_batches(columns=list(fields), batch_size=4096):
            columns = [batch.column(i).to_pylist() for i in range(len(fields))]
            for values in zip(*columns, strict=True):
                yield f"row{row}", tuple(_cell(v, field, is_binary, row, path, cfg, "parquet")
                                         for v, field, is_binary in zip(values, fields, binary, strict=True))
                row += 1
    except (pa.ArrowException, OSError) as e:
        reason = first_line(e)
        raise CorpusError(f"cannot read parquet file at row {row} ({reason}): {path}") from None


def _cell(value, field: str, is_binary: bool, row: int, path: Path, cfg: CorpusConfig, kind: str) -> str:
    """One parquet or Arrow cell as text: null is an error naming the row, binary is decoded."""
    if value is None:
        raise CorpusError(f"column {field!r} is null at row {row} of {kind} file: {path}")
    return _decode_value(value, path, f"column {field!r} row {row}", cfg, kind) if is_binary else value


def read_arrow(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """One row per document; the text is column ``cfg.text_field`` (string or binary).

    An Arrow IPC stream (what ``datasets`` writes) or, failing that, an IPC file.
    Only pyarrow is used: no ``datasets`` import, nothing unpickled.
    """
    return _single(_arrow_records(path, cfg, (cfg.text_field,)))


def _arrow_records(path: Path, cfg: CorpusConfig, fields: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...]]]:
    import pyarrow as pa  # late: only Arrow corpora pay for the import

    if _size(path) == 0:
        raise CorpusError(f"corpus file is empty: {path}")
    row = 0
    try:
        with pa.memory_map(str(path), "r") as source:
            batches, schema = _open_ipc(pa, source, path)
            indices, binary = [], []
            for field in fields:
                if field not in schema.names:
                    columns = ", ".join(schema.names)
                    raise CorpusError(f"no column {field!r} (columns: {columns}) in arrow file: {path}")
                if schema.names.count(field) > 1:
                    raise CorpusError(f"more than one column {field!r} in arrow file: {path}")
                kind = schema.field(field).type
                value_kind = kind.value_type if pa.types.is_dictionary(kind) else kind
                is_binary = any(test(value_kind) for test in _arrow_tests(pa, "binary"))
                if not (is_binary or any(test(value_kind) for test in _arrow_tests(pa, "string"))):
                    raise CorpusError(f"column {field!r} has type {kind}, not string, in arrow file: {path}")
                indices.append(schema.get_field_index(field))
                binary.append(is_binary)
            for batch in batches:
                for start in range(0, batch.num_rows, 4096):  # an IPC file may hold one huge batch
                    columns = [batch.column(i).slice(start, 4096).to_pylist() for i in indices]
                    for values in zip(*columns, strict=True):
                        yield f"row{row}", tuple(_cell(v, field, is_binary, row, path, cfg, "arrow")
                                                 for v, field, is_binary in zip(values, fields, binary, strict=True))
                        row += 1
    except (pa.ArrowException, OSError) as e:
        reason = first_line(e)
        raise CorpusError(f"cannot read arrow file at row {row} ({reason}): {path}") from None


def _single(records: Iterator[tuple[str, tuple[str, ...]]]) -> Iterator[tuple[str, str]]:
    return ((where, values[0]) for where, values in records)


READERS: dict[str, Reader] = {
    "txt": read_txt, "jsonl": read_jsonl, "parquet": read_parquet, "arrow": read_arrow,
}
# Readers of several fields per record, ``(where, (value of each field))``: the formats that have
# records (input-target pairs, pipeline/corpus/pairs.py).
RECORD_READERS = {"jsonl": _jsonl_records, "parquet": _parquet_records, "arrow": _arrow_records}


def _open_ipc(pa, source, path: Path):
    """(record batches, schema) of an Arrow IPC stream, else of an Arrow IPC file."""
    try:
        reader = pa.ipc.open_stream(source)
        return reader, reader.schema
    except (pa.ArrowException, OSError):
        pass
    source.seek(0)
    try:
        reader = pa.ipc.open_file(source)
    except (pa.ArrowException, OSError) as e:
        reason = first_line(e)
        raise CorpusError(f"not a readable Arrow IPC stream or file ({reason}): {path}") from None
    return (reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema


def _arrow_tests(pa, kind: str) -> list[Callable]:
    names = {"string": ("is_string", "is_large_string", "is_string_view"),
             "binary": ("is_binary", "is_large_binary", "is_binary_view")}[kind]
    return [getattr(pa.types, name) for name in names if hasattr(pa.types, name)]


def _compression(path: Path) -> str | None:
    """``gzip``, ``zstd`` or None (plain), from the file's first bytes."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise CorpusError(f"cannot read corpus file ({e.strerror}): {path}") from None
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    if magic.startswith(_ZSTD_MAGIC):
        return "zstd"
    return None


@contextlib.contextmanager
def _open_bytes(path: Path, compression: str | None, where: Callable[[], str]) -> Iterator[BinaryIO]:
    """The file's (decompressed) bytes as a buffered stream. Read and decompression
    errors become one-line CorpusErrors; ``where()`` says how far reading got (`` after line 7``)."""
    try:
        with path.open("rb") as f:
            if compression is None:
                yield f
            elif compression == "gzip":
                with gzip.GzipFile(fileobj=f, mode="rb") as g:
                    yield g
            else:
                yield io.BufferedReader(_ZstdReader(f, _zstandard(path)), _CHUNK)
    except CorpusError:
        raise
    except Exception as e:
        if compression is not None and _is_decompression_error(e):
            reason = first_line(e)
            raise CorpusError(
                f"cannot decompress {compression} corpus file{where()} ({reason}; truncated or corrupt?): {path}"
            ) from None
        if isinstance(e, OSError):
            raise CorpusError(f"cannot read corpus file ({e.strerror or first_line(e)}): {path}") from None
        raise


def _is_decompression_error(e: Exception) -> bool:
    if isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile)):
        return True
    zstd = _zstandard_or_none()
    return zstd is not None and isinstance(e, zstd.ZstdError)


class _ZstdReader(io.RawIOBase):
    """A zstd stream decompressed chunk by chunk (frames one after another).

    Unlike ``zstandard``'s ``stream_reader``, a stream that ends inside a frame is an
    error (EOFError), not a silently shorter text."""

    def __init__(self, f: BinaryIO, zstandard) -> None:
        self._f, self._zstd = f, zstandard
        self._decompressor = zstandard.ZstdDecompressor()
        self._frame = None  # the current frame's decompressobj
        self._out, self._pos = b"", 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._pos == len(self._out):
            chunk = self._f.read(_CHUNK)
            if not chunk:
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("compressed file ended before the end of its last zstd frame")
                return 0
            self._out, self._pos = self._decompress(chunk), 0
        n = min(len(buffer), len(self._out) - self._pos)
        buffer[:n] = self._out[self._pos:self._pos + n]
        self._pos += n
        return n

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None or self._frame.eof:
                self._frame = self._decompressor.decompressobj()
            out.append(self._frame.decompress(data))
            data = self._frame.unused_data if self._frame.eof else b""
        return b"".join(out)


def _zstandard_or_none():
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def _zstandard(path: Path):
    zstandard = _zstandard_or_none()
    if zstandard is None:
        raise CorpusError(
            f"corpus file is zstd-compressed; reading it needs the zstandard package "
            f"(pip install 'zstandard>=0.22'): {path}"
        )
    return zstandard


def _check_text_file(path: Path, compression: str | None = None) -> None:
    if _size(path) == 0:
        raise CorpusError(f"corpus file is empty: {path}")
    with _open_bytes(path, compression, lambda: "") as f:
        head = f.read(SNIFF_BYTES)
    if compression is not None and not head:
        raise CorpusError(f"corpus file is empty (once decompressed): {path}")
    nul = head.find(b"\0")
    if nul >= 0:
        after = " of the decompressed text" if compression else ""
        raise CorpusError(
            f"corpus file is binary, not UTF-8 text (NUL byte at offset {nul}{after}): {path}"
        )


def _lines(path: Path, compression: str | None = None) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number from 1, byte offset of the line's content, content bytes),
    from the decompressed text if ``compression`` is set."""
    offset, lineno = 0, 0
    with _open_bytes(path, compression, lambda: f" after line {lineno}") as f:
        for raw in f:
            lineno += 1
            start, end = 0, len(raw)
            if lineno == 1 and raw.startswith(_BOM):
                start = len(_BOM)
            if raw.endswith(b"\n"):
                end -= 2 if raw.endswith(b"\r\n") else 1
            yield lineno, offset + start, raw[start:end]
            offset += len(raw)


def _decode(data: bytes, path: Path, offset: int, invalid_utf8: str,
            lineno: int | None = None, compression: str | None = None) -> str:
    try:
        return data.decode("utf-8", errors="strict" if invalid_utf8 == "error" else "replace")
    except UnicodeDecodeError as e:
        at = offset + e.start
        if lineno is None:  # a whole file: count its lines up to the bad byte
            lineno = data.count(b"\n", 0, e.start) + 1
        after = " of the decompressed text" if compression else ""
        raise CorpusError(
            f"invalid UTF-8 on line {lineno} (byte offset {at}{after}) in corpus file: {path}"
        ) from None


def _decode_value(value: bytes, path: Path, where: str, cfg: CorpusConfig, kind: str = "parquet") -> str:
    try:
        return value.decode("utf-8", errors="strict" if cfg.invalid_utf8 == "error" else "replace")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"invalid UTF-8 at byte {e.start} of {where} in {kind} file: {path}"
        ) from None


def _fix_surrogates(text: str, path: Path, lineno: int, invalid_utf8: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8, so tokenizers reject them later
    # with an obscure error; treat them as the invalid UTF-8 they stand for.
    if not _SURROGATES.search(text):
        return text
    if invalid_utf8 == "replace":
        return _SURROGATES.sub("\ufffd", text)
    raise CorpusError(
        f"lone surrogate escape (invalid UTF-8) on line {lineno} of corpus file: {path}"
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file ({e.strerror}): {path}") from None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise CorpusError(f"cannot read corpus file ({e.strerror}): {path}") from None
