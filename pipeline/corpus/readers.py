"""Per-format readers: each turns one file into ``(where, text)`` pairs in file order.

``where`` is the part of a document's source after the file name (``line7``,
``para3``, ``row12``; empty for a whole-file document). Lines and paragraphs
count from 1, as an editor shows them; parquet rows count from 0, as pyarrow
and pandas index them. Whitespace-only texts are passed through and dropped by
``read_documents``, so numbers always refer to the file as the user sees it.

Lines end at ``\\n`` or ``\\r\\n`` (the ``\\r`` is dropped, as Python's text
mode does) and a leading UTF-8 byte-order mark is ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.corpus.config import CorpusConfig
from pipeline.errors import CorpusError, first_line

SNIFF_BYTES = 8192  # NUL bytes here mean binary (or UTF-16) rather than UTF-8 text
_BOM = b"\xef\xbb\xbf"
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
        line = _decode(raw, path, offset, cfg.invalid_utf8)
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
    """One JSON object per line; the text is its ``cfg.text_field``. Blank lines are skipped."""
    _check_text_file(path)
    field = cfg.text_field
    for lineno, offset, raw in _lines(path):
        if not raw.strip():
            continue
        line = _decode(raw, path, offset, cfg.invalid_utf8)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CorpusError(
                f"invalid JSON on line {lineno} (column {e.colno}: {e.msg}) of corpus file: {path}"
            ) from None
        if not isinstance(record, dict):
            raise CorpusError(f"line {lineno} is not a JSON object in corpus file: {path}")
        if field not in record:
            raise CorpusError(f"line {lineno} has no {field!r} field in corpus file: {path}")
        text = record[field]
        if not isinstance(text, str):
            kind = type(text).__name__
            raise CorpusError(
                f"field {field!r} on line {lineno} is {kind}, not a string, in corpus file: {path}"
            )
        yield f"line{lineno}", _fix_surrogates(text, path, lineno, cfg.invalid_utf8)


def read_parquet(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    """One row per document; the text is column ``cfg.text_field`` (string or binary)."""
    import pyarrow as pa  # late: only parquet corpora pay for the import
    import pyarrow.parquet as pq

    if _size(path) == 0:
        raise CorpusError(f"corpus file is empty: {path}")
    field = cfg.text_field
    try:
        pf = pq.ParquetFile(path)
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as e:
        raise CorpusError(f"not a readable parquet file ({first_line(e)}): {path}") from None
    if field not in schema.names:
        columns = ", ".join(schema.names)
        raise CorpusError(f"no column {field!r} (columns: {columns}) in parquet file: {path}")
    kind = schema.field(field).type
    is_binary = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or is_binary):
        raise CorpusError(f"column {field!r} has type {kind}, not string, in parquet file: {path}")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[field], batch_size=4096):
            for value in batch.column(0).to_pylist():
                if value is None:
                    raise CorpusError(
                        f"column {field!r} is null at row {row} of parquet file: {path}"
                    )
                if is_binary:
                    value = _decode_value(value, path, f"column {field!r} row {row}", cfg)
                yield f"row{row}", value
                row += 1
    except (pa.ArrowException, OSError) as e:
        reason = first_line(e)
        raise CorpusError(f"cannot read parquet file at row {row} ({reason}): {path}") from None


READERS: dict[str, Reader] = {"txt": read_txt, "jsonl": read_jsonl, "parquet": read_parquet}


def _check_text_file(path: Path) -> None:
    if _size(path) == 0:
        raise CorpusError(f"corpus file is empty: {path}")
    try:
        with path.open("rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as e:
        raise CorpusError(f"cannot read corpus file ({e.strerror}): {path}") from None
    nul = head.find(b"\0")
    if nul >= 0:
        raise CorpusError(
            f"corpus file is binary, not UTF-8 text (NUL byte at offset {nul}): {path}"
        )


def _lines(path: Path) -> Iterator[tuple[int, int, bytes]]:
    """Yield (line number from 1, byte offset of the line's content, content bytes)."""
    offset = 0
    try:
        with path.open("rb") as f:
            for lineno, raw in enumerate(f, 1):
                start, end = 0, len(raw)
                if lineno == 1 and raw.startswith(_BOM):
                    start = len(_BOM)
                if raw.endswith(b"\n"):
                    end -= 2 if raw.endswith(b"\r\n") else 1
                yield lineno, offset + start, raw[start:end]
                offset += len(raw)
    except OSError as e:
        raise CorpusError(f"cannot read corpus file ({e.strerror}): {path}") from None


def _decode(data: bytes, path: Path, offset: int, invalid_utf8: str) -> str:
    try:
        return data.decode("utf-8", errors="strict" if invalid_utf8 == "error" else "replace")
    except UnicodeDecodeError as e:
        at = offset + e.start
        raise CorpusError(f"invalid UTF-8 at byte offset {at} in corpus file: {path}") from None


def _decode_value(value: bytes, path: Path, where: str, cfg: CorpusConfig) -> str:
    try:
        return value.decode("utf-8", errors="strict" if cfg.invalid_utf8 == "error" else "replace")
    except UnicodeDecodeError as e:
        raise CorpusError(
            f"invalid UTF-8 at byte {e.start} of {where} in parquet file: {path}"
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
